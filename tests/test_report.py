"""The pull-request report on two real experiments (main against an `lr` experiment applied in a clone),
its charts opened and checked, and the GitHub Actions workflow that posts it checked against the repository."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import LR_EXPERIMENT, REPO, clone_published, dvc, sh
from PIL import Image

from langlift import report as R

WORKFLOW = REPO / ".github" / "workflows" / "pr-report.yml"


@pytest.fixture(scope="module")
def report(published, tmp_path_factory) -> Path:
    """The report of a clone whose working tree holds the `lr` experiment, against main."""
    clone = clone_published(published, tmp_path_factory.mktemp("reviewer") / "langlift")
    dvc(clone, "exp", "pull", "origin", published["experiment"])
    dvc(clone, "exp", "apply", published["experiment"])
    out = clone.parent / "reports"
    sh(clone, sys.executable, "-m", "langlift", "report", "--out", str(out))  # --rev main: the default
    return out / "report.md"


def test_report_has_metrics_by_stage_params_and_counts(report):
    text = report.read_text(encoding="utf-8")
    assert "## Metrics" in text and "### finetune (`metrics/finetune.json`)" in text
    evaluate = text.split("### evaluate (`metrics/evaluate.json`)")[1].split("\n## ")[0]
    assert "| metric | base | fine-tuned | delta (fine-tuned − base) |" in evaluate
    ppl = next(line for line in evaluate.splitlines() if line.startswith("| `ppl` |"))
    base, finetuned = ppl.split(" | ")[1:3]
    assert "**" not in base and "**" in finetuned, "only the fine-tuned model changed with lr"
    params = text.split("## Params")[1].split("\n## ")[0]
    main_lr = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["lr"]
    assert re.search(rf"\| params\.yaml \| lr +\| {main_lr:g} +\| {LR_EXPERIMENT['lr']:g} ", params), params
    counts = text.split("## Data counts")[1].split("\n## ")[0]
    assert "| split | `instructions.train` |" in counts and "| dedupe | `corpus.kept` |" in counts


def test_samples_are_side_by_side(report):
    text = report.read_text(encoding="utf-8")
    samples = text.split("## Samples")[1]
    assert "### `az-01`" in samples
    assert re.search(r"\| model \| main \([0-9a-f]{7}\) \| working tree \|", samples)
    rows = [line for line in samples.splitlines() if line.startswith("| finetuned |")]
    assert len(rows) >= 8 and all(line.count(" | ") >= 2 for line in rows)


def test_charts_are_linked_and_show_curves_and_bars(report):
    text = report.read_text(encoding="utf-8")
    for name in ("loss_curves.png", "evaluate_bars.png"):
        assert f"]({name})" in text
        pixels = np.asarray(Image.open(report.parent / name).convert("RGB"), dtype=np.float32)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400
        assert pixels.std() > 20, f"{name} is blank"
        colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7].astype(int)}
        assert len(colours) > 50, f"{name}: only {len(colours)} colours"
    curves = np.asarray(Image.open(report.parent / "loss_curves.png").convert("RGB"), dtype=int)
    blue = (abs(curves[..., 0] - 31) < 30) & (abs(curves[..., 1] - 119) < 30) & (curves[..., 2] > 150)
    orange = (curves[..., 0] > 220) & (abs(curves[..., 1] - 127) < 30) & (curves[..., 2] < 60)
    assert blue.sum() > 500 and orange.sum() > 500, "train (blue) and eval (orange) loss lines are drawn"
    faded = (abs(curves[..., 0] - 121) < 20) & (abs(curves[..., 1] - 173) < 20) & (abs(curves[..., 2] - 210) < 20)
    assert faded.sum() > 200, "the revision's train loss is drawn too (dashed, faded blue)"
    bars = np.asarray(Image.open(report.parent / "evaluate_bars.png").convert("RGB"), dtype=int)
    for colour in ((176, 176, 176), (158, 202, 225), (82, 82, 82), (8, 81, 156)):  # base/fine-tuned, then/now
        assert (abs(bars - colour).sum(axis=-1) < 6).sum() > 300, f"no bars of colour {colour}"


def test_samples_md_is_parsed_per_prompt_and_model():
    text = "# x\n\n## 1. `p-1`\n\n> Line one\n> line two\n\n**base**\n\n> a | b\n\n**finetuned** (longest run: 1)\n\n> c\n"
    assert R.parse_samples(text) == {"p-1": {"prompt": "Line one\nline two", "base": "a | b", "finetuned": "c"}}


def test_an_unknown_revision_is_one_clear_error(tmp_path):
    from langlift.errors import LangliftError

    sh(tmp_path, "git", "init", "-q")
    with pytest.raises(LangliftError, match="--rev nope: no such git revision"):
        R.write("nope", tmp_path / "out", tmp_path)


def make_targets() -> set[str]:
    """The targets the Makefile defines (its variables expanded where a target uses one)."""
    text = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) :?= (.*)$", text, re.M))
    targets = set()
    for name in re.findall(r"^([^\s:#=][^:=]*):(?!=)", text, re.M):
        targets.update(re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), ""), name).split())
    return targets


def test_the_workflow_parses_and_calls_what_exists():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert "pull_request" in (workflow.get("on") or workflow.get(True))  # YAML 1.1 reads `on` as true
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    uses = {s["uses"].split("@")[0] for s in steps if "uses" in s}
    assert {"actions/checkout", "actions/setup-python", "actions/upload-artifact"} <= uses
    python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert str(python["with"]["python-version"]) == "3.11"
    targets, called = make_targets(), set()
    for step in steps:
        for line in step.get("run", "").splitlines():
            words = shlex.split(re.sub(r"\$\{\{[^}]*\}\}", "X", line))
            if words[0] == "make":
                wanted = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
                assert set(wanted) <= targets, f"{line}: not a Makefile target"
                called.update(wanted)
            elif words[0] in ("python", "python3"):
                target = REPO / (words[2].replace(".", "/") if words[1] == "-m" else words[1])
                assert target.exists() or target.with_suffix(".py").is_file(), f"{line}: no such module or script"
            else:
                assert words[:3] == ["gh", "pr", "comment"] and "--body-file" in words, line
                body = words[words.index("--body-file") + 1]
                assert body == "reports/report.md", "the report make report writes (REPORT_DIR=reports)"
    assert {"repro", "report"} <= called
    report_step = next(s for s in steps if "make report" in s.get("run", ""))
    assert "REPORT_DIR=reports" in report_step["run"]
