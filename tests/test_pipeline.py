"""The DVC pipeline end to end, in a temporary copy of the repository: `dvc repro`, `dvc status`,
`dvc exp run -S`, `dvc metrics show`, exactly as users run them."""

from __future__ import annotations

import json
import re

import pytest
from conftest import COPIED, copy_repository, dvc, ran, sh  # noqa: F401
# (test_dvc_graph, test_recipes and test_resume import the helpers from here)

# `workspace` (conftest.py, session-scoped): a git+DVC copy of the repository on which `dvc repro` ran once.


def test_repro_runs_every_stage_and_leaves_status_clean(workspace):
    first = workspace.joinpath(".first_repro.log").read_text()
    assert {"fetch", "translate", "generate", "dedupe", "split", "pretrain", "finetune", "evaluate"} <= ran(first)
    for path in ["data/raw/manifest.json", "data/translated/instructions.jsonl", "data/clean/instructions.jsonl",
                 "data/split/train.jsonl", "data/split/corpus_val.jsonl", "data/split/parallel_test.jsonl",
                 "models/base/config.json", "models/finetuned/langlift.json", "metrics/samples.md"]:
        assert (workspace / path).stat().st_size > 0, path
    assert "up to date" in dvc(workspace, "status")
    assert ran(dvc(workspace, "repro")) == set(), "a second repro must do nothing"


def test_the_repro_log_is_each_stages_story_not_library_noise(workspace):
    """Captured as in CI or a piped `dvc repro` (no terminal): every stage ends with its summary line; the
    Trainer's logs are lines, not dicts; libraries' housekeeping, short progress bars and warnings stay out."""
    log = workspace.joinpath(".first_repro.log").read_text()
    for stage in ran(log):
        assert re.search(rf"^{stage}: .+ \(\d[\dhms. ]*\)$", log, re.M), f"no summary line for {stage}"
    assert re.search(r"^pretrain: models/base: 300 steps, val loss \d\.\d{4} \(perplexity [\d.]+\)", log, re.M)
    assert re.search(r"langlift.finetune: step \d+/\d+ \(epoch \d\.\d\d\): loss \d\.\d{4}, lr ", log)
    for noise in ("{'loss'", "{'eval_loss'", "Removed shared tensor", "Running loglikelihood requests",
                  "Building contexts", "Warning:", "kwarg is not of type", "already-initialized model"):
        assert noise not in log, noise
    assert not re.search(r"^\d\d:\d\d:\d\d (lm_eval|accelerate)\.", log, re.M)


def test_no_id_in_two_splits(workspace):
    seen: dict[str, str] = {}
    for name in ("train", "val", "test"):
        for line in (workspace / f"data/split/{name}.jsonl").read_text().splitlines():
            rec_id = json.loads(line)["id"]
            assert seen.setdefault(rec_id, name) == name
    split = json.loads((workspace / "metrics/split.json").read_text())
    assert split["instructions"]["train_az"] > 0 and split["instructions"]["test"] > 0


def test_metrics_and_plots_show_read_every_stage(workspace):
    shown = json.loads(dvc(workspace, "metrics", "show", "--json"))
    files = next(iter(shown.values()))["data"]
    for name in ("data", "split", "translate", "pretrain", "finetune", "evaluate"):
        assert f"metrics/{name}.json" in files, name
    evaluate = files["metrics/evaluate.json"]["data"]
    assert {"base.ppl", "finetuned.ppl", "delta.ppl", "finetuned.bleu_en_az", "finetuned.instr_f1"} <= set(evaluate)
    plots = json.loads(dvc(workspace, "plots", "show", "--json"))
    assert not plots.get("errors"), plots.get("errors")
    names = set(plots["data"])
    for needle in ("pretrain/plots/metrics/train/loss", "finetune/plots/metrics/eval/loss", "evaluate_plots/ppl"):
        assert any(needle in n for n in names), needle


def test_a_dedupe_param_reruns_only_what_it_changes(workspace):
    out = dvc(workspace, "exp", "run", "-S", "dedupe.removed_sample=5")
    assert ran(out) == {"dedupe"}, "only removed.jsonl changes, so nothing downstream may rerun"


def test_lr_experiment_reruns_finetune_and_evaluate_and_diffs(workspace):
    out = dvc(workspace, "exp", "run", "-S", "lr=1e-4")
    assert ran(out) - {"review"} == {"finetune", "evaluate"}  # review folds evaluate's outputs, when declared
    diff = json.loads(dvc(workspace, "metrics", "diff", "--json"))
    changed = set(diff.get("metrics/evaluate.json", {})) | set(diff.get("metrics/finetune.json", {}))
    assert any(key.startswith("finetuned.") for key in changed), diff


def test_editing_another_languages_files_reruns_nothing(workspace):
    memory = workspace / "languages" / "uz" / "translation_memory.jsonl"
    before = memory.read_text(encoding="utf-8")
    try:
        memory.write_text(before + json.dumps({"en": "Hello.", "uz": "Salom.", "origin": "llm"}) + "\n", encoding="utf-8")
        assert "up to date" in dvc(workspace, "status")
    finally:
        memory.write_text(before, encoding="utf-8")


@pytest.mark.parametrize("code", ["he", "uz", "rw"])
def test_one_key_runs_the_whole_pipeline_for_another_language(workspace, code):
    """`dvc exp run -S language=<code>` and nothing else: every stage reruns on that language's shipped data."""
    out = dvc(workspace, "exp", "run", "-S", f"language={code}")
    assert {"fetch", "translate", "dedupe", "split", "pretrain", "finetune", "evaluate"} <= ran(out)
    split = json.loads((workspace / "metrics/split.json").read_text())["instructions"]
    assert split["target_lang"] == code and split[f"train_{code}"] > 0 and split[f"test_{code}"] >= 8
    details = json.loads((workspace / "metrics/evaluate_details.json").read_text())
    assert details["language"] == code
    evaluate = json.loads((workspace / "metrics/evaluate.json").read_text())
    assert {f"finetuned.bleu_en_{code}", f"finetuned.chrf_{code}_en", "finetuned.ppl"} <= set(evaluate)
    diff = json.loads(dvc(workspace, "metrics", "diff", "--json"))
    assert diff.get("metrics/data.json"), "dvc metrics diff shows the language's data metrics"
    assert "up to date" in dvc(workspace, "status")
