"""Hardware-aware training settings: the one place that decides precision, checkpointing, attention,
threads and workers for the pretrain and finetune stages.

Each choice is ``auto`` by default and overridable in ``params.yaml`` (section ``hardware``); the
chosen values and the reason for each are logged and written into the stage's metrics.

Precision is measured, not assumed: a CPU that advertises AVX-512-BF16 or AMX can still run bf16
matrix products hundreds of times slower than fp32 (seen on a 2-core CI machine), so on CPU a short
probe times both and bf16 is used only where it is clearly faster.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from langlift.errors import LangliftError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ATTENTION = ("auto", "sdpa", "flash_attention_2", "eager")
# bf16 on CPU must beat fp32 by this factor in the probe to be chosen.
CPU_BF16_MIN_SPEEDUP = 1.2


@dataclass
class TrainSettings:
    """What the training stages use; ``reasons`` says why each value was chosen."""

    device: str
    precision: str
    gradient_checkpointing: bool
    attn_implementation: str
    num_threads: int
    dataloader_workers: int
    padding_free: bool
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype matching ``precision``."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]

    def as_metrics(self) -> dict[str, Any]:
        """Flat values for a metrics file (reasons left out)."""
        d = asdict(self)
        d.pop("reasons")
        return d


def matmul_gflops(dtype: torch.dtype, device: str = "cpu", size: int = 256, seconds: float = 0.15) -> float:
    """Measured GFLOP/s of square ``size`` matrix products in ``dtype`` on ``device``."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # warm-up: kernel selection and allocation stay out of the timing
    n, start = 0, time.perf_counter()
    while True:
        a @ b
        n += 1
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * size**3 * n / elapsed / 1e9


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _choose_precision(device: str) -> tuple[str, str]:
    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name()} supports bf16"
        return "fp16", f"{torch.cuda.get_device_name()} has no fast bf16: fp16 with a loss scaler"
    if device == "mps":
        return "fp32", "MPS: fp32 (mixed precision is not reliably faster there)"
    flags = _cpu_flags()
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return "fp32", "CPU has neither AVX-512-BF16 nor AMX: fp32"
    # Interleaved best-of-three, so that load from other processes hits both dtypes alike.
    fp32 = bf16 = 0.0
    for _ in range(3):
        fp32 = max(fp32, matmul_gflops(torch.float32, seconds=0.05))
        bf16 = max(bf16, matmul_gflops(torch.bfloat16, seconds=0.05))
    if bf16 >= CPU_BF16_MIN_SPEEDUP * fp32:
        return "bf16", f"CPU probe: bf16 {bf16:.0f} GFLOP/s vs fp32 {fp32:.0f} GFLOP/s"
    return "fp32", f"CPU probe: bf16 {bf16:.1f} GFLOP/s is not faster than fp32 {fp32:.0f} GFLOP/s"


def _flash_attention_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def training_memory_bytes(
    n_params: int, trainable_params: int, bytes_per_param: float, batch_tokens: int, hidden: int, layers: int
) -> int:
    """Rough peak memory of a training step without checkpointing.

    Weights at ``bytes_per_param``; fp32 gradients and two AdamW moments (plus an fp32 master copy
    under mixed precision) for the trainable ones; activations at about 34 bytes per token, hidden
    unit and layer (Korthikanti et al., 2022, 16-bit activations without recomputation).
    """
    weights = n_params * bytes_per_param
    optimizer = trainable_params * (4 + 8 + (4 if bytes_per_param < 4 else 0))
    activations = 34 * batch_tokens * hidden * layers
    return int(weights + optimizer + activations)


def available_memory_bytes(device: str) -> int:
    """Free memory on the training device."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def choose(overrides: dict[str, Any] | None = None, needed_memory_bytes: int | None = None) -> TrainSettings:
    """Pick training settings for this machine; any key in ``overrides`` other than ``auto`` wins.

    ``needed_memory_bytes`` (see :func:`training_memory_bytes`) decides gradient checkpointing:
    it is switched on only when the step would not fit in 90% of the free device memory.
    """
    o = {k: v for k, v in (overrides or {}).items() if v not in (None, "auto")}
    reasons: dict[str, str] = {}

    if "device" in o:
        device = str(o["device"])
        reasons["device"] = "set in params"
    elif torch.cuda.is_available():
        device, reasons["device"] = "cuda", "CUDA is available"
    elif torch.backends.mps.is_available():
        device, reasons["device"] = "mps", "MPS is available"
    else:
        device, reasons["device"] = "cpu", "no accelerator found"

    if "precision" in o:
        precision = str(o["precision"])
        if precision not in PRECISIONS:
            raise LangliftError(f"params.yaml: hardware.precision: {precision!r} is not one of {PRECISIONS}")
        if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            raise LangliftError("params.yaml: hardware.precision is bf16 but this GPU does not support bf16")
        if precision == "fp16" and device == "cpu":
            raise LangliftError("params.yaml: hardware.precision fp16 is not supported for training on CPU")
        reasons["precision"] = "set in params"
    else:
        precision, reasons["precision"] = _choose_precision(device)

    if "attn_implementation" in o:
        attn = str(o["attn_implementation"])
        if attn not in ATTENTION:
            raise LangliftError(f"params.yaml: hardware.attn_implementation: {attn!r} is not one of {ATTENTION}")
        reasons["attn_implementation"] = "set in params"
    elif _flash_attention_available() and precision in ("bf16", "fp16"):
        attn, reasons["attn_implementation"] = "flash_attention_2", "flash-attn is installed and a GPU is present"
    else:
        attn, reasons["attn_implementation"] = "sdpa", "PyTorch scaled_dot_product_attention"

    if "gradient_checkpointing" in o:
        checkpointing = bool(o["gradient_checkpointing"])
        reasons["gradient_checkpointing"] = "set in params"
    elif needed_memory_bytes is None:
        checkpointing, reasons["gradient_checkpointing"] = False, "no memory estimate given: off"
    else:
        free = available_memory_bytes(device)
        checkpointing = needed_memory_bytes > 0.9 * free
        reasons["gradient_checkpointing"] = (
            f"estimated step {needed_memory_bytes / 2**30:.2f} GiB vs {free / 2**30:.2f} GiB free: "
            + ("on, the step would not fit" if checkpointing else "off, it fits")
        )

    if "num_threads" in o:
        threads = int(o["num_threads"])
        reasons["num_threads"] = "set in params"
    else:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        reasons["num_threads"] = "one per available core"

    if "dataloader_workers" in o:
        workers = int(o["dataloader_workers"])
        reasons["dataloader_workers"] = "set in params"
    elif device == "cpu":
        workers, reasons["dataloader_workers"] = 0, "CPU training: workers would compete with the compute threads"
    else:
        workers = min(4, max(0, threads - 1))
        reasons["dataloader_workers"] = "accelerator: feed it from spare cores"

    if "padding_free" in o:
        padding_free = bool(o["padding_free"])
        reasons["padding_free"] = "set in params"
    else:
        padding_free = attn == "flash_attention_2"
        reasons["padding_free"] = (
            "flash attention keeps packed sequences apart by position ids"
            if padding_free
            else f"{attn} needs a block-diagonal mask for packed sequences: padding-free off"
        )

    settings = TrainSettings(device, precision, checkpointing, attn, threads, workers, padding_free, reasons)
    return settings


def apply(settings: TrainSettings) -> None:
    """Apply process-wide settings (thread count) and log every choice with its reason."""
    torch.set_num_threads(settings.num_threads)
    for key, value in settings.as_metrics().items():
        log.info("hardware: %s = %s (%s)", key, value, settings.reasons.get(key, ""))
