"""The model card: what a model was trained from, on what, how, and how well.

Built with ``huggingface_hub.ModelCard`` / ``ModelCardData``, so the metadata is the hub's (``language``,
``license``, ``base_model``, ``datasets``, ``tags``, ``model-index``). The finetune stage writes one beside the
model before evaluate has run (training metrics only); ``stages/export.py`` builds the full one, with the
evaluate stage's metrics as ``model-index`` results (:mod:`langlift.export.card`). Data and model hashes come
from ``dvc.lock``, licenses from the fetch manifest. ``base_model`` is a hub id (its commit in
``base_model_revision``); a base trained in this repository is named by path and dvc.lock hash in the text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

SPLIT_FILES = ("data/split/train.jsonl", "data/split/val.jsonl")
# license ids the hub knows, for the licenses fetch sources declare in params (others: "other" + the text)
HUB_LICENSES = {
    "apache-2.0", "mit", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-4.0", "cc-by-3.0", "cc-by-sa-3.0", "gpl-3.0", "lgpl-3.0", "bsd-3-clause", "bsd-2-clause", "odc-by",
    "odbl", "pddl", "openrail", "llama2", "llama3", "llama3.1", "gemma", "unlicense", "wtfpl",
}
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def data_hashes(lock_path: str | Path = "dvc.lock", files: Iterable[str] = SPLIT_FILES) -> dict[str, str]:
    """md5 of outputs as recorded in ``dvc.lock`` (outputs of any stage; a folder's ends in ``.dir``), by path."""
    path, wanted = Path(lock_path), set(files)
    if not path.exists():
        return {}
    lock = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    found: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") in wanted and "md5" in out:
                found[out["path"]] = out["md5"]
    return found


def data_licenses(manifest_path: str | Path = "data/raw/manifest.json") -> dict[str, str]:
    """License of each fetched source, by source name, from the fetch manifest."""
    path = Path(manifest_path)
    if not path.exists():
        return {}
    manifest = json.loads(path.read_text(encoding="utf-8"))
    sources = manifest.get("sources", manifest) if isinstance(manifest, dict) else manifest
    return {s["name"]: s.get("license", "unknown") for s in sources if isinstance(s, dict) and "name" in s}


def hub_license(name: str) -> str:
    """The hub's license id for a license as written in params (``CC BY-NC 4.0`` -> ``cc-by-nc-4.0``), or other."""
    spelled = re.sub(r"[\s_]+", "-", name.strip().lower())
    return spelled if spelled in HUB_LICENSES else "other"


def card_license(licenses: dict[str, str]) -> str:
    """One license id for the front matter: the data's when all sources share one the hub knows, else ``other``."""
    ids = {hub_license(v) for v in licenses.values()}
    return ids.pop() if len(ids) == 1 else "other"


PRETRAIN_OUT = "models/base"  # the pretrain stage's output: a base trained in this repository


@dataclass(frozen=True)
class Base:
    """The base model as the card names it: a hub id and commit, or a local model (trained here or not)."""

    ref: str
    hub_id: str | None = None
    revision: str | None = None
    lock_md5: str | None = None
    pretrained_here: bool = False
    init: str | None = None  # pretrain.init of a base trained here: continued pretraining of that model

    @property
    def described(self) -> str:
        """The base in one phrase of the card's text."""
        if self.hub_id:
            return f"[`{self.hub_id}`](https://huggingface.co/{self.hub_id})" + (
                f" at revision `{self.revision}`" if self.revision else "")
        lock = f" (dvc.lock md5 `{self.lock_md5}`)" if self.lock_md5 else " (no dvc.lock entry)"
        if not self.pretrained_here:
            return f"`{self.ref}`, a local model that is not on the hub{lock}"
        how = f"pretrained further from `{self.init}`" if self.init else "trained from scratch"
        return f"`{self.ref}`, a model {how} in this repository by the pretrain stage{lock}"


def _pretrain_init(lock_path: str | Path) -> str | None:
    """``pretrain.init`` as dvc.lock recorded it for the pretrain stage (None: from scratch or no record)."""
    path = Path(lock_path)
    if not path.exists():
        return None
    stage = ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages") or {}).get("pretrain") or {}
    params = (stage.get("params") or {}).get("params.yaml") or {}
    return (params.get("pretrain") or {}).get("init") or params.get("pretrain.init")


def base_info(ref: str, fingerprint: str | None = None, lock_path: str | Path = "dvc.lock") -> Base:
    """:class:`Base` for a base model reference and its fingerprint (``hub:id@sha`` or ``sha256:…``)."""
    key = ref.rstrip("/")
    here = Path(key) == Path(PRETRAIN_OUT)
    local = here or Path(ref).exists() or Path(key).parts[0] == "models"  # models/…: this repository's, pulled or not
    if not local and _HUB_ID.fullmatch(ref):
        revision = fingerprint.rsplit("@", 1)[1] if fingerprint and fingerprint.startswith("hub:") else None
        return Base(ref, hub_id=ref, revision=revision)
    return Base(ref, lock_md5=data_hashes(lock_path, (key,)).get(key), pretrained_here=here,
                init=_pretrain_init(lock_path) if here else None)


def unique(items: Iterable[str]) -> list[str]:
    """``items`` without repeats, first occurrence kept (tags, datasets)."""
    return list(dict.fromkeys(i for i in items if i))


def card_data(*, base: Base, language: dict[str, Any], licenses: dict[str, str], adapter: bool, method: str,
              datasets: Sequence[str] = (), eval_results: Sequence[EvalResult] = (), model_name: str | None = None,
              extra_tags: Sequence[str] = (), lock: dict[str, str] | None = None) -> ModelCardData:
    """The card's metadata (YAML front matter)."""
    license_id = card_license(licenses) if licenses else "other"
    extra: dict[str, Any] = {}
    if license_id == "other":
        extra["license_name"] = "see-data-licenses" if licenses else "unknown"
    if base.revision:
        extra["base_model_revision"] = base.revision
    if licenses:
        extra["data_licenses"] = dict(sorted(licenses.items()))
    if lock:
        extra["dvc_lock"] = dict(sorted(lock.items()))
    return ModelCardData(
        language=[language.get("code", "")],
        license=license_id,
        base_model=base.hub_id,
        datasets=unique(datasets) or None,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=unique(["langlift", "sft", method, *(["lora"] if adapter else []), *extra_tags]),
        model_name=model_name,
        eval_results=list(eval_results) or None,
        **extra,
    )


def body(*, name: str, base: Base, method: str, language: dict[str, Any], template: dict[str, str],
         train_params: dict[str, Any], adapter_config: dict[str, Any] | None, metrics: dict[str, Any],
         hashes: dict[str, str], licenses: dict[str, str], sections: Sequence[str] = (),
         usage: Sequence[str] = ()) -> str:
    """The card's markdown text; ``usage`` replaces the chat-command example, ``sections`` (markdown lines) go
    before the training details."""
    lang_name = language.get("name", language.get("code", ""))
    lines = [
        f"# {name}", "",
        f"An instruction-following model for {lang_name}, fine-tuned by the langlift pipeline from "
        f"{base.described} with **{method}**.", "",
        "## Use", "", *(usage or ["```bash", "python stages/chat.py --model <this folder>", "```"]), "",
        f"Prompt template ({template['source']}):", "", "```jinja", template["chat_template"], "```", "",
        *sections,
        "## Training data", "",
    ]
    if hashes:
        lines += ["| file | md5 (dvc.lock) |", "|---|---|"] + [f"| `{p}` | `{h}` |" for p, h in sorted(hashes.items())]
    else:
        lines.append("No `dvc.lock` entry for the training data (run through `dvc repro` to record its hashes).")
    lines += ["", "Licenses of the sources:", ""]
    lines += [f"- {n}: {lic}" for n, lic in sorted(licenses.items())] or ["- unknown (no fetch manifest)"]
    lines += ["", "## Training parameters", "", "```yaml", yaml.safe_dump(train_params, sort_keys=False).strip(), "```"]
    if adapter_config:
        lines += ["", "## Adapter (as applied and saved)", "", "```json", json.dumps(adapter_config, indent=2), "```"]
    lines += ["", "## Training metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"


def assemble(data: ModelCardData, text: str) -> ModelCard:
    """A ModelCard from metadata and markdown."""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def render(
    *,
    name: str,
    base_model: str,
    method: str,
    language: dict[str, Any],
    template: dict[str, str],
    train_params: dict[str, Any],
    adapter_config: dict[str, Any] | None,
    metrics: dict[str, Any],
    hashes: dict[str, str],
    licenses: dict[str, str],
) -> str:
    """The card finetune writes beside the model (no evaluation yet), as markdown with front matter."""
    base = base_info(base_model, metrics.get("base_model_fingerprint"))
    data = card_data(base=base, language=language, licenses=licenses, adapter=adapter_config is not None,
                     method=method)
    return str(assemble(data, body(name=name, base=base, method=method, language=language, template=template,
                                   train_params=train_params, adapter_config=adapter_config, metrics=metrics,
                                   hashes=hashes, licenses=licenses)))
