"""The model folder an export publishes: the adapter as trained or the merged model, the tokenizer with an
inference chat template, and a generation config whose EOS is the tokenizer's and whose KV cache is on.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from langlift.errors import LangliftError
from langlift.evaluate.models import read_manifest

log = logging.getLogger(__name__)

GENERATION_MARKERS = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def strip_generation_markers(template: str) -> str:
    """The chat template without TRL's training-only ``{% generation %}`` / ``{% endgeneration %}`` tags.

    Plain Jinja (llama.cpp, Ollama, TGI, vLLM) does not know them; the text they enclose is kept as is.
    """
    return GENERATION_MARKERS.sub("", template)


def is_adapter(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` holds a PEFT adapter (else a full model)."""
    return (Path(model_dir) / "adapter_config.json").is_file()


def base_of(model_dir: str | Path) -> str:
    """The base model the fine-tune started from, as langlift.json names it (local path or hub id)."""
    return read_manifest(model_dir)["base_model"]


def load_tokenizer(model_dir: str | Path) -> Any:
    """The fine-tuned model's tokenizer with the template it was trained with, generation markers removed."""
    from transformers import AutoTokenizer

    folder = Path(model_dir)
    tok_dir = folder if (folder / "tokenizer_config.json").is_file() else Path(base_of(folder))
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    trained = ((_manifest_or_empty(folder).get("template") or {}).get("chat_template")) or tok.chat_template
    if not trained:
        raise LangliftError(f"{model_dir}: the tokenizer has no chat template and langlift.json names none")
    tok.chat_template = strip_generation_markers(trained)
    return tok


def _manifest_or_empty(folder: Path) -> dict[str, Any]:
    """langlift.json when the folder has one (a finetune output), else nothing (any HF model folder)."""
    return read_manifest(folder) if (folder / "langlift.json").is_file() else {}


def load_merged(model_dir: str | Path, dtype: Any = "auto") -> Any:
    """The standalone model: base + adapter merged with peft's ``merge_and_unload``, or the full model."""
    from transformers import AutoModelForCausalLM

    from langlift.finetune import merged_model, resolve_base_model

    if not is_adapter(model_dir):
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    log.info("merging the adapter %s into its base %s", model_dir, base_of(model_dir))
    return merged_model(resolve_base_model(base_of(model_dir)), model_dir, dtype)


def checked_generation_config(gen: Any, tokenizer: Any, source: str) -> Any:
    """``gen`` (a GenerationConfig) with the KV cache on and the tokenizer's EOS among its EOS ids.

    A config that says otherwise is corrected in the export, with a warning naming ``source`` (the save path
    that wrote it is the one to fix).
    """
    if gen.use_cache is False:
        log.warning("%s: generation_config has use_cache false; the export turns the KV cache on", source)
        gen.use_cache = True
    eos = gen.eos_token_id
    eos_ids = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    if tokenizer.eos_token_id not in eos_ids:
        log.warning("%s: generation_config eos_token_id %s is not the tokenizer's EOS %d (%r); the export uses "
                    "the tokenizer's", source, eos, tokenizer.eos_token_id, tokenizer.eos_token)
        gen.eos_token_id = tokenizer.eos_token_id
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return gen


def generation_source(model_dir: str | Path) -> Path:
    """The folder whose ``generation_config.json`` an export copies: the fine-tuned model's (finetune writes
    params' ``generation`` settings there, beside an adapter too), else its base's for an adapter."""
    from langlift.finetune import resolve_base_model

    folder = Path(model_dir)
    if (folder / "generation_config.json").is_file() or not is_adapter(folder):
        return folder
    return Path(resolve_base_model(base_of(folder)))


def write_merged(model_dir: str | Path, out: str | Path) -> Path:
    """Save the merged (or full) model, its inference tokenizer and checked generation config into ``out``."""
    from transformers import GenerationConfig

    out = Path(out)
    tokenizer = load_tokenizer(model_dir)
    model = load_merged(model_dir)
    source = generation_source(model_dir)
    gen = GenerationConfig.from_pretrained(str(source)) if (source / "generation_config.json").is_file() else \
        model.generation_config
    model.generation_config = checked_generation_config(gen, tokenizer, f"{source}/generation_config.json")
    model.config.use_cache = True
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def write_adapter(model_dir: str | Path, out: str | Path, base_hub_id: str, base_revision: str | None) -> Path:
    """Copy the adapter as trained into ``out``, its config pointing at the base on the hub (not a local path),
    with the inference tokenizer and the base's generation config checked against it."""
    from transformers import GenerationConfig

    src, out = Path(model_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if not (src / name).is_file():
            raise LangliftError(f"{src / name}: not found; the adapter folder is incomplete")
        shutil.copy2(src / name, out / name)
    config = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_hub_id
    config["revision"] = base_revision
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer = load_tokenizer(src)
    tokenizer.save_pretrained(str(out))
    source = generation_source(src)
    gen = GenerationConfig.from_pretrained(str(source))
    checked_generation_config(gen, tokenizer, f"{source}/generation_config.json").save_pretrained(str(out))
    return out
