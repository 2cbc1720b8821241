"""The evaluate stage's work: score the base and the fine-tuned model the same way, then write the
metrics (with the size of each evaluation set and whether it is large enough to trust), the details
(signatures, what was loaded), every scored example, the plots and the samples report."""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from langlift import generation, hardware
from langlift.errors import LangliftError
from langlift.evaluate import inputs, judge, report, timing
from langlift.evaluate.harness import Examples, Harness
from langlift.evaluate.models import LoadedModel, load_base, load_finetuned, read_manifest, trained_template
from langlift.io import write_json, write_jsonl, write_text
from langlift.params import Evaluate, MatrixEntry, Params

log = logging.getLogger(__name__)


@dataclass
class Outputs:
    """Where one evaluation writes."""

    metrics: Path
    details: Path
    samples: Path
    plots: Path
    examples: Path  # every scored example, per model and task (report.write_examples)

    @classmethod
    def for_entry(cls, metrics_dir: str | Path, entry: str | None) -> Outputs:
        """The default outputs, or ``matrix/<entry>_*`` for one entry of ``finetune.matrix``."""
        d, p = (Path(metrics_dir), "") if entry is None else (Path(metrics_dir) / "matrix", f"{entry}_")
        return cls(d / f"{p}evaluate.json", d / f"{p}evaluate_details.json", d / f"{p}samples.md",
                   d / f"{p}evaluate_plots", d / f"{p}evaluate_outputs")


HEADLINE = ("ppl", "chrf_en_{lang}", "instr_chrf", "sib200_acc", "max_token_run")  # the summary line's metrics


def summary(flat: dict[str, Any], lang: str, metrics: Path) -> str:
    """The stage's closing line: base -> fine-tuned on the headline metrics that were measured, then the judge."""
    pairs = []
    for key in (k.format(lang=lang) for k in HEADLINE):
        if (before := flat.get(f"base.{key}")) is not None and (after := flat.get(f"finetuned.{key}")) is not None:
            pairs.append(f"{key} {before:.4g} -> {after:.4g}")
    if (rate := flat.get("judge.win_rate")) is not None:
        pairs.append(f"judge win rate {rate:.2f}")
    return f"base -> fine-tuned: {', '.join(pairs) or 'no paired metrics'} ({len(flat)} metrics in {metrics})"


def matrix_entry(params: Params, name: str) -> MatrixEntry:
    """The ``finetune.matrix`` entry called ``name``."""
    for entry in params.finetune.matrix:
        if entry.name == name:
            return entry
    raise LangliftError(f"params.yaml: finetune.matrix has no entry named {name!r}")


def evaluate(
    params: Params, finetuned: str, outputs: Outputs, expected_base: str | None = None
) -> dict[str, float]:
    """Evaluate the model at ``finetuned`` against the base it was fine-tuned from (its ``langlift.json``);
    write ``outputs``; return the flat metrics. A differing ``expected_base`` is logged."""
    cfg, language = params.evaluate, params.language
    lang = language.code
    sets = inputs.load_all(cfg, lang, language.flores)  # bad or empty inputs fail before any model is loaded
    manifest = read_manifest(finetuned)
    base = manifest["base_model"]
    if expected_base is not None and str(expected_base) != base:
        log.warning("%s was fine-tuned from %s, not %s as params say: comparing against %s",
                    finetuned, base, expected_base, base)
    settings = hardware.choose(params.hardware.model_dump())
    hardware.apply(settings)
    log.info("evaluating on %d documents, %d pairs per direction, %d instructions, %d prompts, %s SIB-200 sentences",
             len(sets.texts), len(sets.pairs), len(sets.instructions), len(sets.prompts),
             len(sets.sib200.test) if sets.sib200 else "no")
    sizes = report.sample_sizes(set_sizes(sets), cfg.min_examples.model_dump())
    warn_small(sizes, cfg.min_examples.model_dump())

    per_model: dict[str, dict[str, float]] = {}
    examples: dict[str, Examples] = {}
    answers: dict[str, list[str]] = {}
    models: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="langlift-evaluate-") as work:
        input_marker = str((manifest.get("template") or {}).get("input_marker") or "")
        harness = Harness(sets, language, cfg, Path(work), params.seed, input_marker)
        # both models are prompted through the template finetune trained with (a base may have none of its own)
        template = trained_template(manifest)
        answering = generation.load(finetuned)  # and answer the review prompts as the fine-tune does
        loaders = (("base", lambda: load_base(base, settings.device, settings.dtype, template, answering)),
                   ("finetuned", lambda: load_finetuned(finetuned, settings.device, settings.dtype)))
        for name, load in loaders:
            start = time.perf_counter()
            timing.reset_peak_memory(settings.device)
            loaded = load()
            per_model[name], examples[name], answers[name] = _score(harness, loaded, sets, cfg, settings.device,
                                                                    params.generation.seed)
            models[name] = loaded.info
            seconds[name] = round(time.perf_counter() - start, 1)
            log.info("%s: %s", name, ", ".join(f"{k}={v:.4g}" for k, v in per_model[name].items()))
            del loaded
            gc.collect()
            if settings.device.startswith("cuda"):
                torch.cuda.empty_cache()

    flat = {**report.flat_metrics(per_model), **sizes}
    report.write_examples(outputs.examples, examples)
    write_review(outputs.examples, sets.prompts, answers)
    if cfg.judge.enabled:
        items, by_model = judge_inputs(sets.prompts, answers, examples, cfg.judge.sets)
        flat.update(judge.run(cfg.judge, language, items, by_model, outputs.examples / "judge"))
    write_json(outputs.metrics, flat)
    write_json(outputs.details, {
        "language": lang,
        "models": models,
        "signatures": {"bleu": harness.signatures["bleu"], "chrf++": harness.signatures["chrf"]},
        "counts": {"documents": len(sets.texts), "pairs_per_direction": len(sets.pairs),
                   "instructions": len(sets.instructions), "prompts": len(sets.prompts)},
        "min_examples": cfg.min_examples.model_dump(),
        "sib200": sets.sib200 and {"folder": str(sets.sib200.folder), "labels": sets.sib200.labels,
                                   "shots": cfg.sib200_shots, "test_sentences": len(sets.sib200.test)},
        "lm_eval": {"version": version("lm_eval"), "tasks": harness.task_names()},
        "hardware": {"device": settings.device, "precision": settings.precision, "threads": settings.num_threads},
        "seconds": seconds,
        "judge": None if not cfg.judge.enabled else {"base_url": cfg.judge.base_url, "model": cfg.judge.model,
                                                     "sets": cfg.judge.sets, "modes": cfg.judge.modes,
                                                     "prompt_version": flat.get("judge.prompt_version")},
    })
    report.write_plots(outputs.plots, per_model)
    write_text(outputs.samples, report.samples_markdown(
        sets.prompts, answers, models, per_model, language.name, cfg.max_new_tokens,
        min(cfg.timing_prompts, len(sets.prompts)), language.direction,
    ))
    return flat


def write_review(folder: Path, prompts: list[dict[str, Any]], answers: dict[str, list[str]]) -> None:
    """``<model>/review.jsonl``: each model's answers to the review prompts, ``{id, prompt, answer}`` a line
    (what the review page shows native speakers)."""
    for model, texts in answers.items():
        write_jsonl(folder / model / "review.jsonl",
                    [{"id": p["id"], "prompt": p["prompt"], "answer": a} for p, a in zip(prompts, texts, strict=True)])


def judge_inputs(prompts: list[dict[str, Any]], answers: dict[str, list[str]], examples: dict[str, Examples],
                 sets: list[str]) -> tuple[list[judge.Item], dict[str, dict[str, str]]]:
    """The judge's items (review prompts, test instructions) and each model's answers keyed ``<set>/<id>``."""
    items: list[judge.Item] = []
    by_model: dict[str, dict[str, str]] = {m: {} for m in answers}
    if "prompts" in sets:
        items += [judge.Item("prompts", p["id"], p["prompt"]) for p in prompts]
        for m, texts in answers.items():
            by_model[m].update({f"prompts/{p['id']}": a for p, a in zip(prompts, texts, strict=True)})
    if "instructions" in sets:
        first = next(iter(examples.values()))["instructions"]
        items += [judge.Item("instructions", r["id"], r["source"]) for r in first]
        for m in answers:
            by_model[m].update({f"instructions/{r['id']}": r["hypothesis"] for r in examples[m]["instructions"]})
    return items, by_model


def set_sizes(sets: inputs.EvalSets) -> dict[str, int]:
    """How many examples each set of metrics is computed on (the keys of ``evaluate.min_examples``)."""
    sizes = {"perplexity": len(sets.texts), "translation": len(sets.pairs), "instructions": len(sets.instructions)}
    if sets.sib200:
        sizes["sib200"] = len(sets.sib200.test)
    return sizes


def warn_small(sizes: dict[str, int], minimum: dict[str, int]) -> None:
    """One warning per set of metrics computed on fewer examples than ``evaluate.min_examples`` asks."""
    for name, threshold in minimum.items():
        if sizes.get(f"reliable.{name}") == 0:
            log.warning("%s: only %d examples (evaluate.min_examples.%s: %d): its metrics are flagged "
                        "reliable.%s = 0 in the metrics; small differences between models are noise",
                        name, sizes[f"n.{name}"], name, threshold, name)


def _score(harness: Harness, loaded: LoadedModel, sets: inputs.EvalSets, cfg: Evaluate,
           device: str, seed: int) -> tuple[dict[str, float], Examples, list[str]]:
    """Every metric of one model, every scored example, and its answers to the review prompts."""
    scores = harness.perplexity(loaded)
    generated, examples = harness.generations(loaded)
    scores.update(generated)
    sib200, sib200_examples = harness.sib200(loaded)
    scores.update(sib200)
    examples.update(sib200_examples)
    scores.update(harness.listed(loaded))
    answers, timed = timing.generate_timed(loaded, sets.prompts, cfg.max_new_tokens, cfg.timing_prompts, seed)
    scores.update(timed)
    scores["peak_mem_mb"] = timing.peak_memory_mb(device)  # the whole evaluation of this model, load included
    return scores, examples, answers
