"""Shapes, peaks, FLOP formulas and anchors of the GPU benchmark (`benchmarks/gpu.py`).

Model shapes are the published configs of the real models (hidden size, layers, heads, KV heads,
intermediate size, vocabulary); the benchmark builds them with random weights, so nothing is downloaded.
`--dry` shrinks every shape to a few layers of width 64 and keeps the family (Llama, Qwen2, Mistral, M2M-100).
"""

from __future__ import annotations

import re
from typing import Any

import torch

# decoder-only: model_type, hidden, layers, heads, kv_heads, intermediate, vocab, tied embeddings, rope theta
CAUSAL: dict[str, dict[str, Any]] = {
    "az150m": {"model_type": "llama", "hidden": 768, "layers": 12, "heads": 12, "kv_heads": 4, "intermediate": 3072,
               "vocab": 32000, "tied": False, "rope_theta": 1e4},  # langlift.model.PRESETS["az150m"] (AzLlama)
    "llama-3.2-1b": {"model_type": "llama", "hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8,
                     "intermediate": 8192, "vocab": 128256, "tied": True, "rope_theta": 5e5},
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2,
                     "intermediate": 4864, "vocab": 151936, "tied": True, "rope_theta": 1e6},
    "llama-2-7b": {"model_type": "llama", "hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 32,
                   "intermediate": 11008, "vocab": 32000, "tied": False, "rope_theta": 1e4},
    "mistral-7b": {"model_type": "mistral", "hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 8,
                   "intermediate": 14336, "vocab": 32000, "tied": False, "rope_theta": 1e6},
}
# NLLB-200-distilled-600M (an M2M-100 architecture)
NLLB_600M = {"d_model": 1024, "layers": 12, "heads": 16, "ffn": 4096, "vocab": 256206}

# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("B200", 2250.0), ("B100", 1750.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
    ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("RTX 6000 Ada", 364.0), ("RTX 4090", 165.0), ("A6000", 155.0), ("RTX 3090", 71.0), ("A10G", 70.0),
    ("A10", 125.0), ("L4", 121.0), ("MI300X", 1307.0),
]
A100_BF16_TFLOPS = 312.0
# LLaMA-Factory's published LoRA throughput for Llama-2-7B on one A100 (tokens/s per GPU)
LLAMA_FACTORY_LORA_7B = {"without unsloth": 2392.0, "with unsloth": 4007.0}
TARGET_PRETRAIN_MFU = 0.45
TARGET_VS_PLAIN = 0.90
TARGET_QLORA_PEAK_GIB = 10.0
DEFAULT_TOLERANCE = 0.05  # the default may be this much slower than the fastest variant that fits


def dry_causal(shape: dict[str, Any], vocab: int) -> dict[str, Any]:
    """A two-layer, width-64 model of the same family, GQA kept where the real one has it."""
    return {**shape, "hidden": 64, "layers": 2, "heads": 4, "kv_heads": 4 if shape["kv_heads"] == shape["heads"] else 2,
            "intermediate": 128, "vocab": vocab}


def dry_nllb(vocab: int) -> dict[str, Any]:
    return {"d_model": 64, "layers": 2, "heads": 4, "ffn": 128, "vocab": vocab}


def causal_config(shape: dict[str, Any], context: int, bos: int | None, eos: int, pad: int | None, attn: str = "sdpa"):
    """A transformers config of ``shape`` (Llama, Qwen2 or Mistral)."""
    from transformers import AutoConfig

    extra = {"sliding_window": None} if shape["model_type"] == "mistral" else {}
    config = AutoConfig.for_model(
        shape["model_type"], hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
        intermediate_size=shape["intermediate"], vocab_size=shape["vocab"], tie_word_embeddings=shape["tied"],
        rope_parameters={"rope_type": "default", "rope_theta": float(shape["rope_theta"])},
        max_position_embeddings=context, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, use_cache=False,
        **extra)
    config._attn_implementation = attn
    return config


def matmul_params(shape: dict[str, Any]) -> int:
    """Parameters in matrix products: attention, MLP and the LM head (the input embedding is a lookup)."""
    h, kv = shape["hidden"], shape["hidden"] // shape["heads"] * shape["kv_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * shape["intermediate"]
    return shape["layers"] * per_layer + shape["vocab"] * h


def train_flops_per_token(shape: dict[str, Any], seq: int, trainable: int | None = None) -> float:
    """Model FLOPs per trained token: 6N + 12·L·H·S (PaLM, appendix B) for full training. With adapters
    (``trainable`` parameters) the frozen N costs 4N (no weight gradients) and the adapters 6 each."""
    attention = 12 * shape["layers"] * shape["hidden"] * seq
    n = matmul_params(shape)
    return (6 * n if trainable is None else 4 * n + 6 * trainable) + attention


def forward_flops_per_token(shape: dict[str, Any], seq: int) -> float:
    """Model FLOPs per scored token of a forward pass: 2N + 4·L·H·S."""
    return 2 * matmul_params(shape) + 4 * shape["layers"] * shape["hidden"] * seq


def nllb_params(shape: dict[str, Any]) -> tuple[int, int]:
    """(encoder, decoder) parameters in matrix products; the decoder counts the output projection."""
    d, f, n = shape["d_model"], shape["ffn"], shape["layers"]
    encoder = n * (4 * d * d + 2 * d * f)
    decoder = n * (8 * d * d + 2 * d * f) + shape["vocab"] * d
    return encoder, decoder


def table_peak(name: str) -> tuple[float, str] | None:
    """(dense bf16 peak FLOP/s, which entry) of a GPU named ``name`` from the table; None if not listed."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{name}: {tflops:g} TFLOP/s dense bf16 (table, matched {key!r})"
    return None


def device_peak(device: str) -> tuple[float, str]:
    """(dense bf16 peak FLOP/s, where it came from) of this device; on CPU the measured fp32 matmul peak."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        listed = table_peak(name)
        if listed:
            return listed
        from langlift import hardware

        measured = max(hardware.matmul_gflops(torch.bfloat16, "cuda", size=8192, seconds=0.5) for _ in range(2))
        return measured * 1e9, f"{name}: not in the table, measured bf16 matmul {measured / 1e3:.0f} TFLOP/s"
    from langlift import hardware

    measured = hardware.matmul_gflops(torch.float32, "cpu", size=256, seconds=0.1)
    return measured * 1e9, f"CPU: measured fp32 matmul {measured:.0f} GFLOP/s (dry run: MFU is not meaningful)"


def slug(name: str) -> str:
    """A file-name form of a device name: 'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"
