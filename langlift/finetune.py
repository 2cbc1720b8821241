"""Supervised fine-tuning with TRL's SFTTrainer: full, LoRA, QLoRA (4-bit NF4 with double quantisation)
or LoRA on an 8-bit base (bitsandbytes), with DoRA and rsLoRA switches.

The mistakes this module rules out: the adapter config is built from params in one place
(:func:`lora_config`) and, after training, the ``adapter_config.json`` saved and the LoRA layers peft
actually built are compared, module by module, with a config built afresh from params
(:func:`verify_adapter`); every response ends in a labelled EOS (:mod:`langlift.templates`); precision,
checkpointing and attention come from :mod:`langlift.hardware`, never from TRL's defaults; a rerun
resumes the newest checkpoint only when this same run made it (:func:`run_identity`, :mod:`langlift.resume`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from langlift import generation, hardware, modelcard, modelref, records, resume, templates
from langlift.errors import LangliftError
from langlift.io import atomic_path, write_json, write_text
from langlift.params import Finetune, Params

log = logging.getLogger(__name__)

ADAPTER_KEYS = ("r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora")
ADAPTER_FIELDS = (*ADAPTER_KEYS, "bias", "modules_to_save")  # compared by verify_adapter besides the modules
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


def lora_config(ft: Finetune):
    """The one place a LoraConfig is built from ``finetune.lora`` in params."""
    from peft import LoraConfig

    lo = ft.lora
    return LoraConfig(
        r=lo.r,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        target_modules=lo.target_modules if isinstance(lo.target_modules, str) else list(lo.target_modules),
        use_dora=lo.use_dora,
        use_rslora=lo.use_rslora,
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


def encode_split(recs, tokenizer, template, ft: Finetune, desc):
    """Token ids + response-only labels as a datasets.Dataset, and what happened to over-long examples."""
    from datasets import Dataset

    rows, stats = templates.encode_records(recs, tokenizer, template, ft.max_seq_length, ft.overlong, desc)
    if not rows:
        raise LangliftError(f"{desc}: every example is longer than finetune.max_seq_length; raise it")
    return Dataset.from_list(rows), stats


# --- training -----------------------------------------------------------------------------------------------


def sft_config(params: Params, settings: hardware.TrainSettings, output_dir: Path, has_eval: bool):
    """TRL's SFTConfig built from params and the hardware choice, never from TRL's defaults."""
    from trl import SFTConfig

    ft = params.finetune
    return SFTConfig(
        output_dir=str(output_dir),
        seed=params.seed,
        learning_rate=params.lr,
        num_train_epochs=params.epochs,
        max_steps=ft.max_steps,
        per_device_train_batch_size=ft.batch_size,
        per_device_eval_batch_size=ft.batch_size,
        gradient_accumulation_steps=ft.gradient_accumulation,
        lr_scheduler_type=ft.lr_scheduler,
        warmup_steps=ft.warmup_ratio,  # below 1: a share of the steps
        weight_decay=ft.weight_decay,
        max_grad_norm=ft.max_grad_norm,
        bf16=settings.precision == "bf16",
        fp16=settings.precision == "fp16",
        use_cpu=settings.device == "cpu",
        activation_checkpointing=settings.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if settings.gradient_checkpointing else None,
        dataloader_num_workers=settings.dataloader_workers,
        packing=ft.packing,
        packing_strategy="bfd",  # whole examples only; position ids restart per example
        padding_free=settings.padding_free,
        # examples are already cut to max_seq_length; TRL refuses a max_length with padding-free unpacked batches
        max_length=ft.max_seq_length if ft.packing or not settings.padding_free else None,
        logging_steps=ft.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=ft.eval_steps,
        save_strategy="steps",
        save_steps=ft.checkpoint_steps,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=not sys.stderr.isatty(),  # a log gets one line per logging step, not a bar
    )


def live_callback(live):
    """A TrainerCallback sending train and validation loss to dvclive, stepped by the optimizer step, and
    keeping the curves so far in each checkpoint (DVC deletes the dvclive folder before a rerun)."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class LiveCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            live.step = state.global_step
            for key, name in (("loss", "train/loss"), ("eval_loss", "eval/loss"),
                              ("learning_rate", "train/lr"), ("grad_norm", "train/grad_norm")):
                if key in logs:
                    live.log_metric(name, float(logs[key]))

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
                resume.keep_curves(Path(live.dir), checkpoint)

    return LiveCallback()


LOG_FIELDS = (("loss", "loss", ".4f"), ("eval_loss", "val loss", ".4f"), ("learning_rate", "lr", ".2e"),
              ("grad_norm", "grad norm", ".3g"))


class LogLines:
    """Trainer log events as lines, ``step 10/78 (epoch 0.39): loss 6.4310, lr 2.95e-03, grad norm 0.615``: None
    for the end-of-training totals (the stage's summary line gives those) and for a repeat of the last line."""

    def __init__(self) -> None:
        self.last: str | None = None

    def __call__(self, state, logs: dict[str, Any]) -> str | None:
        parts = [f"{name} {float(logs[key]):{fmt}}" for key, name, fmt in LOG_FIELDS if key in logs]
        if not parts or "train_runtime" in logs:
            return None
        when = f"step {state.global_step}/{state.max_steps} (epoch {state.epoch or 0:.2f})" if state.max_steps \
            else "before training"
        line = f"{when}: {', '.join(parts)}"
        if line == self.last:
            return None
        self.last = line
        return line


def readable_progress(trainer) -> None:
    """Trainer logs as :class:`LogLines` instead of printed dicts: above the bar in a terminal, as log lines in a
    log (where there is no bar, ``disable_tqdm``)."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    lines = LogLines()

    class Progress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not (line := lines(state, logs or {})):
                return
            if self.training_bar is not None:
                self.training_bar.write(line)
            else:  # the validation before or after training
                log.info(line)

    class Lines(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and (line := lines(state, logs or {})):
                log.info(line)

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(Progress())
    if trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(Lines())


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


def use_fused_lm_head(ft: Finetune, settings: hardware.TrainSettings) -> bool:
    """``finetune.fused_lm_head``: auto means on with CUDA only."""
    return settings.device == "cuda" if ft.fused_lm_head == "auto" else ft.fused_lm_head


def run_identity(params: Params, base: str, data: dict[str, Path], settings: hardware.TrainSettings) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it (see :mod:`langlift.resume`)."""
    return {
        "base_model": modelref.fingerprint(base),
        "data": resume.data_hashes(data),
        "finetune": params.finetune.model_dump(mode="json", exclude={"matrix", "resume", "merge"}),
        "lr": params.lr,
        "epochs": params.epochs,
        "seed": params.seed,
        "language": params.language.code,
        "hardware": {k: getattr(settings, k) for k in ("device", "precision", "attn_implementation", "padding_free")},
        "processes": hardware.processes(),
        "code": resume.code_version(sys.modules[__name__], templates),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON file kept beside the checkpoints; None if missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _complete(checkpoint: Path) -> bool:
    """A checkpoint whose save finished: the trainer state and the curves are written last."""
    return (checkpoint / "trainer_state.json").exists() and (checkpoint / resume.CURVES).is_dir()


def _resume_point(ckpt_dir: Path, identity: dict[str, Any], enabled: bool, main: bool = True) -> str | None:
    """The newest complete checkpoint of this same run, else None; other runs' checkpoints are removed.

    Only the ``main`` process removes and stamps; the other ranks of a launch call this after it and only read.
    """
    stamp = ckpt_dir / "identity.json"
    if main and ckpt_dir.exists():
        if not enabled:
            log.warning("fresh start (finetune.resume false or --fresh): removing %s", ckpt_dir)
            shutil.rmtree(ckpt_dir)
        elif not resume.same_run(_read_json(stamp), identity, ckpt_dir):
            shutil.rmtree(ckpt_dir)
    if main:
        write_json(stamp, identity)
    found = {int(m[1]): p for p in ckpt_dir.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))}
    for step, path in list(found.items()):
        if not _complete(path):  # a save cut short by the crash
            if main:
                shutil.rmtree(path)
            del found[step]
    if not found:
        return None
    last = found[max(found)]
    log.info("resuming from %s", last)
    return str(last)


def verify_adapter(ft: Finetune, model, saved_dir: Path) -> dict[str, Any]:
    """Prove the adapter is the one params declare; return the saved ``adapter_config.json``.

    The reference is a LoraConfig built afresh from params (never the object handed to TRL, which peft
    keeps and saves: comparing with it could not fail). Compared with it: every field of the saved
    config, the modules the saved config targets and the modules peft actually wrapped (``all-linear``
    expanded by peft's own helper), and the rank, alpha, scaling, dropout and DoRA of each wrapped layer.
    A mismatch is a :class:`LangliftError` naming each differing field.
    """
    from peft import LoraConfig

    want = lora_config(ft)
    saved = LoraConfig.from_pretrained(str(saved_dir))
    base = model.get_base_model()
    layers = _lora_layers(base)
    declared = _targets(want, base)
    problems = [f"{k}: params {getattr(want, k)!r}, saved {getattr(saved, k)!r}"
                for k in ADAPTER_FIELDS if getattr(saved, k) != getattr(want, k)]
    problems += _module_diff(declared, _targets(saved, base), "saved")
    problems += _module_diff(declared, set(layers), "wrapped")
    problems += _layer_diffs(want, layers)
    if problems:
        raise LangliftError(f"{saved_dir}: the adapter differs from params.yaml finetune.lora: " + "; ".join(problems))
    return json.loads((saved_dir / "adapter_config.json").read_text(encoding="utf-8"))


def _lora_layers(base: torch.nn.Module) -> dict[str, Any]:
    """The LoRA layers peft put in ``base``, by module name."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer) and "default" in m.r}


def _targets(config, base: torch.nn.Module) -> set[str]:
    """Names of the modules of ``base`` that ``config`` targets, ``all-linear`` expanded the way peft does."""
    from peft.tuners.tuners_utils import BaseTunerLayer, _maybe_include_all_linear_layers, check_target_module_exists

    config = _maybe_include_all_linear_layers(copy.deepcopy(config), base)
    inside = {f"{name}.{sub}" for name, m in base.named_modules() if isinstance(m, BaseTunerLayer)
              for sub, _ in m.named_modules() if sub}  # lora_A, base_layer, ...: not modules of the model
    return {name for name, _ in base.named_modules()
            if name and name not in inside and check_target_module_exists(config, name)}


def _module_diff(declared: set[str], actual: set[str], what: str) -> list[str]:
    """One problem naming (up to 3 of) the modules ``actual`` has beyond ``declared`` and those it lacks."""
    extra, missing = sorted(actual - declared), sorted(declared - actual)
    parts = [f"{len(names)} {label} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
             for names, label in ((extra, f"{what} but not in params"), (missing, f"in params but not {what}"))
             if names]
    return [f"target_modules: {'; '.join(parts)}"] if parts else []


def _layer_diffs(want, layers: dict[str, Any]) -> list[str]:
    """One problem per LoRA setting that some wrapped layer does not have as params say."""
    scaling = want.lora_alpha / (math.sqrt(want.r) if want.use_rslora else want.r)
    expected = {"r": want.r, "lora_alpha": want.lora_alpha, "scaling": scaling, "lora_dropout": want.lora_dropout,
                "use_dora": want.use_dora}
    problems = []
    for key, value in expected.items():
        odd = sorted((name, got) for name, layer in layers.items()
                     if not math.isclose(got := _layer_value(layer, key), value))
        if odd:
            problems.append(f"{key}: params {value!r}, {len(odd)} wrapped modules differ ({odd[0][0]}: {odd[0][1]!r})")
    return problems


def _layer_value(layer, key: str) -> float:
    """A LoRA setting as one wrapped layer holds it (dropout read from its Dropout module)."""
    if key == "lora_dropout":
        dropout = layer.lora_dropout["default"]
        return dropout.p if isinstance(dropout, torch.nn.Dropout) else 0.0
    return getattr(layer, key)["default"]


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
            train_path: str | Path = "data/split/train.jsonl", val_path: str | Path = "data/split/val.jsonl",
            fresh: bool = False) -> Prepared:
    """Resolve the base model and template, encode the data, choose hardware settings, build the SFTTrainer.

    The trainer resumes the newest checkpoint of this same run (:func:`run_identity`) unless ``fresh`` or
    ``finetune.resume`` is false; the curves up to that checkpoint are put back in the dvclive folder.
    """
    from dvclive import Live
    from transformers import AutoTokenizer

    ft, method = params.finetune, params.finetune.method
    base_name = base_model or params.base_model
    modelref.check_declared(base_name, "base_model", ("models/local", "models/base"))
    base = resolve_base_model(base_name)

    tokenizer = AutoTokenizer.from_pretrained(base)
    template = templates.resolve(tokenizer, ft, params.language.code)
    tokenizer.chat_template = template.chat_template  # the saved tokenizer carries the template trained on
    train_ds, train_stats = encode_split(load_records(train_path), tokenizer, template, ft, "train")
    val_ds, val_stats = (encode_split(load_records(val_path), tokenizer, template, ft, "val")
                         if Path(val_path).exists() else (None, None))
    log.info("train: %d examples, %d tokens (%d in responses)", train_stats.kept, train_stats.tokens,
             train_stats.response_tokens)

    batch_tokens = ft.batch_size * ft.max_seq_length
    settings = hardware.choose(params.hardware.model_dump(),
                               needed_memory_bytes=estimate_memory(base, method, batch_tokens))
    hardware.apply(settings)
    if ft.packing and settings.attn_implementation != "flash_attention_2":
        log.info("packing with %s: transformers builds a block-diagonal mask from the restarting position ids, "
                 "so packed examples do not attend to each other", settings.attn_implementation)

    declared = lora_config(ft) if method != "full" else None
    if method == "lora-8bit" and declared.use_dora and settings.device == "cpu":
        raise LangliftError("params.yaml: finetune.lora.use_dora on an 8-bit base fails on CPU in bitsandbytes "
                            "(int8_mm_dequant without column stats); use method qlora or lora for DoRA here")
    model = load_model(base, method, settings)
    if declared is not None:
        check_targets(model, declared.target_modules, base_name)

    data = {"train": Path(train_path), **({"val": Path(val_path)} if val_ds is not None else {})}
    identity = run_identity(params, base, data, settings)
    args = sft_config(params, settings, paths.checkpoints, val_ds is not None)
    with args.main_process_first(local=False, desc="choosing the checkpoint to resume"):
        resume_from = _resume_point(paths.checkpoints, identity, ft.resume and not fresh, args.process_index == 0)
        if resume_from is not None and args.process_index == 0:
            resume.restore_curves(Path(resume_from), paths.live)  # DVC deleted them before rerunning the stage
    live = (Live(dir=str(paths.live), resume=resume_from is not None, save_dvc_exp=False, dvcyaml=None)
            if args.process_index == 0 else None)  # only the main process writes curves
    fused = use_fused_lm_head(ft, settings)
    log.info("loss: %s", "TRL's chunked fused LM head" if fused else "the model's own cross-entropy (full logits)")
    trainer = trainer_class(fused)(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                                   processing_class=tokenizer, peft_config=declared, callbacks=[live_callback(live)])
    readable_progress(trainer)
    if declared is not None and settings.precision == "fp32":
        for p in trainer.model.parameters():  # TRL stores QLoRA adapters in bf16; keep them fp32 where we compute in fp32
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    return Prepared(trainer, declared, template, settings, train_stats, val_stats, base_name, base, resume_from, live,
                    fused)


def summary(metrics: dict[str, Any], model: Path) -> str:
    """The stage's closing line: where the model went, how long it trained and what validation loss did."""
    loss = metrics["eval_loss"]
    if loss is not None:
        start = metrics["eval_loss_start"]
        loss_text = f", val loss {start:.4f} -> {loss:.4f}" if start is not None else f", val loss {loss:.4f}"
    else:
        loss_text = ", no validation set"
    speed = f", {metrics['tokens_per_second']:,.0f} tokens/s" if metrics["tokens_per_second"] else ""
    return f"{model} ({metrics['method']}): {metrics['steps']} steps, {metrics['epochs']:g} epochs{loss_text}{speed}"


def run(params: Params, *, base_model: str | None = None, name: str | None = None,
        train_path: str | Path = "data/split/train.jsonl", val_path: str | Path = "data/split/val.jsonl",
        paths: Paths | None = None, fresh: bool = False) -> tuple[dict[str, Any], Any]:
    """Fine-tune one base model; write the model folder, metrics and dvclive curves.

    An interrupted run of the same identity is resumed unless ``fresh`` (see :func:`prepare`).
    Returns the metrics and the trained model (a PeftModel for the adapter methods).
    """
    ft = params.finetune
    paths = paths or Paths.for_run(name)
    prep = prepare(params, base_model=base_model, paths=paths, train_path=train_path, val_path=val_path, fresh=fresh)
    trainer, declared, method = prep.trainer, prep.declared, ft.method
    trainable, total = count_params(trainer.model)
    log.info("%s: %d trainable of %d parameters (%.2f%%)", method, trainable, total, 100 * trainable / total)

    eval_start = _eval_start(trainer, paths.checkpoints / "start.json", prep.resume is not None)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=prep.resume)
    seconds = time.perf_counter() - start
    eval_end = trainer.evaluate()["eval_loss"] if trainer.eval_dataset is not None else None
    if prep.live is not None:
        prep.live.end()

    epochs_done = float(result.metrics.get("epoch", params.epochs))
    first, last = _first_last_loss(trainer)
    ts, vs = prep.train_stats, prep.val_stats
    metrics: dict[str, Any] = {
        "method": method,
        "base_model": prep.base_name,
        "base_model_fingerprint": modelref.fingerprint(prep.base),  # content hash, or hub id@commit
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
        "train_dropped_no_response": ts.dropped_no_response,
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
    trainer.model.config.use_cache = True  # saved so: generation wants the KV cache (training turned it off)
    trainer.save_model(str(staging))  # on every rank: FSDP and ZeRO-3 gather the weights collectively
    if not trainer.is_world_process_zero():
        _finish_launch(trainer)
        return metrics, trainer.model

    with atomic_path(paths.model) as tmp:
        shutil.copytree(staging, tmp)
        trainer.processing_class.save_pretrained(str(tmp))
        context = generation.context_length(trainer.model)
        generation.save(tmp, params.generation, trainer.processing_class, context)
        (tmp / "training_args.bin").unlink(missing_ok=True)
        adapter = verify_adapter(ft, trainer.model, tmp) if declared is not None else None
        if adapter is not None:
            metrics.update({f"adapter.{k}": adapter[k] for k in ADAPTER_KEYS})
            metrics["adapter.target_modules"] = ",".join(sorted({t.rsplit(".", 1)[-1] for t in adapter["target_modules"]}))
            metrics["adapter.modules"] = len(adapter["target_modules"])
        merged = ft.merge and declared is not None
        if merged:
            merge_adapter(prep.base, tmp, tmp / "merged", prep.settings.dtype)
            generation.save(tmp / "merged", params.generation, trainer.processing_class, context)
        write_json(tmp / INFO_FILE, {
            "base_model": prep.base_name,
            "base_model_fingerprint": metrics["base_model_fingerprint"],
            "method": method,
            "template": prep.template.as_dict(),
            "adapter_config": adapter,
            "merged": "merged" if merged else None,
            "max_seq_length": ft.max_seq_length,
            "generation_seed": params.generation.seed,  # the chat's sampling seed
            "language": params.language.model_dump(),
        })
        write_text(tmp / "README.md", modelcard.render(
            name=paths.model.name, base_model=prep.base_name, method=method, language=params.language.model_dump(),
            template=prep.template.as_dict(), train_params=_train_params(params), adapter_config=adapter,
            metrics={k: v for k, v in metrics.items() if v is not None}, hashes=modelcard.data_hashes(),
            licenses=modelcard.data_licenses()))
    write_json(paths.metrics, metrics)
    shutil.rmtree(paths.checkpoints, ignore_errors=True)
    _finish_launch(trainer)
    return metrics, trainer.model


def _finish_launch(trainer) -> None:
    """Every process waits for the main one's writes, then leaves the process group, as pretrain does. A process
    that exited early, its group still alive, could abort in gloo's teardown ("terminate called without an active
    exception"), and the launcher then stopped the main process before it had written the model."""
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


def _eval_start(trainer, kept: Path, resumed: bool) -> float | None:
    """Validation loss before training: measured on a fresh start and kept beside the checkpoints, read back
    on resume (the resumed run's model is no longer the untrained one)."""
    if resumed:
        return (_read_json(kept) or {}).get("eval_loss_start")
    loss = trainer.evaluate()["eval_loss"] if trainer.eval_dataset is not None else None
    _unprepare_after_eval(trainer)
    if trainer.is_world_process_zero():
        write_json(kept, {"eval_loss_start": loss})
    return loss


def _unprepare_after_eval(trainer) -> None:
    """Let ``trainer.train()`` wrap the model for DDP after an ``evaluate()`` before it.

    ``evaluate()`` before training prepares the model in evaluation mode (no DDP wrapper), and accelerate 1.15
    then marks it prepared, so ``train()`` skips the wrap: every process trained alone, without averaging
    gradients (measured: 2 processes left the 1-process curve at the first step). Nothing to undo in one process.
    """
    model = trainer.model
    prepared = getattr(model, "_is_accelerate_prepared", False)
    if trainer.args.world_size > 1 and trainer.model_wrapped is model and prepared:
        model._is_accelerate_prepared = False
        trainer.accelerator._models = [m for m in trainer.accelerator._models if m is not model]


def _first_last_loss(trainer) -> tuple[float | None, float | None]:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return (losses[0], losses[-1]) if losses else (None, None)


def _train_params(params: Params) -> dict[str, Any]:
    keep = params.finetune.model_dump(mode="json", exclude={"matrix", "templates"})
    return {"seed": params.seed, "lr": params.lr, "epochs": params.epochs, "finetune": keep}


def merged_model(base: str, adapter_dir: str | Path, dtype: Any = "auto") -> Any:
    """Base weights (unquantised) + the adapter in ``adapter_dir``, merged by peft's ``merge_and_unload``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def merge_adapter(base: str, adapter_dir: Path, out: Path, dtype: torch.dtype) -> None:
    """Base + adapter merged into a standalone model folder, with the adapter's tokenizer."""
    from transformers import AutoTokenizer

    merged_model(base, adapter_dir, dtype).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(out))
    log.info("merged the adapter into %s (%s)", out, dtype)
