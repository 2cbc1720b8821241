"""Loading the models to compare: a base model (HF directory or hub id) and a fine-tuned one
(a PEFT adapter over its base, or a full model directory, described by ``langlift.json``).
The one loader of fine-tuned models: ``stages/chat.py`` uses it too."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from langlift import generation
from langlift.errors import LangliftError

log = logging.getLogger(__name__)

MANIFEST = "langlift.json"  # written by the finetune stage beside the adapter or model


@dataclass
class LoadedModel:
    """A model ready to evaluate, its tokenizer, what was loaded (for the details file), and how it answers
    (its saved decoding settings, kept apart from ``model.generation_config``: see :func:`generation.split_off`)."""

    model: Any  # a transformers PreTrainedModel or a peft PeftModel wrapping one
    tokenizer: Any
    info: dict[str, Any] = field(default_factory=dict)
    generation: Any = None  # a transformers GenerationConfig


def _from_pretrained(loader: Any, path: str, what: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        hint = "run the stage that writes it" if Path(path).parts[:1] == ("models",) else "check the path or hub id"
        raise LangliftError(f"{path}: cannot load {what} ({type(e).__name__}: {str(e).splitlines()[0]}); {hint}") from None


def _tokenizer(path: str, chat_template: str | None = None) -> Any:
    """The tokenizer at ``path``, prompting through ``chat_template`` when given, else through its own."""
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, path, "the tokenizer")
    if chat_template:
        tok.chat_template = chat_template
    if not tok.chat_template:
        raise LangliftError(
            f"{path}: the tokenizer has no chat template; evaluation prompts every model through its chat "
            "template (the pretrain and finetune stages write one; for a hub model, set tokenizer.chat_template)"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _causal_lm(path: str, device: str, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    model = _from_pretrained(AutoModelForCausalLM, path, "the model", dtype=dtype)
    return model.to(device).eval()


def _info(model: Any, **extra: Any) -> dict[str, Any]:
    return {**extra, "parameters": sum(p.numel() for p in model.parameters()), "dtype": str(next(model.parameters()).dtype)}


def load_base(path: str, device: str, dtype: torch.dtype, template: dict[str, str] | None = None,
              answers: Any = None) -> LoadedModel:
    """A causal LM and its tokenizer from one directory or hub id, prompted through ``template`` (a fine-tune's
    :func:`trained_template`) when given, so a base without a chat template is prompted as its fine-tune, and
    answering as ``answers`` (a fine-tune's GenerationConfig) when given, else as its own generation config."""
    log.info("loading base model %s (%s, %s)", path, device, dtype)
    tok = _tokenizer(path, (template or {}).get("chat_template"))
    model = _causal_lm(path, device, dtype)
    own = generation.split_off(model)
    if answers is not None:
        own = _with_tokens(answers, tok)
    return LoadedModel(model, tok, _info(model, path=path, kind="base", template=_source(template)), own)


def _with_tokens(config: Any, tok: Any) -> Any:
    """A copy of GenerationConfig ``config`` ending and padding as tokenizer ``tok`` does."""
    config = copy.deepcopy(config)
    config.update(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    return config


def _source(template: dict[str, str] | None) -> str:
    """Where the chat template the model is prompted through came from, for the details file."""
    return template["source"] if template else "tokenizer"


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The fine-tuned model's ``langlift.json``: at least ``base_model`` and ``method``."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise LangliftError(f"{file}: not found; is {path} a finetune output? (run `dvc repro finetune`)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LangliftError(f"{file}: malformed JSON: {e.msg} (line {e.lineno})") from None
    for key in ("base_model", "method"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise LangliftError(f"{file}: field '{key}': missing or empty")
    return manifest


def trained_template(manifest: dict[str, Any]) -> dict[str, str] | None:
    """The chat template finetune trained with (``template`` in ``langlift.json``: source, chat_template),
    or None for a manifest that predates it (the tokenizers' own templates are used then)."""
    template = manifest.get("template")
    if not isinstance(template, dict) or not template.get("chat_template"):
        return None
    return {"source": str(template.get("source") or "langlift.json"), "chat_template": str(template["chat_template"])}


def load_finetuned(path: str, device: str, dtype: torch.dtype) -> LoadedModel:
    """Base plus adapter (PEFT, not merged: the weights as finetune saved them) or a full model, prompted
    through the chat template it was trained with."""
    manifest = read_manifest(path)
    folder = Path(path)
    tok_dir = path if (folder / "tokenizer_config.json").is_file() else manifest["base_model"]
    template = trained_template(manifest)
    tok = _tokenizer(tok_dir, (template or {}).get("chat_template"))
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        log.info("loading %s adapter %s over %s (%s, %s)", manifest["method"], path, manifest["base_model"], device, dtype)
        base = _causal_lm(manifest["base_model"], device, dtype)
        answers = generation.split_off(base)
        model = PeftModel.from_pretrained(base, path).to(device).eval()
    elif (folder / "config.json").is_file():
        log.info("loading fully fine-tuned model %s (%s, %s)", path, device, dtype)
        model = _causal_lm(path, device, dtype)
        answers = generation.split_off(model)
    else:
        raise LangliftError(f"{path}: neither adapter_config.json nor config.json; not a model or adapter directory")
    info = _info(model, path=path, kind="finetuned", method=manifest["method"], base_model=manifest["base_model"],
                 template=_source(template))
    saved = generation.load(folder)  # finetune writes it; an older folder answers as its base does
    return LoadedModel(model, tok, info, saved if saved is not None else answers)
