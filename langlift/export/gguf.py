"""GGUF export of a (merged) Llama model for llama.cpp and Ollama, written with the ``gguf`` package.

It does what llama.cpp's ``convert_hf_to_gguf.py`` does for ``LlamaForCausalLM``: llama.cpp tensor names
(``gguf.get_tensor_name_map``), q/k rows permuted to llama.cpp's rotary layout, norms kept in f32, the other
matrices in f16 or q8_0 (``gguf.quants``; a matrix whose rows are not a multiple of the q8_0 block stays f16),
no ``output.weight`` when the embeddings are tied. langlift's tokenizer (BPE with byte fallback and ``▁`` word
boundaries, Llama-style) is stored as a ``llama`` vocabulary: tokens, scores (earlier merges score higher, which
is the order llama.cpp's bigram merging applies them), token types (control, byte, normal), the merges,
BOS/EOS/PAD ids, no BOS/EOS added and no prefix space, and the chat template without generation markers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from langlift.errors import LangliftError
from langlift.io import atomic_path, write_text

log = logging.getLogger(__name__)

QUANTS = ("f32", "f16", "q8_0")


def _types(quant: str) -> tuple[Any, Any]:
    """(GGML tensor type for matrices, llama.cpp file type) of ``quant``."""
    import gguf

    table = {
        "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
        "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    }
    if quant not in table:
        raise LangliftError(f"--quant {quant}: not one of {', '.join(QUANTS)}")
    return table[quant]


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """q/k projection rows from transformers' rotary layout (halves) to llama.cpp's (interleaved pairs)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _check_config(config: Any) -> None:
    """Only what this converter writes faithfully: a Llama with default RoPE."""
    if config.model_type != "llama":
        raise LangliftError(f"GGUF export supports Llama models; this one is '{config.model_type}' "
                            "(use llama.cpp's convert_hf_to_gguf.py on the merged hub export)")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise LangliftError(f"GGUF export: rope_type '{rope.get('rope_type')}' is not supported (default RoPE only)")


def _hparams(writer: Any, config: Any) -> None:
    """The llama.* architecture keys llama.cpp reads."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def vocabulary(tokenizer: Any) -> dict[str, Any]:
    """Tokens, scores, types and merges of a byte-fallback BPE tokenizer, in id order."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise LangliftError("GGUF export: the tokenizer must be a BPE with byte fallback (langlift's own, Llama-style); "
                            f"this one is {model.get('type')} (byte_fallback={model.get('byte_fallback')})")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    size = max(by_id) + 1
    missing = [i for i in range(size) if i not in by_id]
    if missing:
        raise LangliftError(f"GGUF export: the tokenizer's ids have gaps (first missing id {missing[0]})")
    special = set(tokenizer.all_special_ids)
    tokens, scores, types = [], [], []
    for i in range(size):
        tok = by_id[i]
        tokens.append(tok)
        scores.append(-float(i))  # BPE ids follow merge order: an earlier merge is applied first
        if i in special:
            types.append(gguf.TokenType.CONTROL)
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "scores": scores, "types": types, "merges": merges}


def _tokenizer_meta(writer: Any, tokenizer: Any, chat_template: str) -> None:
    """The ``tokenizer.ggml.*`` keys and the chat template."""
    vocab = vocabulary(tokenizer)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab["tokens"])
    writer.add_token_scores(vocab["scores"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                          (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(token_id)
    # langlift's tokenizer adds no BOS/EOS and invents no leading space; the chat template writes what it needs
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(chat_template)


def _tensor_data(name: str, data: np.ndarray, matrix_type: Any) -> tuple[np.ndarray, Any]:
    """(array to write, its GGML type): vectors in f32, matrices in ``matrix_type`` where its blocks fit."""
    import gguf

    if data.ndim < 2 or matrix_type == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if matrix_type == gguf.GGMLQuantizationType.Q8_0:
        block = gguf.GGML_QUANT_SIZES[matrix_type][0]
        if data.shape[-1] % block == 0:
            return gguf.quants.quantize(data.astype(np.float32), matrix_type), matrix_type
        log.info("%s: rows of %d are not a multiple of %d, kept in f16", name, data.shape[-1], block)
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def _tensors(writer: Any, model: Any, quant: str) -> int:
    """Add every weight under its llama.cpp name; returns how many."""
    import gguf

    config = model.config
    matrix_type, _ = _types(quant)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    count = 0
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd.weight when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise LangliftError(f"GGUF export: no llama.cpp name for tensor '{hf_name}'")
        data = tensor.detach().float().cpu().numpy()
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute(data, config.num_attention_heads)
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute(data, config.num_key_value_heads)
        out, qtype = _tensor_data(new_name, data, matrix_type)
        writer.add_tensor(new_name, out, raw_dtype=qtype)
        count += 1
    return count


def write(model: Any, tokenizer: Any, out_file: str | Path, quant: str = "f16", name: str = "langlift") -> Path:
    """Write ``model`` (a LlamaForCausalLM) and ``tokenizer`` as one GGUF file, atomically."""
    import gguf

    _check_config(model.config)
    _, file_type = _types(quant)
    out_file = Path(out_file)
    with atomic_path(out_file) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_name(name)
        writer.add_file_type(file_type)
        _hparams(writer, model.config)
        _tokenizer_meta(writer, tokenizer, tokenizer.chat_template)
        n = _tensors(writer, model, quant)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    log.info("wrote %s (%s, %d tensors, %.1f MB)", out_file, quant, n, out_file.stat().st_size / 1e6)
    return out_file


def ollama_template(tokenizer: Any) -> str | None:
    """The chat template as an Ollama ``TEMPLATE`` (``{{ .Prompt }}`` / ``{{ .Response }}``), found by rendering
    the Jinja template around sentinels; None when a turn does not render as prompt-then-response."""
    user, answer = "\x00USER\x00", "\x00ANSWER\x00"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                           tokenize=False)
    full = tokenizer.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                                         tokenize=False)
    if prompt.count(user) != 1 or not full.startswith(prompt) or full.count(answer) != 1:
        return None
    after = full[len(prompt):].split(answer, 1)
    if after[0]:
        return None
    return prompt.replace(user, "{{ .Prompt }}") + "{{ .Response }}" + after[1]


def modelfile(gguf_file: Path, tokenizer: Any) -> str | None:
    """An Ollama Modelfile for ``gguf_file``: its prompt template (in triple quotes, verbatim) and EOS as stop."""
    template = ollama_template(tokenizer)
    if template is None or '"""' in template:
        log.warning("the chat template does not map onto an Ollama TEMPLATE; no Modelfile written")
        return None
    return (f'FROM ./{gguf_file.name}\nTEMPLATE """{template}"""\n'
            f"PARAMETER stop {json.dumps(tokenizer.eos_token, ensure_ascii=False)}\n")


def export(model_dir: str | Path, out_dir: str | Path, quants: tuple[str, ...] = ("f16",)) -> list[Path]:
    """Merge the fine-tuned model in ``model_dir`` and write ``<out_dir>/<name>-<quant>.gguf`` for each quant,
    each with an Ollama ``<name>-<quant>.Modelfile`` beside it."""
    import torch

    from langlift.export.model import load_merged, load_tokenizer

    for quant in quants:
        _types(quant)
    tokenizer = load_tokenizer(model_dir)
    model = load_merged(model_dir, dtype=torch.float32)
    name = Path(model_dir).resolve().name
    files = [write(model, tokenizer, Path(out_dir) / f"{name}-{quant}.gguf", quant, name) for quant in quants]
    for path in files:
        text = modelfile(path, tokenizer)
        if text is not None:
            write_text(path.with_suffix(".Modelfile"), text)
    return files
