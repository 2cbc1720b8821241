"""Llama models for pretraining: configs from presets and params, continued-pretraining loads,
embedding initialisation for an extended vocabulary, and FLOP counts for MFU."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from langlift.errors import LangliftError
from langlift.tokenizer import old_pieces

log = logging.getLogger(__name__)

# Architecture keys of params.yaml's pretrain.model and their LlamaConfig names.
ARCH_KEYS = {
    "layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads", "intermediate": "intermediate_size", "context": "max_position_embeddings",
    "tie_embeddings": "tie_word_embeddings", "rope_theta": "rope_theta",
}

PRESETS: dict[str, dict[str, Any]] = {
    # the default: about two minutes on two CPU cores; deeper-narrower won on the shipped sample at equal CPU time
    # (benchmarks/default_model.py, docs/performance.md#the-default-model)
    "tiny": {"layers": 6, "hidden": 96, "heads": 4, "kv_heads": 2, "intermediate": 288, "context": 256,
             "tie_embeddings": True, "rope_theta": 10000.0, "vocab_size": 4096},
    # AzLlama (Azerbaijani Llama from scratch): ~152M parameters with a 32k vocabulary
    "az150m": {"layers": 12, "hidden": 768, "heads": 12, "kv_heads": 4, "intermediate": 3072, "context": 2048,
               "tie_embeddings": False, "rope_theta": 10000.0, "vocab_size": 32000},
}


def resolve(preset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The architecture of ``preset`` with every non-null key of ``overrides`` laid over it."""
    if preset not in PRESETS:
        raise LangliftError(f"params.yaml: pretrain.preset: unknown preset {preset!r}; one of {sorted(PRESETS)}")
    arch = dict(PRESETS[preset])
    arch.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = set(arch) - set(ARCH_KEYS) - {"vocab_size"}
    if unknown:
        raise LangliftError(f"params.yaml: pretrain.model: unknown keys {sorted(unknown)}")
    if arch["hidden"] % arch["heads"] or arch["heads"] % arch["kv_heads"]:
        raise LangliftError(f"params.yaml: pretrain.model: hidden {arch['hidden']} must divide by heads "
                            f"{arch['heads']}, and heads by kv_heads {arch['kv_heads']}")
    return arch


def build_config(arch: dict[str, Any], vocab_size: int, bos_id: int | None, eos_id: int, pad_id: int | None,
                 attn: str = "sdpa") -> LlamaConfig:
    """A LlamaConfig for ``arch`` (see :func:`resolve`) with the tokenizer's size and special ids."""
    kwargs = {ARCH_KEYS[k]: v for k, v in arch.items() if k in ARCH_KEYS and k != "rope_theta"}
    config = LlamaConfig(
        vocab_size=vocab_size, rope_parameters={"rope_type": "default", "rope_theta": float(arch["rope_theta"])},
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, use_cache=False, **kwargs,
    )
    config._attn_implementation = attn
    return config


def describe(arch: dict[str, Any]) -> str:
    """One line with the architecture and its parameter count (counted on the meta device, nothing allocated)."""
    config = build_config(arch, int(arch["vocab_size"]), 1, 2, 0)
    with torch.device("meta"):
        n = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    return (f"{n / 1e6:.1f}M parameters: {arch['layers']} layers, hidden {arch['hidden']}, {arch['heads']} heads "
            f"({arch['kv_heads']} KV), intermediate {arch['intermediate']}, vocab {arch['vocab_size']}, "
            f"context {arch['context']}, {'tied' if arch['tie_embeddings'] else 'untied'} embeddings")


def from_scratch(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """A randomly initialised Llama (fp32 master weights)."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load(init: str, attn: str = "sdpa") -> PreTrainedModel:
    """An existing causal LM (hub id or local path) for continued pretraining, in fp32."""
    try:
        model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32, attn_implementation=attn)
    except (OSError, ValueError) as e:
        raise LangliftError(f"params.yaml: pretrain.init: cannot load model {init!r}: {e}") from None
    model.config.use_cache = False
    return model


def architecture(config: Any) -> dict[str, Any]:
    """The config values a checkpoint must share with the run that resumes it."""
    keys = ["model_type", "vocab_size", *ARCH_KEYS.values()]
    d = config.to_dict()
    d["rope_theta"] = (d.get("rope_parameters") or {}).get("rope_theta", d.get("rope_theta"))
    return {k: d.get(k) for k in keys}


@torch.no_grad()
def init_new_embeddings(model: PreTrainedModel, old_tokenizer: Any, new_tokens: list[str], first_id: int) -> None:
    """Resize the model to ``first_id + len(new_tokens)`` rows and set each new row to the mean of
    the rows of the old tokenizer's pieces of that token, for the input and (if untied) output embeddings."""
    model.resize_token_embeddings(first_id + len(new_tokens), mean_resizing=False)
    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is None or out.weight.data_ptr() == inp.data_ptr()
    for i, token in enumerate(new_tokens):
        pieces = old_pieces(old_tokenizer, token)
        if not pieces:
            raise LangliftError(f"vocabulary extension: the old tokenizer cannot spell new token {token!r}")
        inp[first_id + i] = inp[pieces].mean(0)
        if not tied:
            out.weight[first_id + i] = out.weight[pieces].mean(0)


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matrix products: all but the input embedding table (unless tied)."""
    n = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != emb.data_ptr():
        n -= emb.numel()
    return n


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights plus 12·layers·hidden·seq for attention (PaLM, appendix B)."""
    c = model.config
    return 6 * matmul_params(model) + 12 * c.num_hidden_layers * c.hidden_size * seq_len
