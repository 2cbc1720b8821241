"""The GPU benchmark (issue 14): every heavy path of langlift on one GPU, against the field's published figures.

Each section builds its models with random weights in the exact shapes of the real ones (`gpu_shapes.py`;
nothing is downloaded) and runs them through langlift's own code:

  pretrain-az150m      `langlift.pretrain.train` (accelerate, bf16, packed blocks), the az150m preset (AzLlama)
  lora-qwen2.5-0.5b    `langlift.finetune.prepare` -> TRL SFTTrainer + peft, LoRA r=16, and the same step in a
                       plain PyTorch + peft loop over the same batches (the ratio)
  lora-llama-2-7b      the same on a Llama-2-7B shape, bf16 base, batch 4 x 1024 (LLaMA-Factory's anchor)
  qlora-mistral-7b     QLoRA r=64 (4-bit NF4 base) on a Mistral-7B shape, batch 4 x 1024, checkpointing on
  cpt-llama-3.2-1b     a continued-pretraining step of a Llama-3.2-1B shape through the pretrain loop
  translate-nllb-600m  the translate stage's seq2seq backend, batched, on an NLLB-200-600M shape
  llm-qwen2.5-0.5b     the translate stage's llm backend (transformers generation), batched
  lmeval-qwen2.5-0.5b  the evaluate stage's lm-eval harness: rolling log-likelihood (perplexity task)

Every figure comes with tokens/s (or sentences/s) per GPU, MFU and peak GPU memory
(``torch.cuda.max_memory_allocated`` over the timed part). MFU = model FLOPs per token x tokens/s over the
device's dense bf16 peak, from the table in `gpu_shapes.py` keyed by the device name (H100/H200 989, A100 312,
L40S 362, RTX 4090 165 TFLOP/s ...); the JSON says which entry matched. Model FLOPs per token:
  training           6N + 12·L·H·S          (N: parameters in matrix products, L layers, H hidden, S sequence)
  LoRA / QLoRA       4N + 6·N_adapter + 12·L·H·S   (the frozen base gets no weight gradients)
  log-likelihood     2N + 4·L·H·S
  generation         2N per prompt and generated token (attention left out); seq2seq 2·N_enc per source
                     token + 2·N_dec per generated token
Recomputation under gradient checkpointing is not counted (model FLOPs, not hardware FLOPs).

The choices `langlift.hardware` makes on a GPU are measured on and off where they apply: attention
implementation (sdpa / eager / flash-attention 2 when installed), gradient checkpointing, TRL's chunked LM
head (`finetune.fused_lm_head`), torch.compile (pretrain; not a params choice yet) and Liger kernels when
installed; a check says whether the default is the fastest variant that fits (within 5%).

On a GPU every section runs in its own process under a time guard (one slow or crashing path cannot eat the
budget or take the others down), all within ``--budget`` seconds (480 by default: the whole run stays under
8 minutes on an H100/H200). `--dry` runs every path on tiny shapes on CPU in this process (CI runs it).

    python benchmarks/gpu.py                      # a GPU: writes benchmarks/results/gpu-<device>.json
    python benchmarks/gpu.py --out $OUT/gpu.json  # anywhere else
    python benchmarks/gpu.py --dry                # CPU, tiny shapes: benchmarks/results/gpu-dry.json (ignored by git)
    python benchmarks/gpu.py --only lora-qwen2.5-0.5b,pretrain-az150m
"""

from __future__ import annotations

import langlift  # noqa: F401  (before torch: OpenMP's wait policy)

import contextlib
import gc
import importlib.util
import itertools
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_shapes as G  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LANG = {"code": "az", "flores": "azj_Latn", "name": "Azerbaijani", "script": "Latn"}
PROMPT = "Translate into {name}:\n\n{text}"


# ---------------------------------------------------------------- context and rows


@dataclass
class Ctx:
    """What every section shares: sizes, the device and its peak, the scratch folder and the tokenizer."""

    dry: bool
    device: str
    peak: float  # FLOP/s
    work: Path
    threads: int
    tok: Any  # a trained langlift tokenizer with a chat template, saved in work/tokenizer

    @property
    def precision(self) -> str:
        return "fp32" if self.dry else "auto"

    def size(self, gpu: Any, dry: Any) -> Any:
        return dry if self.dry else gpu

    def hw(self, **overrides: Any) -> dict[str, Any]:
        """hardware params: the device and threads fixed, everything else auto unless overridden."""
        return {"device": self.device, "precision": self.precision, "num_threads": self.threads, **overrides}

    def causal(self, name: str) -> dict[str, Any]:
        shape = G.CAUSAL[name]
        return G.dry_causal(shape, len(self.tok) + 64) if self.dry else shape


PART: list[Any] = []  # in a section's own process: [path, rows so far], rewritten at every row (see run_isolated)


def row(ctx: Ctx, section: str, variant: str, *, default: bool = False, tokens_per_s: float | None = None,
        flops_per_token: float | None = None, items_per_s: float | None = None, item: str = "",
        flops_per_s: float | None = None, peak_gib: float | None = None, seconds: float | None = None,
        status: str = "ok", **extra: Any) -> dict[str, Any]:
    """One line of the table; MFU from tokens/s x FLOPs per token (or FLOP/s given) over the device's peak."""
    if flops_per_s is None and tokens_per_s is not None and flops_per_token is not None:
        flops_per_s = tokens_per_s * flops_per_token
    out = {"section": section, "variant": variant, "default": default, "status": status,
           "tokens_per_s": _round(tokens_per_s), "items_per_s": _round(items_per_s, 2), "item": item,
           "flops_per_token": flops_per_token, "mfu": round(flops_per_s / ctx.peak, 4) if flops_per_s else None,
           "peak_gib": _round(peak_gib, 2), "seconds": _round(seconds, 1), **extra}
    if PART:  # a section killed by its guard keeps the rows it made
        PART[1].append(out)
        PART[0].write_text(json.dumps(PART[1], indent=1) + "\n", encoding="utf-8")
    return out


def _round(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(float(x), digits)


def failed(ctx: Ctx, section: str, variant: str, error: BaseException | str, default: bool = False) -> dict[str, Any]:
    """A row for a variant or section that raised: the error's first line (the traceback goes to stderr)."""
    if isinstance(error, str):
        return row(ctx, section, variant, default=default, status=error)
    traceback.print_exception(error)
    first = (str(error).splitlines() or [""])[0][:200]
    return row(ctx, section, variant, default=default, status=f"error: {type(error).__name__}: {first}")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    """Peak allocated GPU memory since :func:`reset_peak`; on CPU the process's peak RSS (never reset)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------- inputs


def sentences(lang: str) -> list[str]:
    path = REPO / "languages" / "az" / "data" / f"ntrex128.{lang}.txt"
    return [s for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def long_texts(tok: Any, n: int, tokens: int, lang: str = "az") -> list[str]:
    """``n`` documents of at least ``tokens`` tokens, consecutive sentences joined (wrapping around)."""
    pool, out, i = sentences(lang), [], 0
    for _ in range(n):
        parts, count = [], 0
        while count < tokens:
            s = pool[i % len(pool)]
            parts.append(s)
            count += len(tok(s, add_special_tokens=False)["input_ids"]) + 1
            i += 1
        out.append(" ".join(parts))
    return out


def write_records(ctx: Ctx, n: int, seq: int) -> Path:
    """Instruction records with a short input and an answer longer than ``seq`` tokens (cut to ``seq``, the
    response kept: every batch is full, so every step trains ``batch x seq`` tokens)."""
    path = ctx.work / f"train-{n}x{seq}.jsonl"
    if not path.exists():
        en = sentences("en")
        answers = long_texts(ctx.tok, n, seq)
        with open(path, "w", encoding="utf-8") as f:
            for i, answer in enumerate(answers):
                f.write(json.dumps({"id": str(i), "instruction": "Tərcümə et:", "input": " ".join(en[i].split()[:4]),
                                    "output": answer, "lang": "az", "source": "ntrex128"}, ensure_ascii=False) + "\n")
    return path


def causal_dir(ctx: Ctx, name: str, context: int) -> Path:
    """A saved model of shape ``name`` (random weights, bf16 on a GPU) with the tokenizer beside it; built once
    per run and shared by the sections (their processes share ``ctx.work``)."""
    from transformers import AutoModelForCausalLM

    path = ctx.work / f"model-{name}"
    if (path / "done").exists():
        return path
    tok = ctx.tok
    config = G.causal_config(ctx.causal(name), context, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if ctx.dry else torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "done").write_text("")
    del model
    reset_peak()
    return path


# ---------------------------------------------------------------- pretraining


def pretrain_step(ctx: Ctx, name: str, batch: int, seq: int, overrides: dict[str, Any], compile_: bool = False,
                  liger: bool = False) -> tuple[float, float, dict[str, Any]]:
    """(tokens/s, peak GiB, hardware choices) of `langlift.pretrain.train` on packed blocks of ``seq`` tokens."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import AutoModelForCausalLM

    from langlift import hardware
    from langlift.packing import tokenize
    from langlift.params import Pretrain
    from langlift.pretrain import Data, make_optimizer, train

    shape, tok, steps = ctx.causal(name), ctx.tok, ctx.size(20, 2)
    stream = torch.from_numpy(tokenize(tok, sentences("az")).astype("int64"))
    n_blocks = 4 * batch
    stream = stream.repeat(n_blocks * seq // len(stream) + 1)[: n_blocks * seq]
    blocks = stream.view(n_blocks, seq)
    n_params = G.matmul_params(shape) + shape["vocab"] * shape["hidden"] * (not shape["tied"])
    need = hardware.training_memory_bytes(n_params, n_params, 2 if not ctx.dry else 4, batch * seq, shape["hidden"],
                                          shape["layers"])
    settings = hardware.choose(ctx.hw(**overrides), need)
    hardware.apply(settings)
    if liger:
        import liger_kernel.transformers as liger

        getattr(liger, f"apply_liger_kernel_to_{shape['model_type']}")()
    config = G.causal_config(shape, seq, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
                             settings.attn_implementation)
    torch.manual_seed(0)
    with torch.device(settings.device):
        model = AutoModelForCausalLM.from_config(config)  # fp32 master weights, as the stage
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compile_:
        model = torch.compile(model)
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision={"bf16": "bf16", "fp16": "fp16"}.get(settings.precision, "no"),
                              cpu=settings.device == "cpu")
    cfg = Pretrain(steps=steps + 1, batch_size=batch, lr=1e-4, warmup_steps=1, eval_every=10**9, log_every=10**9,
                   checkpoint_every=10**9, eval_batches=1)
    optimizer = make_optimizer(model, cfg, settings.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    reset_peak()
    result = train(accelerator, model, optimizer, cfg, Data(blocks, blocks[:batch], tok.eos_token_id), seed=0,
                   padding_free=settings.padding_free)
    peak = peak_gib()
    choice = {"attn": settings.attn_implementation, "checkpointing": settings.gradient_checkpointing,
              "padding_free": settings.padding_free}
    del model, optimizer, accelerator
    reset_peak()
    return result.tokens_per_second, peak, choice


def pretrain_rows(ctx: Ctx, section: str, name: str, batch: int, seq: int, variants: bool) -> list[dict[str, Any]]:
    """The default choices, then (``variants``) each choice flipped: attention, checkpointing, compile, Liger."""
    fpt = G.train_flops_per_token(ctx.causal(name), seq)
    common = {"shape": name, "batch": batch, "seq": seq, "precision": "fp32" if ctx.dry else "bf16"}
    rows: list[dict[str, Any]] = []

    def measure(label: str, default: bool = False, **kwargs: Any) -> dict[str, Any] | None:
        start = time.perf_counter()
        try:
            tps, peak, choice = pretrain_step(ctx, name, batch, seq, **kwargs)
        except Exception as e:  # noqa: BLE001 (a variant that fails is a row, not the end of the run)
            rows.append(failed(ctx, section, label, e, default))
            return None
        rows.append(row(ctx, section, label, default=default, tokens_per_s=tps, flops_per_token=fpt,
                        peak_gib=peak, seconds=time.perf_counter() - start, **common, **choice))
        return choice

    choice = measure(f"default ({_describe_default(ctx)})", default=True, overrides={})
    if not variants or choice is None:
        return rows
    for attn in ("sdpa", "eager", "flash_attention_2"):
        if attn == choice["attn"]:
            continue
        if attn == "flash_attention_2" and not (installed("flash_attn") and ctx.device == "cuda"):
            rows.append(row(ctx, section, f"attn {attn}", status="skipped: flash-attn not installed (or no GPU)"))
            continue
        measure(f"attn {attn}", overrides={"attn_implementation": attn})
    flip = not choice["checkpointing"]
    measure(f"checkpointing {'on' if flip else 'off'}", overrides={"gradient_checkpointing": flip})
    if ctx.dry:
        rows.append(row(ctx, section, "torch.compile", status="skipped: dry run (compiling on CPU takes minutes)"))
    else:
        measure("torch.compile", overrides={}, compile_=True)
    if installed("liger_kernel"):
        measure("liger kernels", overrides={}, liger=True)  # last: Liger patches the model classes for good
    else:
        rows.append(row(ctx, section, "liger kernels", status="skipped: liger-kernel not installed"))
    return rows


def _describe_default(ctx: Ctx) -> str:
    return "hardware: auto, fp32" if ctx.dry else "hardware: auto"


def sec_pretrain_az150m(ctx: Ctx) -> list[dict[str, Any]]:
    return pretrain_rows(ctx, "pretrain-az150m", "az150m", ctx.size(8, 2), ctx.size(2048, 64), variants=True)


def sec_cpt_llama_1b(ctx: Ctx) -> list[dict[str, Any]]:
    rows = pretrain_rows(ctx, "cpt-llama-3.2-1b", "llama-3.2-1b", ctx.size(4, 2), ctx.size(2048, 64), variants=False)
    for r in rows:
        r["note"] = "random init in place of pretrain.init; the same loop as continued pretraining"
    return rows


# ---------------------------------------------------------------- fine-tuning


def finetune_params(ctx: Ctx, base: Path, method: str, r: int, alpha: int, batch: int, seq: int, steps: int,
                    hw: dict[str, Any], fused: Any = "auto"):
    from langlift import params as P

    return P.validate({
        "seed": 0, "lr": 2e-4, "epochs": 1, "base_model": str(base), "language": "az", "hardware": ctx.hw(**hw),
        "finetune": {
            "method": method, "lora": {"r": r, "alpha": alpha, "dropout": 0.0, "target_modules": "all-linear"},
            "batch_size": batch, "gradient_accumulation": 1, "max_seq_length": seq, "overlong": "truncate",
            "packing": False, "fused_lm_head": fused, "max_steps": steps, "logging_steps": 10**6,
            "eval_steps": 10**6, "checkpoint_steps": 10**6, "lr_scheduler": "constant", "warmup_ratio": 0.0,
            "resume": False, "template": "model",
        },
    }, REPO / "params.yaml")


def timed_train(prep: Any, warmup: int, tokens_per_step: float) -> float:
    """Tokens/s of SFTTrainer.train() over the optimizer steps after ``warmup``."""
    from transformers import TrainerCallback

    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sync()
            marks[state.global_step] = time.perf_counter()

    prep.trainer.add_callback(Clock())
    prep.trainer.train()
    last = max(marks)
    return (last - warmup) * tokens_per_step / (marks[last] - marks[warmup])


MODEL_KEYS = ("input_ids", "attention_mask", "labels", "position_ids")


def plain_loop(model: Any, batches: list[dict[str, Any]], warmup: int, dtype: torch.dtype | None,
               tokens_per_step: float) -> float:
    """Tokens/s of forward, backward, clipping and AdamW on the adapter over the same batches: the loop
    anyone would write with PyTorch + peft, and the baseline of the finetune path."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, fused=torch.cuda.is_available())
    device = next(model.parameters()).device
    model.train()
    start = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            sync()
            start = time.perf_counter()
        inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_KEYS}
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(**inputs, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    return (len(batches) - warmup) * tokens_per_step / (time.perf_counter() - start)


def finetune_measure(ctx: Ctx, section: str, label: str, name: str, method: str, r: int, alpha: int, batch: int,
                     seq: int, hw: dict[str, Any], fused: Any = "auto", default: bool = False,
                     plain: bool = False, note: str = "") -> list[dict[str, Any]]:
    """One run of the finetune stage's path (prepare -> SFTTrainer.train), and with ``plain`` the plain loop
    on the same model and batches right after it."""
    from langlift import finetune as F

    warmup, steps = ctx.size(3, 1), ctx.size(10, 2)
    start = time.perf_counter()
    try:
        base = causal_dir(ctx, name, seq)
        train = write_records(ctx, (warmup + steps + 1) * batch, seq)
        work = Path(tempfile.mkdtemp(dir=ctx.work))
        paths = F.Paths(work / "model", work / "metrics.json", work / "live", work / "ckpt")
        prep = F.prepare(finetune_params(ctx, base, method, r, alpha, batch, seq, warmup + steps, hw, fused),
                         paths=paths, train_path=train, val_path=work / "none.jsonl")
        per_example = prep.train_stats.tokens / prep.train_stats.kept  # every example is cut to seq tokens
        tokens_per_step = batch * per_example
        trainable = F.count_params(prep.trainer.model)[0]
        fpt = G.train_flops_per_token(ctx.causal(name), seq, trainable)
        reset_peak()
        tps = timed_train(prep, warmup, tokens_per_step)
        s = prep.settings
        common = {"shape": name, "method": method, "lora_r": r, "batch": batch, "seq": seq,
                  "precision": s.precision, "attn": s.attn_implementation, "checkpointing": s.gradient_checkpointing,
                  "fused_lm_head": prep.fused_lm_head, "trainable_params": trainable, "note": note}
        rows = [row(ctx, section, label, default=default, tokens_per_s=tps, flops_per_token=fpt, peak_gib=peak_gib(),
                    seconds=time.perf_counter() - start, **common)]
    except Exception as e:  # noqa: BLE001
        return [failed(ctx, section, label, e, default)]
    if plain:
        start = time.perf_counter()
        try:
            loader = prep.trainer.get_train_dataloader()
            batches = list(itertools.islice(loader, warmup + steps))
            reset_peak()
            dtype = s.dtype if s.precision != "fp32" else None
            p_tps = plain_loop(prep.trainer.model, batches, warmup, dtype, tokens_per_step)
            rows[0]["vs_plain"] = round(tps / p_tps, 3)
            rows.append(row(ctx, section, "plain PyTorch + peft loop", tokens_per_s=p_tps, flops_per_token=fpt,
                            peak_gib=peak_gib(), seconds=time.perf_counter() - start,
                            **{**common, "fused_lm_head": False, "note": "model's own loss, same model and batches"}))
        except Exception as e:  # noqa: BLE001
            rows.append(failed(ctx, section, "plain PyTorch + peft loop", e))
    del prep
    reset_peak()
    return rows


def sec_lora_qwen(ctx: Ctx) -> list[dict[str, Any]]:
    """LoRA r=16 on a Qwen2.5-0.5B shape: the default, its plain loop, and each hardware choice flipped."""
    section, name = "lora-qwen2.5-0.5b", "qwen2.5-0.5b"
    batch, seq = ctx.size(8, 2), ctx.size(1024, 128)
    run = lambda label, hw, **kw: finetune_measure(ctx, section, label, name, "lora", 16, 32, batch, seq, hw, **kw)  # noqa: E731
    rows = run("default (hardware: auto)", {}, default=True, plain=True)
    base = rows[0]
    if base["status"] != "ok":
        return rows
    for attn in ("sdpa", "eager", "flash_attention_2"):
        if attn == base["attn"]:
            continue
        if attn == "flash_attention_2" and not (installed("flash_attn") and ctx.device == "cuda"):
            rows.append(row(ctx, section, f"attn {attn}", status="skipped: flash-attn not installed (or no GPU)"))
        elif ctx.dry:
            rows.append(row(ctx, section, f"attn {attn}", status="skipped: dry run (pretrain-az150m runs it)"))
        else:
            rows += run(f"attn {attn}", {"attn_implementation": attn})
    flip = not base["checkpointing"]
    if ctx.dry:
        rows.append(row(ctx, section, f"checkpointing {'on' if flip else 'off'}",
                        status="skipped: dry run (qlora-mistral-7b runs this path with checkpointing on)"))
    else:
        rows += run(f"checkpointing {'on' if flip else 'off'}", {"gradient_checkpointing": flip})
    rows += run(f"fused LM head {'on' if not base['fused_lm_head'] else 'off'} (finetune.fused_lm_head)", {},
                fused=not base["fused_lm_head"])
    rows.append(row(ctx, section, "liger kernels", status="skipped: " + (
        "the finetune path has no Liger switch yet" if installed("liger_kernel") else "liger-kernel not installed")))
    return rows


def sec_lora_7b(ctx: Ctx) -> list[dict[str, Any]]:
    """LoRA r=16 on a Llama-2-7B shape with a bf16 base at batch 4 x 1024: LLaMA-Factory's setting."""
    return finetune_measure(ctx, "lora-llama-2-7b", "default (hardware: auto)", "llama-2-7b", "lora", 16, 32,
                            4 if not ctx.dry else 2, ctx.size(1024, 128), {}, default=True, plain=True)


def sec_qlora_7b(ctx: Ctx) -> list[dict[str, Any]]:
    """QLoRA r=64 on a Mistral-7B shape at batch 4 x 1024 with gradient checkpointing (the memory target)."""
    quantised = ctx.device == "cuda" and installed("bitsandbytes")
    note = "4-bit NF4 base (bitsandbytes)" if quantised else (
        "QLoRA path with quantisation off: bitsandbytes 4-bit needs CUDA" + ("" if ctx.device == "cuda" else
                                                                              " (dry run on CPU)"))
    return finetune_measure(ctx, "qlora-mistral-7b", "checkpointing on", "mistral-7b", "qlora" if quantised else "lora",
                            64, 16, 4 if not ctx.dry else 2, ctx.size(1024, 128), {"gradient_checkpointing": True},
                            default=True, note=note)


# ---------------------------------------------------------------- inference paths


def nllb_dir(ctx: Ctx) -> tuple[Path, dict[str, Any]]:
    """An NLLB-style model (M2M-100 architecture, NLLB tokens) with a tiny trained tokenizer, random weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    path = ctx.work / "model-nllb"
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator(sentences("en")[:1500] + sentences("az")[:1500], trainers.BpeTrainer(
        vocab_size=ctx.size(4000, 600), special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False))
    spec = json.loads(bpe.to_str())["model"]
    tok = NllbTokenizer(vocab=spec["vocab"], merges=[tuple(m) if not isinstance(m, str) else tuple(m.split(" "))
                                                     for m in spec["merges"]],
                        extra_special_tokens=["eng_Latn", "azj_Latn"], src_lang="eng_Latn")
    shape = G.dry_nllb(len(tok) + 64) if ctx.dry else G.NLLB_600M
    config = M2M100Config(vocab_size=shape["vocab"], d_model=shape["d_model"], encoder_layers=shape["layers"],
                          decoder_layers=shape["layers"], encoder_attention_heads=shape["heads"],
                          decoder_attention_heads=shape["heads"], encoder_ffn_dim=shape["ffn"],
                          decoder_ffn_dim=shape["ffn"], max_position_embeddings=1024, scale_embedding=True,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = M2M100ForConditionalGeneration(config).to(torch.float32 if ctx.dry else torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    return path, shape


def sec_translate(ctx: Ctx) -> list[dict[str, Any]]:
    """The seq2seq backend, batched and length-sorted, on an NLLB-200-600M shape: sentences/s."""
    from langlift.translate.seq2seq import Seq2SeqBackend

    section = "translate-nllb-600m"
    n, batch, new = ctx.size(512, 8), ctx.size(64, 4), ctx.size(64, 8)
    start = time.perf_counter()
    path, shape = nllb_dir(ctx)
    backend = Seq2SeqBackend(str(path), LANG, batch_size=batch, max_new_tokens=new, device=ctx.device)
    texts = sentences("en")[:n]
    backend.translate(texts[:batch])  # warm-up
    reset_peak()
    t0 = time.perf_counter()
    out = backend.translate(texts)
    sync()
    seconds = time.perf_counter() - t0
    src = sum(len(ids) for ids in backend.tok(texts)["input_ids"])
    enc, dec = G.nllb_params(shape)
    flops = 2 * enc * src + 2 * dec * n * new  # random weights: every sentence runs to max_new_tokens
    return [row(ctx, section, f"batched, batch {batch}", default=True, tokens_per_s=n * new / seconds,
                items_per_s=n / seconds, item="sentences", flops_per_s=flops / seconds, peak_gib=peak_gib(),
                seconds=time.perf_counter() - start, sentences=n, max_new_tokens=new, translated=sum(o is not None for o in out),
                precision=backend.settings["precision"], note="tokens/s: generated tokens (up to max_new_tokens each)")]


def sec_llm(ctx: Ctx) -> list[dict[str, Any]]:
    """The llm backend (transformers generation, batched, left padding) on a Qwen2.5-0.5B shape."""
    from langlift.translate.llm import LLMBackend

    section, name = "llm-qwen2.5-0.5b", "qwen2.5-0.5b"
    n, batch, new = ctx.size(256, 8), ctx.size(32, 4), ctx.size(64, 8)
    start = time.perf_counter()
    path = causal_dir(ctx, name, ctx.size(1024, 128))
    backend = LLMBackend(str(path), PROMPT, LANG, engine="transformers", batch_size=batch, max_new_tokens=new,
                         device=ctx.device)
    texts = sentences("en")[:n]
    backend.translate(texts[:batch])  # warm-up
    prompts = [backend.tok.apply_chat_template(backend.messages(t), add_generation_prompt=True, tokenize=False)
               for t in texts]
    prompt_tokens = sum(len(ids) for ids in backend.tok(prompts, add_special_tokens=False)["input_ids"])
    reset_peak()
    t0 = time.perf_counter()
    backend.translate(texts)
    sync()
    seconds = time.perf_counter() - t0
    flops = 2 * G.matmul_params(ctx.causal(name)) * (prompt_tokens + n * new)
    return [row(ctx, section, f"transformers, batch {batch}", default=True, tokens_per_s=n * new / seconds,
                items_per_s=n / seconds, item="sentences", flops_per_s=flops / seconds, peak_gib=peak_gib(),
                seconds=time.perf_counter() - start, sentences=n, max_new_tokens=new,
                precision=backend.settings["precision"],
                note="vLLM not installed: transformers generation" if not installed("vllm") else "engine forced to transformers")]


def sec_lmeval(ctx: Ctx) -> list[dict[str, Any]]:
    """The evaluate stage's harness (lm-eval HFLM over the loaded model): rolling log-likelihood of long texts."""
    from langlift.evaluate.harness import Harness
    from langlift.evaluate.inputs import EvalSets
    from langlift.evaluate.models import load_base

    section, name = "lmeval-qwen2.5-0.5b", "qwen2.5-0.5b"
    n, doc_tokens, batch = ctx.size(512, 4), ctx.size(1000, 48), ctx.size(16, 2)
    start = time.perf_counter()
    path = causal_dir(ctx, name, ctx.size(1024, 128))
    params = finetune_params(ctx, path, "lora", 16, 32, 1, 64, 1, {})
    cfg = params.evaluate.model_copy(update={"batch_size": batch})
    texts = long_texts(ctx.tok, n, doc_tokens)
    sets = EvalSets(texts=[{"id": str(i), "text": t} for i, t in enumerate(texts)], pairs=[], instructions=[],
                    prompts=[])
    workdir = Path(tempfile.mkdtemp(dir=ctx.work))
    harness = Harness(sets, params.language, cfg, workdir, seed=0)
    loaded = load_base(str(path), ctx.device, torch.float32 if ctx.dry else torch.bfloat16)
    scored = sum(len(ids) for ids in loaded.tokenizer(texts, add_special_tokens=False)["input_ids"])
    if not ctx.dry:
        harness.perplexity(loaded)  # warm-up: task loading and dataset caching
    reset_peak()
    t0 = time.perf_counter()
    harness.perplexity(loaded)
    sync()
    seconds = time.perf_counter() - t0
    fpt = G.forward_flops_per_token(ctx.causal(name), doc_tokens)
    return [row(ctx, section, f"loglikelihood_rolling, batch {batch}", default=True, tokens_per_s=scored / seconds,
                flops_per_token=fpt, items_per_s=n / seconds, item="documents", peak_gib=peak_gib(),
                seconds=time.perf_counter() - start, documents=n, tokens_scored=scored,
                note="lm-eval's perplexity task" + ("" if ctx.dry else ", task loading excluded (second run)"))]


# ---------------------------------------------------------------- the run


# name, function, time guard on a GPU (seconds); the order is the order of importance
SECTIONS: list[tuple[str, Callable[[Ctx], list[dict[str, Any]]], int]] = [
    ("pretrain-az150m", sec_pretrain_az150m, 150),
    ("lora-qwen2.5-0.5b", sec_lora_qwen, 150),
    ("lora-llama-2-7b", sec_lora_7b, 150),
    ("qlora-mistral-7b", sec_qlora_7b, 150),
    ("cpt-llama-3.2-1b", sec_cpt_llama_1b, 75),
    ("translate-nllb-600m", sec_translate, 60),
    ("llm-qwen2.5-0.5b", sec_llm, 60),
    ("lmeval-qwen2.5-0.5b", sec_lmeval, 60),
]
MIN_SECTION_S = 25  # a section is started only with this much budget left, and each later one keeps this much


def make_ctx(dry: bool, work: Path) -> Ctx:
    """The context of this process: device, peak, threads and the run's tokenizer (trained once, then loaded)."""
    from transformers import AutoTokenizer

    from langlift import hardware
    from langlift import tokenizer as tk

    device = "cpu" if dry else ("cuda" if torch.cuda.is_available() else "cpu")
    threads = hardware.choose({"device": device, "precision": "fp32"}).num_threads
    torch.set_num_threads(threads)
    peak, _ = G.device_peak(device)
    tok_dir = work / "tokenizer"
    if (tok_dir / "tokenizer_config.json").exists():
        tok = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tok = tk.train(sentences("az")[:1500] + sentences("en")[:500], 512 if dry else 4096)
        tok = tk.finalize(tok, tk.chat_template("### Təlimat:", "### Cavab:"), 4096)
        tok.save_pretrained(tok_dir)
    os.chdir(work)  # the stages' relative caches (.cache/hashes.json) land in the scratch folder
    return Ctx(dry, device, peak, work, threads, tok)


def run_section(name: str, dry: bool, work: Path) -> list[dict[str, Any]]:
    """One section in this process; an error is a row, so the rest of the run goes on."""
    fn = dict((n, f) for n, f, _ in SECTIONS)[name]
    ctx = make_ctx(dry, work)
    try:
        return fn(ctx)
    except Exception as e:  # noqa: BLE001
        return [failed(ctx, name, "section", e)]
    finally:
        os.chdir(REPO)


def run_isolated(name: str, dry: bool, work: Path, timeout: float) -> list[dict[str, Any]]:
    """One section in its own process (own process group), killed at ``timeout`` seconds."""
    part = work / f"part-{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--work", str(work), "--part", str(part)]
    proc = subprocess.Popen(cmd + (["--dry"] if dry else []), cwd=REPO, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done = json.loads(part.read_text(encoding="utf-8")) if part.exists() else []
        return done + [_status_row(name, f"timeout: killed after {timeout:.0f} s (the section's guard)")]
    if part.exists():
        return json.loads(part.read_text(encoding="utf-8"))
    return [_status_row(name, f"error: the section's process exited with {rc} and wrote nothing")]


def _status_row(section: str, status: str) -> dict[str, Any]:
    return {"section": section, "variant": "section", "default": False, "status": status, "tokens_per_s": None,
            "items_per_s": None, "item": "", "flops_per_token": None, "mfu": None, "peak_gib": None, "seconds": None}


def checks(rows: list[dict[str, Any]], peak: float) -> list[dict[str, Any]]:
    """The targets of issue 14, each with its anchor, the measured value and pass (None: not measured)."""
    out = []

    def add(name: str, value: float | None, target: float, higher: bool, anchor: str) -> None:
        ok = None if value is None else (value >= target if higher else value <= target)
        out.append({"check": name, "value": value, "target": target, "higher_is_better": higher, "anchor": anchor,
                    "pass": ok})

    def default_of(section: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["section"] == section and r["default"] and r["status"] == "ok"), None)

    pre = default_of("pretrain-az150m")
    add("pretrain az150m MFU (bf16, packed)", pre and pre["mfu"], G.TARGET_PRETRAIN_MFU, True,
        "issue 14: >= 45% MFU")
    for section in ("lora-qwen2.5-0.5b", "lora-llama-2-7b"):
        r = default_of(section)
        add(f"{section}: finetune path / plain loop", r and r.get("vs_plain"), G.TARGET_VS_PLAIN, True,
            "issue 14: >= 90% of a plain PyTorch + peft loop")
    r = default_of("lora-llama-2-7b")
    for label, tps in G.LLAMA_FACTORY_LORA_7B.items():
        target = round(tps * peak / (G.A100_BF16_TFLOPS * 1e12), 1)
        add(f"lora-llama-2-7b tokens/s vs LLaMA-Factory {label}", r and r["tokens_per_s"], target, True,
            f"LLaMA-Factory {tps:,.0f} tokens/s on an A100 x (this device's bf16 peak / 312 TFLOP/s)")
    r = default_of("qlora-mistral-7b")
    add("qlora-mistral-7b peak memory GiB (4 x 1024, checkpointing)", r and r["peak_gib"], G.TARGET_QLORA_PEAK_GIB,
        False, "issue 14: <= 10 GiB")
    for section in sorted({r["section"] for r in rows}):
        variants = [r for r in rows if r["section"] == section and r["status"] == "ok" and r["tokens_per_s"]
                    and not r["variant"].startswith("plain")]
        default = default_of(section)
        if default and len(variants) > 1:
            fastest = max(variants, key=lambda r: r["tokens_per_s"])
            add(f"{section}: default vs fastest variant ({fastest['variant']})",
                round(default["tokens_per_s"] / fastest["tokens_per_s"], 3), 1 - G.DEFAULT_TOLERANCE, True,
                "the default should be the fastest choice that fits, within 5%")
    return out


def print_table(result: dict[str, Any]) -> None:
    head = (f"{'section':22} {'variant':40} {'tok/s':>9} {'items/s':>9} {'MFU':>6} {'peak GiB':>8} "
            f"{'vs plain':>8} {'s':>6}  status")
    print(f"\nGPU benchmark on {result['device']} ({result['peak_source']}); {result['date']}, commit {result['commit']}")
    print(head)
    print("-" * len(head))
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in result["rows"]:
        variant = ("* " if r["default"] else "  ") + r["variant"]
        print(f"{r['section']:22} {variant[:40]:40} {fmt(r['tokens_per_s'], ',.0f'):>9} "
              f"{fmt(r['items_per_s'], ',.1f'):>9} {fmt(r['mfu'], '.1%'):>6} {fmt(r['peak_gib'], '.2f'):>8} "
              f"{fmt(r.get('vs_plain'), '.2f'):>8} {fmt(r['seconds'], '.0f'):>6}  {r['status']}")
    print("* the default choice; MFU = model FLOPs/s over the device's dense bf16 peak (formulas in the JSON)\n")
    for c in result["checks"]:
        mark = {True: "PASS", False: "MISS", None: "n/a "}[c["pass"]]
        op = ">=" if c["higher_is_better"] else "<="
        value = "not measured" if c["value"] is None else number(c["value"])
        print(f"{mark}  {c['check']}: {value} (target {op} {number(c['target'])}; {c['anchor']})")
    if result["dry"]:
        print("dry run: tiny shapes on CPU, so the figures and checks say only that every path runs")
    print("\nsections (guard = time limit on a GPU):")
    for s in result["sections"]:
        print(f"  {s['name']:22} guard {s['guard_s']:>4} s, allowed {s['allowed_s']:>4.0f} s, took {s['seconds']:>6.1f} s")


def number(x: float) -> str:
    """A figure as people read it: thousands separated above 100, three significant digits below."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "lm_eval", "flash_attn",
                 "liger_kernel", "vllm"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
        out.setdefault(dist, None)
    return out


@click.command()
@click.option("--dry", is_flag=True, help="Every path on tiny shapes on CPU, in this process (CI).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSON to write, or a folder for it [benchmarks/results/gpu-<device>.json; --dry: "
                   "benchmarks/results/gpu-dry.json].")
@click.option("--only", default="", help="Comma-separated section names (default: all).")
@click.option("--budget", default=480.0, show_default=True, help="Seconds for all sections together.")
@click.option("--isolate/--no-isolate", default=None,
              help="Each section in its own process under its time guard [default: on a GPU yes, --dry no].")
@click.option("--guard-seconds", type=float, default=None, help="One time guard for every section (tests).")
@click.option("--section", hidden=True, default=None)
@click.option("--work", hidden=True, type=click.Path(path_type=Path), default=None)
@click.option("--part", hidden=True, type=click.Path(path_type=Path), default=None)
def main(dry: bool, out: Path | None, only: str, budget: float, isolate: bool | None, guard_seconds: float | None,
         section: str | None, work: Path | None, part: Path | None) -> None:
    """Run the GPU benchmark; print the table and the targets; write the JSON."""
    if section:  # a child process: one section, its rows to --part (as they come, and all at the end)
        PART[:] = [part, []]
        rows = run_section(section, dry, work)
        part.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        return
    names = [n for n, _, _ in SECTIONS]
    chosen = [n.strip() for n in only.split(",") if n.strip()] or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise click.BadParameter(f"unknown sections {unknown}; one of {names}", param_hint="--only")
    device = "cpu" if dry or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not dry:
        raise click.UsageError("no CUDA device: run with --dry (tiny shapes on CPU) or on a GPU")
    isolate = not dry if isolate is None else isolate
    peak, peak_source = G.device_peak(device)
    device_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    name = "gpu-dry.json" if dry else f"gpu-{G.slug(device_name)}.json"
    out = out / name if out is not None and out.is_dir() else out or RESULTS / name
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    sections = []
    with tempfile.TemporaryDirectory(prefix="langlift-gpu-") as tmp:
        for i, name in enumerate(n for n in names if n in chosen):
            guard = guard_seconds or dict((n, g) for n, _, g in SECTIONS)[name]
            later = sum(1 for n in names[names.index(name) + 1:] if n in chosen)
            left = budget - (time.perf_counter() - started)
            allowed = min(guard, left - later * MIN_SECTION_S) if not dry else guard
            t0 = time.perf_counter()
            print(f"\n=== {name}: time guard {guard:.0f} s, allowed {allowed:.0f} s of {left:.0f} s left ===", flush=True)
            if allowed < min(MIN_SECTION_S, guard) and not dry:
                got = [_status_row(name, f"skipped: {left:.0f} s of the budget left")]
            elif isolate:
                got = run_isolated(name, dry, Path(tmp), allowed)
            else:
                got = run_section(name, dry, Path(tmp))
            rows += got
            sections.append({"name": name, "guard_s": guard, "allowed_s": round(allowed, 1),
                             "seconds": round(time.perf_counter() - t0, 1)})
    result = {
        "device": device_name, "dry": dry, "peak_flops": peak, "peak_source": peak_source,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(), "versions": versions(),
        "seconds": round(time.perf_counter() - started, 1), "budget_s": budget,
        "formulas": {"training": "6N + 12*L*H*S", "lora": "4N + 6*N_adapter + 12*L*H*S",
                     "loglikelihood": "2N + 4*L*H*S", "generation": "2N per prompt and generated token",
                     "seq2seq": "2*N_enc per source token + 2*N_dec per generated token",
                     "N": "parameters in matrix products (attention, MLP, LM head; not the input embedding)"},
        "rows": rows, "checks": checks(rows, peak), "sections": sections,
    }
    print_table(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp_out.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
