"""Supervised fine-tuning with TRL's SFTTrainer: full, LoRA, QLoRA (4-bit NF4 with double quantisation)
or LoRA on an 8-bit base (bitsandbytes), with DoRA and rsLoRA switches.

The mistakes this module rules out: the adapter config is built from params in one place
(:func:`lora_config`) and, after training, the config peft applied and the one saved to
``adapter_config.json`` are both compared with it (:func:`verify_adapter`); every response ends in a
labelled EOS (:mod:`langlift.templates`); precision, checkpointing and attention come from
:mod:`langlift.hardware`, never from TRL's defaults.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from langlift import hardware, modelcard, records, templates
from langlift.errors import LangliftError
from langlift.io import atomic_path, write_json, write_text

log = logging.getLogger(__name__)

METHODS = ("full", "lora", "qlora", "lora-8bit")
ADAPTER_KEYS = ("r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora")
INFO_FILE = "langlift.json"


@dataclass(frozen=True)
class Paths:
    """Where one fine-tuning run writes: the model folder, metrics, dvclive curves and resumable checkpoints."""

    model: Path
    metrics: Path
    live: Path
    checkpoints: Path

    @classmethod
    def for_run(cls, name: str | None) -> Paths:
        """The default run writes ``models/finetuned``; a matrix entry ``models/matrix/<name>``."""
        if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise LangliftError(f"params.yaml: finetune.matrix: name {name!r} must be letters, digits, '.', '_' or '-'")
        if not name:
            return cls(Path("models/finetuned"), Path("metrics/finetune.json"), Path("metrics/finetune"),
                       Path(".cache/finetune/default"))
        return cls(Path("models/matrix") / name, Path("metrics/matrix") / f"{name}.json",
                   Path("metrics/matrix") / name, Path(".cache/finetune") / name)


# --- params -------------------------------------------------------------------------------------------------


def lora_config(ft: dict[str, Any]):
    """The one place a LoraConfig is built from ``finetune.lora`` in params."""
    from peft import LoraConfig

    lo = ft.get("lora") or {}
    targets = lo.get("target_modules", "all-linear")
    return LoraConfig(
        r=int(lo.get("r", 16)),
        lora_alpha=int(lo.get("alpha", 32)),
        lora_dropout=float(lo.get("dropout", 0.05)),
        target_modules=targets if isinstance(targets, str) else list(targets),
        use_dora=bool(lo.get("use_dora", False)),
        use_rslora=bool(lo.get("use_rslora", False)),
        bias="none",
        task_type="CAUSAL_LM",
    )


def quantization_config(method: str, compute_dtype: torch.dtype):
    """bitsandbytes settings for the quantised methods (None for full and plain LoRA)."""
    from transformers import BitsAndBytesConfig

    if method == "qlora":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if method == "lora-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def _method(ft: dict[str, Any]) -> str:
    method = ft.get("method", "lora")
    if method not in METHODS:
        raise LangliftError(f"params.yaml: finetune.method: {method!r} is not one of {METHODS}")
    return method


# --- base model ---------------------------------------------------------------------------------------------


def resolve_base_model(name: str) -> str:
    """A loadable base model: a local HF folder, or a hub id already in the local cache (or reachable)."""
    from transformers import AutoConfig

    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise LangliftError(f"base_model '{name}': the folder has no config.json (not a Hugging Face model)")
        return str(path)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    for local_only in (True,) if offline else (True, False):
        try:
            AutoConfig.from_pretrained(name, local_files_only=local_only)
            return name
        except (OSError, ValueError):
            continue
    hint = "run `dvc repro pretrain` first" if name == "models/base" else (
        f"download it where there is network (`hf download {name}`) and point HF_HOME at that cache, "
        "or set base_model to a local folder"
    )
    raise LangliftError(
        f"base_model '{name}' cannot be loaded: not a local model folder and not in the Hugging Face cache"
        f"{' (HF_HUB_OFFLINE is set)' if offline else ''}; {hint}"
    )


def _linear_names(model: torch.nn.Module) -> set[str]:
    """Qualified names of the linear layers (bitsandbytes ones included), output layer excluded."""
    out = model.get_output_embeddings()
    return {
        name for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and mod is not out  # bnb Linear4bit/Linear8bitLt subclass nn.Linear
    }


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def check_targets(model: torch.nn.Module, targets: str | list[str], base: str) -> None:
    """Every declared target module must name at least one linear layer of the model."""
    if isinstance(targets, str):
        if targets == "all-linear":
            return
        targets = [targets]
    linear = _linear_names(model)
    missing = [t for t in targets if not any(_matches(n, t) for n in linear)]
    if missing:
        short = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise LangliftError(
            f"params.yaml: finetune.lora.target_modules: {missing} match no linear layer of {base}; "
            f"its linear layers are named {short} (or use all-linear)"
        )


def estimate_memory(base: str, method: str, batch_tokens: int) -> int:
    """Rough peak training memory, for :func:`langlift.hardware.choose` (built on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    text = config.get_text_config()
    bytes_per_param = {"qlora": 0.5, "lora-8bit": 1.0, "lora": 2.0, "full": 4.0}[method]
    trainable = n if method == "full" else n // 50  # adapters are ~1-2% of the weights
    return hardware.training_memory_bytes(n, trainable, bytes_per_param, batch_tokens, text.hidden_size,
                                          text.num_hidden_layers)


def load_model(base: str, method: str, settings: hardware.TrainSettings):
    """The base model for training: quantised for the QLoRA methods, fp32 weights for full fine-tuning."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    quant = quantization_config(method, settings.dtype)
    kwargs: dict[str, Any] = {"attn_implementation": settings.attn_implementation}
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": _device_index(settings.device)})
    else:  # full: fp32 master weights (autocast does the rest); LoRA: frozen base stored in the compute dtype
        kwargs["dtype"] = torch.float32 if method == "full" else settings.dtype
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    model.config.use_cache = False  # a KV cache in training would also hide packed-sequence boundaries
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing)
    return model


def _device_index(device: str) -> Any:
    if device == "cuda":
        return int(os.environ.get("LOCAL_RANK", 0))  # one model copy per process under accelerate/DDP
    return device


# --- data ---------------------------------------------------------------------------------------------------


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Validated instruction records; a bad line names file, line and field."""
    path = Path(path)
    if not path.exists():
        raise LangliftError(f"{path}: not found (run `dvc repro split` first)")
    out = [rec for _, rec in records.read(path, "instructions")]
    if not out:
        raise LangliftError(f"{path}: no instruction records")
    return out


def encode_split(recs, tokenizer, template, ft, desc):
    """Token ids + response-only labels as a datasets.Dataset, and what happened to over-long examples."""
    from datasets import Dataset

    rows, stats = templates.encode_records(recs, tokenizer, template, int(ft.get("max_seq_length", 1024)),
                                           ft.get("overlong", "drop"), desc)
    if not rows:
        raise LangliftError(f"{desc}: every example is longer than finetune.max_seq_length; raise it")
    return Dataset.from_list(rows), stats


# --- training -----------------------------------------------------------------------------------------------


def sft_config(params: dict[str, Any], ft: dict[str, Any], settings: hardware.TrainSettings, output_dir: Path,
               has_eval: bool):
    """TRL's SFTConfig built from params and the hardware choice, never from TRL's defaults."""
    from trl import SFTConfig

    packing = bool(ft.get("packing", False))
    max_length = int(ft.get("max_seq_length", 1024))
    eval_steps = int(ft.get("eval_steps", 50))
    return SFTConfig(
        output_dir=str(output_dir),
        seed=int(params.get("seed", 0)),
        learning_rate=float(params["lr"]),
        num_train_epochs=float(params["epochs"]),
        max_steps=int(ft.get("max_steps", -1)),
        per_device_train_batch_size=int(ft.get("batch_size", 4)),
        per_device_eval_batch_size=int(ft.get("batch_size", 4)),
        gradient_accumulation_steps=int(ft.get("gradient_accumulation", 8)),
        lr_scheduler_type=ft.get("lr_scheduler", "cosine"),
        warmup_steps=float(ft.get("warmup_ratio", 0.03)),
        weight_decay=float(ft.get("weight_decay", 0.0)),
        max_grad_norm=float(ft.get("max_grad_norm", 1.0)),
        bf16=settings.precision == "bf16",
        fp16=settings.precision == "fp16",
        use_cpu=settings.device == "cpu",
        gradient_checkpointing=settings.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if settings.gradient_checkpointing else None,
        dataloader_num_workers=settings.dataloader_workers,
        packing=packing,
        packing_strategy="bfd",  # whole examples only; position ids restart per example
        padding_free=settings.padding_free,
        # examples are already cut to max_seq_length; TRL refuses a max_length with padding-free unpacked batches
        max_length=max_length if packing or not settings.padding_free else None,
        logging_steps=int(ft.get("logging_steps", 5)),
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=int(ft.get("checkpoint_steps", 50)),
        save_total_limit=2,
        report_to="none",
        disable_tqdm=False,
    )


def live_callback(live):
    """A TrainerCallback sending train and validation loss to dvclive, stepped by the optimizer step."""
    from transformers import TrainerCallback

    class LiveCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            live.step = state.global_step
            for key, name in (("loss", "train/loss"), ("eval_loss", "eval/loss"),
                              ("learning_rate", "train/lr"), ("grad_norm", "train/grad_norm")):
                if key in logs:
                    live.log_metric(name, float(logs[key]))

    return LiveCallback()


def trainer_class(fused_lm_head: bool):
    """TRL's SFTTrainer, or one whose loss is the model's own cross-entropy over full logits.

    TRL 1.16 always scores tokens through its chunked "fused LM head" (log-probs, entropy and top-1
    without materialising the logits): on a GPU that saves memory, on CPU it made a tiny LoRA step
    ~1.5x slower than the model's own loss (benchmarks/finetune.py). Everything else (data, collation,
    packing, PEFT, the loop) stays TRL's.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    if fused_lm_head:
        return SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return PlainLossSFTTrainer


def use_fused_lm_head(ft: dict[str, Any], settings: hardware.TrainSettings) -> bool:
    """``finetune.fused_lm_head``: auto means on with CUDA only."""
    value = ft.get("fused_lm_head", "auto")
    if value == "auto":
        return settings.device == "cuda"
    if not isinstance(value, bool):
        raise LangliftError(f"params.yaml: finetune.fused_lm_head: {value!r} is not auto, true or false")
    return value


def _fingerprint(params: dict[str, Any], base: str, data: list[Path]) -> str:
    """What a checkpoint was trained with: resuming from one made with other params or data is refused."""
    ft = {k: v for k, v in (params.get("finetune") or {}).items() if k not in ("matrix", "resume", "merge")}
    h = hashlib.sha256(json.dumps([ft, params.get("lr"), params.get("epochs"), params.get("seed"),
                                   params.get("hardware"), base], sort_keys=True, default=str).encode())
    for p in data:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _resume_point(ckpt_dir: Path, fingerprint: str, enabled: bool) -> str | None:
    """The last checkpoint of an interrupted run with the same fingerprint, else None (stale ones removed)."""
    from transformers.trainer_utils import get_last_checkpoint

    stamp = ckpt_dir / "fingerprint.txt"
    if ckpt_dir.exists() and (not enabled or not stamp.exists() or stamp.read_text() != fingerprint):
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    last = get_last_checkpoint(str(ckpt_dir))
    if last:
        log.info("resuming from %s", last)
    return last


def verify_adapter(declared, model, saved_dir: Path) -> dict[str, Any]:
    """Prove the adapter applied and saved is the declared one; return the saved config."""
    applied = model.peft_config["default"]
    saved = json.loads((saved_dir / "adapter_config.json").read_text(encoding="utf-8"))
    problems = []
    for key in ADAPTER_KEYS:
        want = getattr(declared, key)
        if getattr(applied, key) != want:
            problems.append(f"{key}: declared {want!r}, applied {getattr(applied, key)!r}")
        if saved.get(key) != want:
            problems.append(f"{key}: declared {want!r}, saved {saved.get(key)!r}")
    injected = {n.removeprefix("base_model.model.") for n, m in model.named_modules()
                if hasattr(m, "lora_A") and "default" in m.lora_A}
    if set(saved["target_modules"]) != set(applied.target_modules):
        problems.append(f"target_modules: applied {sorted(applied.target_modules)}, saved {sorted(saved['target_modules'])}")
    targets = declared.target_modules
    if targets == "all-linear":
        if not injected or injected != set(applied.target_modules):
            problems.append(f"target_modules: all-linear expanded to {sorted(applied.target_modules)}, "
                            f"adapters sit on {sorted(injected)}")
    else:
        targets = [targets] if isinstance(targets, str) else list(targets)
        stray = [n for n in injected if not any(_matches(n, t) for t in targets)]
        unused = [t for t in targets if not any(_matches(n, t) for n in injected)]
        if stray or unused:
            problems.append(f"target_modules: adapters on undeclared {stray}, declared but unused {unused}")
    if problems:
        raise RuntimeError("the adapter differs from params.yaml finetune.lora: " + "; ".join(problems))
    return saved


def count_params(model) -> tuple[int, int]:
    """Trainable and total parameters (4-bit weights counted unpacked)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))


@dataclass
class Prepared:
    """A trainer ready to run, and what went into it."""

    trainer: Any
    declared: Any  # the LoraConfig built from params (None for full fine-tuning)
    template: templates.Template
    settings: hardware.TrainSettings
    train_stats: templates.EncodeStats
    val_stats: templates.EncodeStats | None
    base_name: str
    base: str
    resume: str | None
    live: Any
    fused_lm_head: bool


def prepare(params: dict[str, Any], *, base_model: str | None = None, paths: Paths,
            train_path: str | Path = "data/split/train.jsonl", val_path: str | Path = "data/split/val.jsonl") -> Prepared:
    """Resolve the base model and template, encode the data, choose hardware settings, build the SFTTrainer."""
    from dvclive import Live
    from transformers import AutoTokenizer

    ft = params.get("finetune") or {}
    method = _method(ft)
    base_name = base_model or params.get("base_model") or "models/base"
    base = resolve_base_model(base_name)
    lang = (params.get("language") or {}).get("code", "")

    tokenizer = AutoTokenizer.from_pretrained(base)
    template = templates.resolve(tokenizer, ft, lang)
    tokenizer.chat_template = template.chat_template  # the saved tokenizer carries the template trained on
    train_ds, train_stats = encode_split(load_records(train_path), tokenizer, template, ft, "train")
    val_ds, val_stats = (encode_split(load_records(val_path), tokenizer, template, ft, "val")
                         if Path(val_path).exists() else (None, None))
    log.info("train: %d examples, %d tokens (%d in responses)", train_stats.kept, train_stats.tokens,
             train_stats.response_tokens)

    batch_tokens = int(ft.get("batch_size", 4)) * int(ft.get("max_seq_length", 1024))
    settings = hardware.choose(params.get("hardware"), needed_memory_bytes=estimate_memory(base, method, batch_tokens))
    hardware.apply(settings)
    if ft.get("packing") and settings.attn_implementation != "flash_attention_2":
        log.info("packing with %s: transformers builds a block-diagonal mask from the restarting position ids, "
                 "so packed examples do not attend to each other", settings.attn_implementation)

    declared = lora_config(ft) if method != "full" else None
    if method == "lora-8bit" and declared.use_dora and settings.device == "cpu":
        raise LangliftError("params.yaml: finetune.lora.use_dora on an 8-bit base fails on CPU in bitsandbytes "
                            "(int8_mm_dequant without column stats); use method qlora or lora for DoRA here")
    model = load_model(base, method, settings)
    if declared is not None:
        check_targets(model, declared.target_modules, base_name)

    fingerprint = _fingerprint(params, base_name, [Path(train_path)] + ([Path(val_path)] if val_ds else []))
    resume = _resume_point(paths.checkpoints, fingerprint, bool(ft.get("resume", True)))
    args = sft_config(params, ft, settings, paths.checkpoints, val_ds is not None)
    live = Live(dir=str(paths.live), resume=resume is not None, save_dvc_exp=False, dvcyaml=None)
    fused = use_fused_lm_head(ft, settings)
    log.info("loss: %s", "TRL's chunked fused LM head" if fused else "the model's own cross-entropy (full logits)")
    trainer = trainer_class(fused)(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                                   processing_class=tokenizer, peft_config=declared, callbacks=[live_callback(live)])
    if declared is not None and settings.precision == "fp32":
        for p in trainer.model.parameters():  # TRL stores QLoRA adapters in bf16; keep them fp32 where we compute in fp32
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    return Prepared(trainer, declared, template, settings, train_stats, val_stats, base_name, base, resume, live, fused)


def run(params: dict[str, Any], *, base_model: str | None = None, name: str | None = None,
        train_path: str | Path = "data/split/train.jsonl", val_path: str | Path = "data/split/val.jsonl",
        paths: Paths | None = None) -> tuple[dict[str, Any], Any]:
    """Fine-tune one base model; write the model folder, metrics and dvclive curves.

    Returns the metrics and the trained model (a PeftModel for the adapter methods).
    """
    ft = params.get("finetune") or {}
    paths = paths or Paths.for_run(name)
    prep = prepare(params, base_model=base_model, paths=paths, train_path=train_path, val_path=val_path)
    trainer, declared, method = prep.trainer, prep.declared, _method(ft)
    trainable, total = count_params(trainer.model)
    log.info("%s: %d trainable of %d parameters (%.2f%%)", method, trainable, total, 100 * trainable / total)

    has_val = trainer.eval_dataset is not None
    eval_start = trainer.evaluate()["eval_loss"] if has_val and prep.resume is None else None
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=prep.resume)
    seconds = time.perf_counter() - start
    eval_end = trainer.evaluate()["eval_loss"] if has_val else None
    prep.live.end()

    epochs_done = float(result.metrics.get("epoch", params["epochs"]))
    first, last = _first_last_loss(trainer)
    ts, vs = prep.train_stats, prep.val_stats
    metrics: dict[str, Any] = {
        "method": method,
        "base_model": prep.base_name,
        "template": prep.template.source,
        "fused_lm_head": prep.fused_lm_head,
        "train_loss": last,
        "train_loss_first": first,
        "eval_loss": eval_end,
        "eval_loss_start": eval_start,
        "steps": result.global_step,
        "epochs": epochs_done,
        "train_examples": ts.kept,
        "train_tokens": ts.tokens,
        "train_response_tokens": ts.response_tokens,
        "train_truncated": ts.truncated,
        "train_dropped_overlong": ts.dropped_overlong,
        "eos_inserted": ts.eos_inserted + (vs.eos_inserted if vs else 0),
        "val_examples": vs.kept if vs else 0,
        "train_seconds": round(seconds, 2),
        # non-pad tokens per second; a resumed run trained only part of them in this process
        "tokens_per_second": round(ts.tokens * epochs_done / seconds, 1) if prep.resume is None else None,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100 * trainable / total, 4),
    }
    metrics.update({f"hardware.{k}": v for k, v in prep.settings.as_metrics().items()})
    staging = paths.checkpoints / "final"
    trainer.save_model(str(staging))  # on every rank: FSDP and ZeRO-3 gather the weights collectively
    if not trainer.is_world_process_zero():
        return metrics, trainer.model

    with atomic_path(paths.model) as tmp:
        shutil.copytree(staging, tmp)
        trainer.processing_class.save_pretrained(str(tmp))
        (tmp / "training_args.bin").unlink(missing_ok=True)
        adapter = verify_adapter(declared, trainer.model, tmp) if declared is not None else None
        if adapter is not None:
            metrics.update({f"adapter.{k}": adapter[k] for k in ADAPTER_KEYS})
            metrics["adapter.target_modules"] = ",".join(sorted({t.rsplit(".", 1)[-1] for t in adapter["target_modules"]}))
            metrics["adapter.modules"] = len(adapter["target_modules"])
        merged = bool(ft.get("merge", False)) and declared is not None
        if merged:
            merge_adapter(prep.base, tmp, tmp / "merged", prep.settings.dtype)
        write_json(tmp / INFO_FILE, {
            "base_model": prep.base_name,
            "method": method,
            "template": prep.template.as_dict(),
            "adapter_config": adapter,
            "merged": "merged" if merged else None,
            "max_seq_length": int(ft.get("max_seq_length", 1024)),
            "language": params.get("language"),
        })
        write_text(tmp / "README.md", modelcard.render(
            name=paths.model.name, base_model=prep.base_name, method=method, language=params.get("language") or {},
            template=prep.template.as_dict(), train_params=_train_params(params, ft), adapter_config=adapter,
            metrics={k: v for k, v in metrics.items() if v is not None}, hashes=modelcard.data_hashes(),
            licenses=modelcard.data_licenses()))
    write_json(paths.metrics, metrics)
    shutil.rmtree(paths.checkpoints, ignore_errors=True)
    log.info("wrote %s and %s", paths.model, paths.metrics)
    return metrics, trainer.model


def _first_last_loss(trainer) -> tuple[float | None, float | None]:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return (losses[0], losses[-1]) if losses else (None, None)


def _train_params(params: dict[str, Any], ft: dict[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in ft.items() if k not in ("matrix", "templates")}
    return {"seed": params.get("seed"), "lr": params.get("lr"), "epochs": params.get("epochs"), "finetune": keep}


def merge_adapter(base: str, adapter_dir: Path, out: Path, dtype: torch.dtype) -> None:
    """Base weights (unquantised) + adapter merged into a standalone model folder."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(out))
    log.info("merged the adapter into %s (%s)", out, dtype)


# --- inference ----------------------------------------------------------------------------------------------


def respond(model, tokenizer, prompt: str, *, max_new_tokens: int = 256, temperature: float = 0.0,
            streamer: Any = None) -> str:
    """One answer to ``prompt`` through the model's chat template; tokens go to ``streamer`` as they come."""
    enc = tokenizer.apply_chat_template(templates.prompt_messages(prompt), add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True).to(model.device)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, streamer=streamer, **sampling,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
