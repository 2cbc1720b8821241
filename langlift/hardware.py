"""Hardware-aware training settings: the one place that decides precision, checkpointing, attention,
threads and workers for the pretrain and finetune stages.

Each choice is ``auto`` by default and overridable in ``params.yaml`` (section ``hardware``); the
chosen values and the reason for each are logged and written into the stage's metrics.

Precision is measured, not assumed: a CPU that advertises AVX-512-BF16 or AMX can still run bf16
matrix products hundreds of times slower than fp32 (seen on a 2-core CI machine), so on CPU a short
probe times both and bf16 is used only where it is clearly faster.

Threads are chosen for a shared machine: one per core that is usable (affinity mask, cgroup quota)
and not busy with other work, and OpenMP threads wait passively instead of spinning. Spin-waiting
threads starve other processes on the same cores: two ``tiny`` trainings with 2 threads each on 2 cores
ran at 0.09 steps/s each under torch's default OpenMP policy, 0.66 with passive waiting (1.2 alone).

Several processes (``hardware.processes``, DDP): :func:`relaunch` turns the stage into its own ``accelerate
launch``; inside a launch the processes of a machine split its cores, and on CPU the precision is not probed
per rank (fp32 unless set). See docs/scaling.md.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from langlift import OPENMP_POLICY_SET, TORCH_LOADED_FIRST
from langlift.errors import LangliftError
from langlift.params import Hardware

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ATTENTION = ("auto", "sdpa", "flash_attention_2", "eager")
# bf16 on CPU must beat fp32 by this factor in the probe to be chosen.
CPU_BF16_MIN_SPEEDUP = 1.2
# what `hardware.processes` > 1 launches with when `hardware.accelerate_config` is not set, by device
LAUNCH_CONFIGS = {"cpu": "configs/accelerate/cpu2.yaml", "cuda": "configs/accelerate/ddp.yaml"}


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
    openmp_wait_policy: str
    cpu_busy: float | None  # cores' worth of other work when the threads were chosen (None: not measured)
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


def processes() -> int:
    """Training processes of this launch (``accelerate launch`` / ``torchrun`` set ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_processes() -> int:
    """Training processes of this launch on this machine (``LOCAL_WORLD_SIZE``, set by torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


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
    if processes() > 1:  # each rank would time its own probe, and ranks must not disagree
        return "fp32", f"{processes()} processes: fp32 (no per-rank bf16 probe; set hardware.precision for bf16)"
    # Interleaved best-of-three, so that load from other processes hits both dtypes alike.
    fp32 = bf16 = 0.0
    for _ in range(3):
        fp32 = max(fp32, matmul_gflops(torch.float32, seconds=0.05))
        bf16 = max(bf16, matmul_gflops(torch.bfloat16, seconds=0.05))
    if bf16 >= CPU_BF16_MIN_SPEEDUP * fp32:
        return "bf16", f"CPU probe: bf16 {bf16:.0f} GFLOP/s vs fp32 {fp32:.0f} GFLOP/s"
    return "fp32", f"CPU probe: bf16 {bf16:.1f} GFLOP/s is not faster than fp32 {fp32:.0f} GFLOP/s"


@dataclass(frozen=True)
class CpuState:
    """The CPUs this process may use and how much of them other work takes."""

    cores: int  # CPUs in the affinity mask
    quota: float | None  # cgroup CPU quota in cores (None: no quota)
    busy: float  # cores' worth of other processes' work on those CPUs


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup CPU quota in cores (v2 ``cpu.max``, else v1 ``cpu/cpu.cfs_quota_us``); None if unlimited."""
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
        else:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


def cpu_times(cpus: set[int], stat: Path = Path("/proc/stat")) -> dict[int, tuple[int, int]]:
    """(busy, total) clock ticks of each CPU in ``cpus`` from ``/proc/stat``; empty if unreadable."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            out[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return out


def busy_cores(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """Cores' worth of work done between two :func:`cpu_times` readings."""
    busy = 0.0
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        if t1 > t0:
            busy += (b1 - b0) / (t1 - t0)
    return busy


def cpu_state(window: float = 0.25) -> CpuState:
    """Measure the usable CPUs and the work of other processes on them over ``window`` seconds.

    This process sleeps meanwhile and its own CPU time is subtracted. Without ``/proc/stat``
    the 1-minute load average stands in (it lags: a process started seconds ago barely shows).
    """
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    before, own = cpu_times(cpus), time.process_time()
    time.sleep(window)
    after, own = cpu_times(cpus), time.process_time() - own
    if before and after:
        busy = busy_cores(before, after) - own / window
    else:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return CpuState(len(cpus), cgroup_quota(), round(max(0.0, busy), 2))


def choose_threads(cpu: CpuState, processes: int = 1) -> tuple[int, str]:
    """One thread per usable core that other work leaves free (at least one), and why.

    ``processes`` training processes on this machine (a DDP launch) share the usable cores evenly; their
    load on each other is not "other work", so the measured load is left out then.
    """
    usable = cpu.cores if cpu.quota is None else max(1, min(cpu.cores, math.floor(cpu.quota)))
    if processes > 1:
        threads = max(1, usable // processes)
        return threads, f"{threads} of {usable} cores, shared by {processes} training processes"
    free = min(usable, cpu.cores - cpu.busy)
    threads = max(1, math.floor(free + 0.5))
    quota = f" (cgroup quota {cpu.quota:g} of {cpu.cores} CPUs)" if usable < cpu.cores else ""
    return threads, f"{threads} of {usable} cores{quota}, load {cpu.busy:.1f}"


def openmp_wait_policy() -> tuple[str, str]:
    """The wait policy torch's OpenMP runtime runs with (``passive``, ``active`` or ``default``), and why."""
    if OPENMP_POLICY_SET:
        return "passive", "set by langlift before torch loaded OpenMP"
    value = os.environ.get("OMP_WAIT_POLICY") if not TORCH_LOADED_FIRST else _start_env("OMP_WAIT_POLICY")
    if value:
        return value.lower(), "OMP_WAIT_POLICY in the environment"
    return "default", ("idle threads spin ~3 ms: torch was loaded before langlift.hardware; "
                       "set OMP_WAIT_POLICY=PASSIVE in the environment on a shared machine")


def _start_env(name: str) -> str | None:
    """``name`` in the environment this process started with (what libraries loaded at start read)."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return os.environ.get(name)
    prefix = name.encode() + b"="
    return next((kv[len(prefix):].decode() for kv in raw.split(b"\0") if kv.startswith(prefix)), None)


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

    policy, reasons["openmp_wait_policy"] = openmp_wait_policy()
    if "num_threads" in o:
        threads, busy = int(o["num_threads"]), None
        reasons["num_threads"] = f"set in params, OpenMP {policy}"
    else:
        cpu = cpu_state()
        threads, why = choose_threads(cpu, local_processes())
        busy, reasons["num_threads"] = cpu.busy, f"{why}, OpenMP {policy}"
    reasons["cpu_busy"] = "cores' worth of other work when the threads were chosen"

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

    settings = TrainSettings(device, precision, checkpointing, attn, threads, workers, padding_free, policy, busy,
                             reasons)
    return settings


def apply(settings: TrainSettings) -> None:
    """Apply process-wide settings (thread count) and log every choice with its reason."""
    torch.set_num_threads(settings.num_threads)
    for key, value in settings.as_metrics().items():
        log.info("hardware: %s = %s (%s)", key, value, settings.reasons.get(key, ""))


def launch_command(hw: Hardware, script: str, args: Sequence[str]) -> list[str] | None:
    """The ``accelerate launch`` command running ``script args`` in ``hardware.processes`` processes (DDP),
    or None when this process trains itself (one process asked for, or already one of a launch).

    The config is ``hardware.accelerate_config``, else DDP for the device (``LAUNCH_CONFIGS``); the process
    count, one machine, a free port and ``--mixed_precision no`` are passed explicitly (precision is
    params' ``hardware.precision``, applied inside the stage), so a user's default accelerate config is
    never read.
    """
    if hw.processes == 1 or "WORLD_SIZE" in os.environ:
        return None
    device = hw.device if hw.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if device not in LAUNCH_CONFIGS:
        raise LangliftError(f"params.yaml: hardware.processes {hw.processes} needs device cpu or cuda, not {device}")
    config = hw.accelerate_config or LAUNCH_CONFIGS[device]
    if not Path(config).is_file():
        raise LangliftError(f"params.yaml: hardware.accelerate_config: {config} not found (relative paths are "
                            "from the repository root, where the stages run)")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
            "--num_processes", str(hw.processes), "--num_machines", "1", "--main_process_port", "0",
            "--mixed_precision", "no", script, *args]


def relaunch(hw: Hardware, script: str, args: Sequence[str]) -> None:
    """Replace this process by the launch of :func:`launch_command` when params ask for several processes.

    The process id stays the same, so ``dvc repro`` / ``dvc exp run`` wait for the launch and record
    its outputs as those of the stage. Returns (doing nothing) when this process should train itself.
    """
    cmd = launch_command(hw, script, args)
    if cmd is None:
        return
    log.info("hardware.processes = %d: %s", hw.processes, shlex.join(cmd))
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)
