"""The model card written beside a fine-tuned model: what it was trained from, on what, how, and how well.

The YAML front matter follows the Hugging Face model-card metadata, so the folder is ready for
``push_to_hub``; data hashes come from ``dvc.lock`` and licenses from the fetch manifest, when present.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

SPLIT_FILES = ("data/split/train.jsonl", "data/split/val.jsonl")


def data_hashes(lock_path: str | Path = "dvc.lock", files: tuple[str, ...] = SPLIT_FILES) -> dict[str, str]:
    """md5 of the training data as recorded in ``dvc.lock`` (outputs of any stage), by path."""
    path = Path(lock_path)
    if not path.exists():
        return {}
    lock = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    found: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") in files and "md5" in out:
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


def _card_license(licenses: dict[str, str]) -> str:
    """One license id for the front matter: the data's when there is exactly one, else ``other``."""
    ids = {v.lower().replace(" ", "-") for v in licenses.values()}
    return ids.pop() if len(ids) == 1 else "other"


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
    """The card's markdown, front matter first."""
    meta = {
        "language": [language.get("code", "")],
        "license": _card_license(licenses) if licenses else "other",
        "base_model": base_model,
        "library_name": "peft" if adapter_config else "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["langlift", "sft", method] + (["lora"] if adapter_config else []),
    }
    lang_name = language.get("name", language.get("code", ""))
    lines = [
        "---",
        yaml.safe_dump(meta, allow_unicode=True, sort_keys=False).strip(),
        "---",
        "",
        f"# {name}",
        "",
        f"An instruction-following model for {lang_name}, fine-tuned by the langlift pipeline from "
        f"`{base_model}` with **{method}**.",
        "",
        "## Use",
        "",
        "```bash",
        "python stages/chat.py --model <this folder>",
        "```",
        "",
        f"Prompt template ({template['source']}):",
        "",
        "```jinja",
        template["chat_template"],
        "```",
        "",
        "## Training data",
        "",
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
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"
