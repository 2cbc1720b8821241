"""Pretraining: a tokenizer and a Llama from scratch, or continued pretraining of an existing model.

The loop is nanoGPT-direct on top of :class:`accelerate.Accelerator`, so the same code runs on a
laptop CPU and under ``accelerate launch`` with DDP, FSDP or DeepSpeed: packed blocks, AdamW with
linear warmup and cosine decay, gradient clipping and accumulation, periodic validation, rotating
checkpoints (model, optimizer, RNG, step; the data position follows from the step) and dvclive
curves. The host syncs with the device only at log and eval steps.

A rerun resumes the newest checkpoint when it was made by the same run (:func:`run_identity`: the
``pretrain.init`` model's content, the data, the loop config, seed, precision and this code), else
it says what differs and starts afresh (:mod:`langlift.resume`); ``fresh=True`` always starts afresh.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from langlift import generation, hardware, hide_log_messages, modelref, packing, resume
from langlift import model as llm
from langlift import tokenizer as tk
from langlift.errors import LangliftError
from langlift.io import atomic_path, write_json
from langlift.params import Params, Pretrain
from langlift.packing import BatchPlan, blocks, doc_position_ids, read_texts, tokenize

log = logging.getLogger(__name__)
# accelerate's save_state drops the lm_head copy of tied embeddings and warns so at every checkpoint; loading ties
# them again (tests/test_pretrain.py resumes from such checkpoints), so the notice tells a user nothing.
hide_log_messages("accelerate.utils.other", "Removed shared tensor")

# the loop settings a checkpoint must share with the run that resumes it (how often to save does not matter)
LOOP_KEYS = {"steps", "batch_size", "grad_accum", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "betas",
             "grad_clip", "eval_every", "eval_batches", "log_every"}


def lr_at(step: int, cfg: Pretrain) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, cfg: Pretrain, device: str) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not norms or biases); fused kernels on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=device == "cuda")


# ---------------------------------------------------------------- checkpoints


class Checkpoints:
    """``<dir>/step-00000100/`` folders holding accelerate's state, the dvclive curves up to that step and
    ``state.json`` (step, losses, the identity of the run that made it); the latest N are kept."""

    def __init__(self, root: str | Path, keep: int, identity: dict[str, Any], live: Path):
        self.root, self.keep, self.identity, self.live = Path(root), keep, identity, Path(live)

    def latest(self) -> Path | None:
        done = sorted(p for p in self.root.glob("step-*") if (p / "state.json").exists())
        return done[-1] if done else None

    def save(self, accelerator: Accelerator, step: int, extra: dict[str, Any]) -> Path:
        target = self.root / f"step-{step:08d}"
        tmp = self.root / f".tmp-step-{step:08d}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            resume.keep_curves(self.live, tmp)
            (tmp / "state.json").write_text(json.dumps({"step": step, **extra, "identity": self.identity}, indent=2))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)  # state.json inside marks a complete checkpoint
            for old in sorted(self.root.glob("step-*"))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return target

    def resumable(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint and its state when this run made it, else None (one log line says why)."""
        latest = self.latest()
        if latest is None:
            return None
        state = json.loads((latest / "state.json").read_text())
        return (latest, state) if resume.same_run(state.get("identity"), self.identity, self.root) else None


# ---------------------------------------------------------------- the loop


@dataclass
class Data:
    train: torch.Tensor  # [n, context] packed blocks
    val: torch.Tensor
    eos_id: int  # ends each packed document


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, val: torch.Tensor, batch_size: int,
             max_batches: int) -> float:
    """Mean next-token loss over the first ``max_batches`` global validation batches (``batch_size`` rows per
    rank), shared across ranks: N processes x batch b score the same rows as 1 process x batch N*b."""
    model.eval()
    total = torch.zeros(2, device=accelerator.device)
    rows = val[: batch_size * accelerator.num_processes * max_batches]
    for i in range(accelerator.process_index * batch_size, len(rows), batch_size * accelerator.num_processes):
        x = rows[i : i + batch_size].to(accelerator.device, non_blocking=True)
        with accelerator.autocast():
            loss = model(input_ids=x, labels=x).loss
        n = x.numel() - x.shape[0]
        total += torch.stack([loss.float() * n, torch.tensor(float(n), device=loss.device)])
    model.train()
    total = accelerator.reduce(total, reduction="sum")
    return (total[0] / total[1]).item()


def _sync(accelerator: Accelerator) -> None:
    """Wait for queued device work, so wall-clock timings are honest."""
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()


@dataclass
class LoopResult:
    step: int
    train_loss: float | None
    val_loss: float | None
    initial_val_loss: float | None
    tokens: int
    train_seconds: float
    history: list[dict[str, float]]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else 0.0


def train(
    accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Pretrain,
    data: Data, seed: int, start_step: int = 0, live: Any = None, checkpoints: Checkpoints | None = None,
    padding_free: bool = False, resumed: dict[str, Any] | None = None,
) -> LoopResult:
    """Run optimizer steps ``start_step`` … ``cfg.steps - 1``; eval, log and checkpoint on their schedules.

    ``resumed`` is the checkpoint's state (its last losses carry over when no step is left to run).

    Throughput counts the steps after the first of this run (warm-up excluded) and leaves eval and
    checkpoint time out.
    """
    plan = BatchPlan(len(data.train), cfg.batch_size, accelerator.num_processes, accelerator.process_index, seed)
    step_tokens = cfg.batch_size * cfg.grad_accum * accelerator.num_processes * data.train.shape[1]
    history: list[dict[str, float]] = []
    loss_sum = torch.zeros((), device=accelerator.device)
    resumed = resumed or {}
    since_log, train_loss, val_loss = 0, resumed.get("train_loss"), resumed.get("val_loss")
    initial = resumed.get("initial_val_loss")
    tokens, seconds, timed_from = 0, 0.0, None

    def record(step: int, **values: float) -> None:
        history.append({"step": step, **values})
        if live is not None:
            live.step = step
            for k, v in values.items():
                live.log_metric(k, v)
            live.next_step()

    if start_step == 0:
        val_loss = initial = evaluate(accelerator, model, data.val, cfg.batch_size, cfg.eval_batches)
        record(0, **{"eval/loss": val_loss, "eval/perplexity": math.exp(min(val_loss, 50))})
    model.train()
    bar = tqdm(range(start_step, cfg.steps), desc="pretrain", unit="step", initial=start_step, total=cfg.steps,
               disable=not accelerator.is_local_main_process)
    for step in bar:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(cfg.grad_accum):
            idx = plan.indices(step * cfg.grad_accum + micro)
            x = data.train[idx]
            extra = {}
            if padding_free:
                extra["position_ids"] = doc_position_ids(x, data.eos_id).to(accelerator.device)
            x = x.to(accelerator.device, non_blocking=True)
            with accelerator.accumulate(model), accelerator.autocast():
                loss = model(input_ids=x, labels=x, **extra).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach().float()
        since_log += 1
        done = step + 1
        if timed_from is None and step == start_step:  # the first step compiles kernels and warms caches
            loss_sum.item()
            timed_from = time.perf_counter()
        elif timed_from is not None:
            tokens += step_tokens
        if done % cfg.log_every == 0 or done == cfg.steps:
            train_loss = accelerator.reduce(loss_sum, reduction="mean").item() / (since_log * cfg.grad_accum)
            loss_sum.zero_()
            since_log = 0
            record(done, **{"train/loss": train_loss, "train/lr": lr})
            bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", refresh=False)  # redrawn at the bar's own pace
        if done % cfg.eval_every == 0 or done == cfg.steps or (checkpoints and done % cfg.checkpoint_every == 0):
            _sync(accelerator)
            if timed_from is not None:
                seconds += time.perf_counter() - timed_from
            if done % cfg.eval_every == 0 or done == cfg.steps:
                val_loss = evaluate(accelerator, model, data.val, cfg.batch_size, cfg.eval_batches)
                record(done, **{"eval/loss": val_loss, "eval/perplexity": math.exp(min(val_loss, 50))})
                log.info("step %d: train loss %s, val loss %.4f (perplexity %.1f)", done,
                         f"{train_loss:.4f}" if train_loss is not None else "-", val_loss, math.exp(min(val_loss, 50)))
            if checkpoints and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                checkpoints.save(accelerator, done, {"train_loss": train_loss, "val_loss": val_loss,
                                                     "initial_val_loss": initial})
            if timed_from is not None:
                timed_from = time.perf_counter()
    _sync(accelerator)
    if timed_from is not None and cfg.steps > start_step:
        seconds += time.perf_counter() - timed_from
    bar.close()
    return LoopResult(cfg.steps, train_loss, val_loss, initial, tokens, seconds, history)


# ---------------------------------------------------------------- the stage


@dataclass
class Paths:
    train: Path = Path("data/split/corpus_train.jsonl")
    val: Path = Path("data/split/corpus_val.jsonl")
    model: Path = Path("models/base")
    metrics: Path = Path("metrics/pretrain.json")
    live: Path = Path("metrics/pretrain")


def _tokenizer(
    p: Pretrain, arch: dict[str, Any] | None, texts: list[str], old: PreTrainedTokenizerBase | None
) -> tuple[PreTrainedTokenizerBase, list[str]]:
    """Train a tokenizer (from scratch) or extend ``old`` (continued pretraining); returns it and any new tokens."""
    if old is None:
        size = arch["vocab_size"]
        log.info("training a byte-fallback BPE tokenizer (vocab %d) on %d documents", size, len(texts))
        return tk.train(texts, int(size), p.tokenizer.min_frequency, length=len(texts),
                        exact=p.tokenizer.vocab_size is not None), []
    if p.extend_vocab == 0:
        return old, []
    return tk.extend(old, texts, p.extend_vocab, p.tokenizer.min_frequency)


def run_identity(p: Pretrain, seed: int, arch: dict[str, Any] | None, paths: Paths, precision: str) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it (see :mod:`langlift.resume`)."""
    return {
        "init": modelref.fingerprint(p.init) if p.init else None,
        "extend_vocab": p.extend_vocab if p.init else None,
        "model": arch or {"context": p.model.context},
        "tokenizer": p.tokenizer.model_dump(include={"vocab_size", "min_frequency"}),
        "loop": p.model_dump(mode="json", include=LOOP_KEYS),
        "seed": seed,
        "data": resume.data_hashes({"train": paths.train, "val": paths.val}),
        "precision": precision,
        "processes": hardware.processes(),
        "code": resume.code_version(sys.modules[__name__], llm, tk, packing),
    }


def summary(metrics: dict[str, Any], paths: Paths = Paths()) -> str:
    """The stage's closing line: where the model went, its validation loss and the speed."""
    mfu = f", MFU {metrics['mfu']:.1%}" if metrics.get("mfu") is not None else ""
    speed = f", {metrics['tokens_per_second']:,.0f} tokens/s{mfu}" if metrics.get("tokens_per_second") else ""
    val = metrics.get("val_loss")
    loss = f", val loss {val:.4f} (perplexity {math.exp(val):.1f})" if val is not None else ""
    return f"{paths.model}: {metrics['steps']} steps{loss}{speed}"


def run(params: Params, paths: Paths = Paths(), fresh: bool = False) -> dict[str, Any]:
    """The pretrain stage: tokenizer, model, training, ``models/base`` and metrics. Returns the metrics (empty
    in processes other than the main one).

    Resumes the newest checkpoint of this same run (:func:`run_identity`) unless ``fresh``.
    """
    p = params.pretrain
    seed, init = params.seed, p.init
    if init:
        modelref.check_declared(init, "pretrain.init")
    template = tk.chat_template(p.chat.user, p.chat.assistant)

    train_texts, val_texts = read_texts(paths.train), read_texts(paths.val)
    arch = None if init else llm.resolve(p.preset, p.model.model_dump())
    if arch:
        arch["vocab_size"] = p.tokenizer.vocab_size or arch["vocab_size"]
        log.info("model from scratch, preset %s: %s", p.preset, llm.describe(arch))
    else:
        log.info("continued pretraining of %s", init)
    probe = hardware.choose(params.hardware.model_dump())  # device/precision before sizing memory
    state = PartialState(cpu=probe.device == "cpu")  # joins the other processes of a launch (DDP), if any
    ckpt_root = Path(p.checkpoint_dir)
    checkpoints = Checkpoints(ckpt_root, p.keep_checkpoints, run_identity(p, seed, arch, paths, probe.precision),
                              paths.live)
    if fresh and checkpoints.latest() is not None:
        log.warning("--fresh: starting from step 0 and removing the checkpoints under %s", ckpt_root)
    found = None if fresh else checkpoints.resumable()
    latest = found[0] if found else None

    # the tokenizer: from the checkpoint on resume, else trained / extended by the main process and sent to the
    # others (all ranks must tokenize alike); the main process saves it beside the checkpoints
    tok_dir = ckpt_root / "tokenizer"
    old_tok, added = None, []
    if init:
        try:
            old_tok = AutoTokenizer.from_pretrained(init)
        except (OSError, ValueError) as e:
            raise LangliftError(f"params.yaml: pretrain.init: cannot load the tokenizer of {init!r}: {e}") from None
    if latest is not None:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        if old_tok is not None and len(tokenizer) > len(old_tok):
            added = tokenizer.convert_ids_to_tokens(list(range(len(old_tok), len(tokenizer))))
    else:
        made = [_tokenizer(p, arch, train_texts, old_tok) if state.is_main_process else None]
        tokenizer, added = broadcast_object_list(made)[0]
    context = int(arch["context"]) if arch else p.model.context or 2048
    tokenizer = tk.finalize(tokenizer, template, context)
    if arch:
        arch["vocab_size"] = len(tokenizer)  # the preset's size, or what a small corpus supports
    if init:
        context = min(context, int(getattr(AutoConfig.from_pretrained(init), "max_position_embeddings", context)))

    # data (checked before anything is built or old checkpoints are touched)
    log.info("tokenizing %d training and %d validation documents", len(train_texts), len(val_texts))
    train_stream, val_stream = tokenize(tokenizer, train_texts), tokenize(tokenizer, val_texts)
    data = Data(blocks(train_stream, context, paths.train), blocks(val_stream, context, paths.val, allow_short=True),
                tokenizer.eos_token_id)
    fert = {"fertility": tk.fertility(tokenizer, val_texts)}
    if p.tokenizer.reference:
        modelref.check_declared(p.tokenizer.reference, "pretrain.tokenizer.reference")
    ref = tk.load_reference(p.tokenizer.reference)
    fert["reference_fertility"] = tk.fertility(ref, val_texts) if ref is not None else None

    # the model
    attn = probe.attn_implementation
    if init:
        model = llm.load(init, attn)
        if added:
            llm.init_new_embeddings(model, old_tok, added, len(old_tok))
    else:
        config = llm.build_config(arch, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                                  tokenizer.pad_token_id, attn)
        model = llm.from_scratch(config, seed)
    n_params = sum(q.numel() for q in model.parameters())
    log.info("%s params, %d train tokens (%d blocks of %d), %d val tokens, fertility %.3f tokens/word",
             f"{n_params:,}", len(train_stream), len(data.train), context, len(val_stream), fert["fertility"])
    need = hardware.training_memory_bytes(
        n_params, n_params, 2 if probe.precision in ("bf16", "fp16") else 4,
        p.batch_size * context, model.config.hidden_size, model.config.num_hidden_layers)
    settings = hardware.choose(params.hardware.model_dump(), need)
    hardware.apply(settings)
    if settings.gradient_checkpointing:
        model.activation_checkpointing_enable()

    accelerator = Accelerator(
        mixed_precision={"bf16": "bf16", "fp16": "fp16"}.get(settings.precision, "no"),
        gradient_accumulation_steps=p.grad_accum, cpu=settings.device == "cpu",
    )
    accelerator.wait_for_everyone()  # every rank has chosen its checkpoint before the main process removes any
    if latest is None and accelerator.is_main_process:
        shutil.rmtree(ckpt_root, ignore_errors=True)
        tokenizer.save_pretrained(tok_dir)
    accelerator.wait_for_everyone()

    optimizer = make_optimizer(model, p, settings.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    start, resumed = 0, None
    if found is not None:
        accelerator.load_state(str(latest))
        resumed = found[1]
        start = resumed["step"]
        log.info("resumed from %s at step %d", latest, start)

    live = None
    if accelerator.is_main_process:
        from dvclive import Live

        if latest is not None:
            resume.restore_curves(latest, paths.live)  # DVC deleted them before rerunning the stage
        live = Live(dir=str(paths.live), resume=latest is not None, dvcyaml=None, save_dvc_exp=False)
    result = train(accelerator, model, optimizer, p, data, seed, start, live, checkpoints, settings.padding_free,
                   resumed)

    # outputs
    state_dict = accelerator.get_state_dict(model)
    metrics: dict[str, Any] = {}
    if accelerator.is_main_process:
        live.end()
        final = accelerator.unwrap_model(model)
        final.config.use_cache = True  # generation after training wants the KV cache
        with atomic_path(paths.model) as tmp:
            final.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            generation.save(tmp, params.generation, tokenizer, generation.context_length(final))
        fpt = llm.flops_per_token(final, context)
        peak = hardware.matmul_gflops(settings.dtype, settings.device, size=4096 if settings.device == "cuda" else 1024,
                                      seconds=0.5)
        achieved = result.tokens_per_second * fpt / accelerator.num_processes / 1e9
        metrics = {
            "train_loss": result.train_loss,
            "val_loss": result.val_loss,
            "val_perplexity": math.exp(min(result.val_loss, 50)) if result.val_loss is not None else None,
            "initial_val_loss": result.initial_val_loss,
            "steps": result.step,
            "resumed_from_step": start,
            "tokens_per_second": round(result.tokens_per_second, 1) if result.tokens else None,
            "gflops_per_second_per_device": round(achieved, 2) if result.tokens else None,
            "peak_matmul_gflops_per_device": round(peak, 2),
            "mfu": round(achieved / peak, 4) if result.tokens and peak else None,
            "parameters": n_params,
            "train_tokens": int(len(train_stream)),
            "tokens_seen": int(result.step * p.batch_size * p.grad_accum * accelerator.num_processes * context),
            "epochs": round(result.step * p.batch_size * p.grad_accum * accelerator.num_processes / len(data.train), 2),
            "vocab_size": len(tokenizer),
            "new_tokens": len(added),
            "context": context,
            "processes": accelerator.num_processes,
            **{f"tokenizer_{k}": round(v, 4) if v is not None else None for k, v in fert.items()},
            **{f"hardware.{k}": v for k, v in settings.as_metrics().items()},
            "language": params.language.code,
        }
        write_json(paths.metrics, metrics)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics
