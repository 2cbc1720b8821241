"""The cards an export publishes: the full model card (with the evaluate stage's metrics as ``model-index``
results and the dvc.lock hashes of model and data) and a dataset card for the instruction data.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard

from langlift import modelcard as mc
from langlift.errors import LangliftError
from langlift.evaluate.models import read_manifest
from langlift.export.model import is_adapter, strip_generation_markers

SPEED = ("gen_tokens_per_s", "ttft_s", "peak_mem_mb")  # hardware-bound: in the card's table, not in model-index
METRIC_TYPES = {"ppl": "perplexity", "word_ppl": "perplexity", "byte_ppl": "perplexity", "instr_em": "exact_match",
                "instr_f1": "f1", "instr_chrf": "chrf", "sib200_acc": "accuracy"}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Project:
    """Where an export reads the pipeline's records, relative to the repository root."""

    lock: Path = Path("dvc.lock")
    manifest: Path = Path("data/raw/manifest.json")
    evaluate: Path = Path("metrics/evaluate.json")
    finetune: Path = Path("metrics/finetune.json")
    split_dir: Path = Path("data/split")
    instructions: Path = Path("data/clean/instructions.jsonl")
    base_out: str = "models/base"

    def lock_hashes(self, model_dir: str | Path) -> dict[str, str]:
        """dvc.lock md5 of the model, the pretrained base, the cleaned and split instruction data."""
        paths = (str(model_dir).rstrip("/"), self.base_out, str(self.instructions),
                 *(str(self.split_dir / f"{s}.jsonl") for s in SPLITS))
        return mc.data_hashes(self.lock, paths)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise LangliftError(f"{path}: not found; {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LangliftError(f"{path}: malformed JSON: {e.msg} (line {e.lineno})") from None


def _group(metric: str) -> str | None:
    """Which evaluation set a langlift metric (without its model prefix) is measured on; None: not a score."""
    if metric in SPEED:
        return None
    if metric in ("ppl", "word_ppl", "byte_ppl", "bits_per_byte"):
        return "perplexity"
    if metric.startswith(("bleu_", "chrf_")):
        return "translation"
    if metric.startswith("instr_"):
        return "instructions"
    if metric.startswith("sib200"):
        return "sib200"
    return "other"


def eval_results(evaluate: dict[str, Any], params: Any, hashes: dict[str, str]) -> list[EvalResult]:
    """The fine-tuned model's scores in ``metrics/evaluate.json`` as model-index results, one per metric.

    Each names its test set (a path of this repository with its dvc.lock md5 as revision, or SIB-200 on the
    hub) and how many examples it had; a set below ``evaluate.min_examples`` says so in its metric name.
    """
    ev, lang = params.evaluate, params.language
    sets = {
        "perplexity": ("text-generation", "held-out corpus perplexity", ev.corpus, f"{lang.name} held-out corpus"),
        "translation": ("translation", f"translation en<->{lang.code}", ev.parallel, f"en-{lang.code} parallel test"),
        "instructions": ("text-generation", "instruction following", ev.test, f"{lang.name} instruction test split"),
        "other": ("text-generation", "lm-eval tasks", "lm-eval", "lm-eval tasks"),
    }
    results = []
    for key, value in evaluate.items():
        model, _, metric = key.partition(".")
        group = _group(metric) if model == "finetuned" else None
        if group is None or not isinstance(value, (int, float)):
            continue
        n, reliable = evaluate.get(f"n.{group}"), evaluate.get(f"reliable.{group}", 1)
        note = f" (n={n}, below evaluate.min_examples: not reliable)" if not reliable else (f" (n={n})" if n else "")
        kind = METRIC_TYPES.get(metric) or (metric.split("_")[0] if group == "translation" else metric)
        common = {"metric_type": kind, "metric_value": value,
                  "metric_name": f"{metric}{note}"}
        if group == "sib200":
            results.append(EvalResult(task_type="text-classification", task_name="SIB-200 topic classification",
                                      dataset_type="Davlan/sib200", dataset_name="SIB-200", dataset_config=lang.flores,
                                      dataset_split="test", **common))
            continue
        task_type, task_name, path, name = sets[group]
        results.append(EvalResult(task_type=task_type, task_name=task_name, dataset_type=path, dataset_name=name,
                                  dataset_revision=hashes.get(path), **common))
    return results


def eval_table(evaluate: dict[str, Any]) -> list[str]:
    """Markdown: base, fine-tuned and delta of every metric evaluate measured."""
    metrics = unique_metrics(evaluate)
    if not metrics:
        return []
    lines = ["## Evaluation", "", "From `metrics/evaluate.json` (the evaluate stage), base model against this one:", "",
             "| metric | base | fine-tuned | delta |", "|---|---|---|---|"]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    for m in metrics:
        lines.append(f"| {m} | {fmt(evaluate.get('base.' + m))} | {fmt(evaluate.get('finetuned.' + m))} | "
                     f"{fmt(evaluate.get('delta.' + m))} |")
    unreliable = [k.split(".", 1)[1] for k, v in evaluate.items() if k.startswith("reliable.") and not v]
    if unreliable:
        lines += ["", f"Too few examples to rely on (below `evaluate.min_examples`): {', '.join(unreliable)}."]
    return lines + [""]


def unique_metrics(evaluate: dict[str, Any]) -> list[str]:
    """Metric names measured on the fine-tuned model, in file order."""
    return mc.unique(k.split(".", 1)[1] for k in evaluate if k.startswith("finetuned."))


def hub_datasets(manifest_path: Path) -> list[str]:
    """Hub dataset ids among the fetched sources (``hf:`` URIs)."""
    if not manifest_path.is_file():
        return []
    sources = json.loads(manifest_path.read_text(encoding="utf-8")).get("sources", [])
    return [s["uri"][3:].split("@")[0] for s in sources if str(s.get("uri", "")).startswith("hf:")]


def _train_params(lock: Path) -> dict[str, Any]:
    """The params the finetune stage ran with, as dvc.lock recorded them."""
    if not lock.is_file():
        return {"note": "no dvc.lock: the params of this run were not recorded"}
    stage = ((yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages") or {}).get("finetune") or {}
    return (stage.get("params") or {}).get("params.yaml") or {"note": "no finetune stage in dvc.lock"}


def model_card(model_dir: str | Path, params: Any, *, repo_id: str, merged: bool, dataset_repo_id: str | None = None,
               project: Project = Project()) -> ModelCard:
    """The full card of the model exported to ``repo_id``: metadata with model-index and dvc.lock hashes, then
    the text (how to load it, evaluation, provenance, training data and parameters)."""
    info = read_manifest(model_dir)
    evaluate = _read_json(project.evaluate, "run the evaluate stage first (`dvc repro evaluate`): the card "
                                            "publishes its metrics")
    train_metrics = _read_json(project.finetune, "run the finetune stage first") if project.finetune.is_file() else {}
    lock = project.lock_hashes(model_dir)
    base = mc.base_info(info["base_model"], info.get("base_model_fingerprint"), project.lock)
    licenses = mc.data_licenses(project.manifest)
    ev = params.evaluate
    eval_hashes = mc.data_hashes(project.lock, (ev.corpus, ev.parallel, ev.test))
    adapter = is_adapter(model_dir) and not merged
    language = info.get("language") or params.language.model_dump()
    data = mc.card_data(
        base=base, language=language, licenses=licenses,
        adapter=adapter, method=info["method"] + ("-merged" if merged else ""),
        datasets=[*hub_datasets(project.manifest), *([dataset_repo_id] if dataset_repo_id else [])],
        eval_results=eval_results(evaluate, params, eval_hashes), model_name=repo_id.split("/")[-1],
        lock=lock)
    hashes = {p: h for p, h in lock.items() if p.startswith("data/")}
    template = {**info["template"], "chat_template": strip_generation_markers(info["template"]["chat_template"])}
    text = mc.body(
        name=repo_id.split("/")[-1], base=base, method=info["method"], language=language, template=template,
        train_params=_train_params(project.lock), adapter_config=info.get("adapter_config"),
        metrics={k: v for k, v in train_metrics.items() if v is not None}, hashes=hashes, licenses=licenses,
        sections=[*eval_table(evaluate), *_lock_section(lock, merged)], usage=usage(repo_id, base, adapter))
    return mc.assemble(data, text)


def usage(repo_id: str, base: mc.Base, adapter: bool) -> list[str]:
    """Markdown: loading the uploaded model with transformers (and peft for an adapter) and chatting."""
    load = (["from peft import AutoPeftModelForCausalLM", "",
             f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")  # fetches the base {base.hub_id}']
            if adapter else ["from transformers import AutoModelForCausalLM", "",
                             f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")'])
    return ["```python", "from transformers import AutoTokenizer", *load,
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
            'messages = [{"role": "user", "content": "..."}]',
            "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
            "return_dict=True)",
            'out = model.generate(**ids, max_new_tokens=256)',
            'print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))', "```"]


def _lock_section(lock: dict[str, str], merged: bool) -> list[str]:
    """Markdown: the dvc.lock hashes that identify this model, and how it was exported."""
    lines = ["## Provenance", "",
             ("The adapter was merged into its base (peft `merge_and_unload`) for this upload. " if merged else "")
             + "`dvc.lock` hashes of the model and its data (check out the commit and `dvc pull` to get them):", ""]
    if lock:
        lines += ["| path | md5 |", "|---|---|", *[f"| `{p}` | `{h}` |" for p, h in sorted(lock.items())]]
    else:
        lines.append("No dvc.lock entries (the model was not built by `dvc repro`).")
    return lines + [""]


def _size_category(n: int) -> str:
    """The hub's size category for ``n`` records."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def dataset_card(params: Any, *, files: dict[str, Path], model_repo_id: str | None = None,
                 project: Project = Project()) -> DatasetCard:
    """The card of the instruction data (``files``: split name -> JSONL as uploaded under ``data/``).

    It says where the records came from (source, translation backend or self-instruct, counts per split), the
    license of each instruction source, and the dvc.lock hashes of the files.
    """
    lang = params.language
    rows = {split: _records(path) for split, path in files.items()}
    total = sum(len(r) for r in rows.values())
    licenses = mc.data_licenses(project.manifest)
    manifest = json.loads(project.manifest.read_text(encoding="utf-8")) if project.manifest.is_file() else {}
    kinds = {s["name"]: s.get("kind") for s in manifest.get("sources", []) if isinstance(s, dict)}
    sources = Counter(r.get("source", "unknown") for recs in rows.values() for r in recs)
    made_by = Counter(_origin(r) for recs in rows.values() for r in recs)
    used = {n: lic for n, lic in licenses.items() if n in sources or kinds.get(n) == "instructions"}
    data = DatasetCardData(
        language=[lang.code], license=mc.card_license(used) if used else "other",
        task_categories=["text-generation"], size_categories=[_size_category(total)],
        pretty_name=f"langlift {lang.name} instructions", source_datasets=hub_datasets(project.manifest) or None,
        tags=["langlift", "instruction-tuning", "sft"],
        configs=[{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}.jsonl"} for s in rows]}],
        data_licenses=dict(sorted(used.items())) or None,
        dvc_lock=mc.data_hashes(project.lock, [str(p) for p in files.values()]) or None,
    )
    model = f" The model trained on it: [{model_repo_id}](https://huggingface.co/{model_repo_id})." if model_repo_id else ""
    lines = [f"# langlift {lang.name} instructions", "",
             f"{total} instruction records in {lang.name} (`{lang.code}`), made by the langlift pipeline: English "
             "instruction data translated (or generated by self-instruct), cleaned, deduplicated against each other "
             f"and against the evaluation sets, and split.{model}",
             "", "| split | records |", "|---|---|", *[f"| {s} | {len(r)} |" for s, r in rows.items()],
             "", "## How the records were made", "", "| made by | records |", "|---|---|",
             *[f"| {k} | {v} |" for k, v in made_by.most_common()],
             "", "| source | records | license |", "|---|---|---|",
             *[f"| {k} | {v} | {licenses.get(k, 'unknown')} |" for k, v in sources.most_common()],
             "", "## Fields", "",
             "`id` (content hash), `instruction`, `input`, `output`, `lang`, `source`, `source_id` (the English record's "
             "id), and `translation` (backend, model, prompt version) for translated records.", ""]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _origin(record: dict[str, Any]) -> str:
    """How a record was made: ``translated (<backend>)``, ``generated (self-instruct)`` or ``original (<lang>)``."""
    if isinstance(record.get("translation"), dict):
        return f"translated ({record['translation'].get('backend', 'unknown')})"
    return "generated (self-instruct)" if record.get("source") == "generate" else f"original ({record.get('lang', '?')})"
