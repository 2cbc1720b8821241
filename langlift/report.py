"""The pull-request report: the working tree against a git revision, in Markdown with PNG charts beside it.

``python -m langlift report --rev main --out reports/`` (``make report``) writes ``reports/report.md``:
`dvc metrics diff` grouped by stage (evaluate's as base / fine-tuned / delta), `dvc params diff`, the data
counts of each data stage, the loss curves and base-vs-fine-tuned bars (``loss_curves.png``,
``evaluate_bars.png``) and samples.md's answers side by side. The revision is read with ``git show`` and
DVC's own diff commands; nothing is checked out.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from langlift.errors import LangliftError
from langlift.io import write_text

# The data stages and the metrics file each writes (counts: the integer values in it).
DATA_METRICS = {"translate": "metrics/translate.json", "generate": "metrics/generate.json",
                "dedupe": "metrics/data.json", "split": "metrics/split.json"}
EVALUATE = "metrics/evaluate.json"
SAMPLES = "metrics/samples.md"
CURVES = ("metrics/pretrain/plots/metrics", "metrics/finetune/plots/metrics")
MODELS = ("base", "finetuned", "delta")
Metrics = dict[str, Any]


def _run(root: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a command in ``root``, capturing its output."""
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True)


def _dvc(root: Path, *args: str) -> str:
    """Output of a DVC command in ``root`` (the interpreter's own DVC); a failure is a LangliftError."""
    run = _run(root, sys.executable, "-m", "dvc", *args)
    if run.returncode != 0:
        raise LangliftError(f"dvc {' '.join(args)} failed in {root}: {(run.stderr or run.stdout).strip()}")
    return run.stdout


def resolve(root: Path, rev: str) -> str:
    """The commit a git revision names in ``root``."""
    run = _run(root, "git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if run.returncode != 0:
        raise LangliftError(f"--rev {rev}: no such git revision in {root}")
    return run.stdout.strip()


def read_at(root: Path, sha: str | None, path: str) -> str | None:
    """A git-tracked file's text at commit ``sha`` (None: the working tree); None if it is not there."""
    if sha is None:
        file = root / path
        return file.read_text(encoding="utf-8") if file.is_file() else None
    run = _run(root, "git", "show", f"{sha}:./{path}")  # ./: relative to root, even in a git subfolder
    return run.stdout if run.returncode == 0 else None


def _json_at(root: Path, sha: str | None, path: str) -> Metrics:
    text = read_at(root, sha, path)
    return json.loads(text) if text else {}


def flatten(obj: Any, prefix: str = "") -> Metrics:
    """Nested dicts as ``a.b.c`` keys."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    flat: Metrics = {}
    for key, value in obj.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(text: str) -> str:
    """Text fit for one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def metric_stages(root: Path) -> dict[str, str]:
    """Each metrics file of the pipeline and the stage that writes it (matrix entries included)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {out.def_path: stage.addressing for stage in repo.index.stages for out in stage.outs if out.metric}


def metrics_section(root: Path, sha: str, rev: str, label: str) -> list[str]:
    """`dvc metrics diff` by stage; an evaluate stage's metrics as base / fine-tuned / delta."""
    diff: dict[str, Metrics] = json.loads(_dvc(root, "metrics", "diff", sha, "--all", "--json") or "{}")
    stages = metric_stages(root)
    order = list(dict.fromkeys(stages.values()))
    lines = ["## Metrics", "", f"`dvc metrics diff {rev}`, by stage: {label} → working tree."]
    for path in sorted(diff, key=lambda p: (order.index(stages[p]) if p in stages else len(order), p)):
        entries = diff[path]
        if path.endswith("evaluate.json"):
            keys = [*flatten(_json_at(root, None, path)), *entries]  # the file's own order
            body = _evaluate_table({k: entries[k] for k in dict.fromkeys(keys) if k in entries})
        else:
            body = _changed_table(entries, label)
        lines += ["", f"### {stages.get(path, path)} (`{path}`)", "", *body]
    return lines


def _changed_table(entries: dict[str, Metrics], label: str) -> list[str]:
    """The metrics that changed: old, new and the difference."""
    changed = {k: v for k, v in entries.items() if v.get("old") != v.get("new")}
    rows = [[f"`{k}`", _fmt(v.get("old")), _fmt(v.get("new")), _fmt(v.get("diff"))] for k, v in changed.items()]
    return _table(["metric", label, "working tree", "change"], rows) if rows else ["No change."]


def _evaluate_table(entries: dict[str, Metrics]) -> list[str]:
    """One row per metric: base, fine-tuned and delta, each as old → new (bold when it changed)."""
    names = list(dict.fromkeys(k.split(".", 1)[1] for k in entries if k.split(".", 1)[0] in MODELS))
    rows = []
    for name in names:
        cells = []
        for model in MODELS:
            v = entries.get(f"{model}.{name}", {})
            arrow = f"{_fmt(v.get('old'))} → {_fmt(v.get('new'))}"
            cells.append(f"**{arrow}**" if v.get("old") != v.get("new") else arrow)
        rows.append([f"`{name}`", *cells])
    others = [f"`{k}` {_fmt(v.get('old'))} → {_fmt(v.get('new'))}" for k, v in entries.items()
              if k.split(".", 1)[0] not in MODELS and v.get("old") != v.get("new")]
    table = _table(["metric", "base", "fine-tuned", "delta (fine-tuned − base)"], rows)
    return table + (["", f"Also changed: {', '.join(others)}."] if others else [])


def params_section(root: Path, sha: str, rev: str) -> list[str]:
    """`dvc params diff` as DVC writes it in Markdown."""
    table = _dvc(root, "params", "diff", sha, "--md").strip()
    changed = len(table.splitlines()) > 2  # more than the header and its rule
    return ["## Params", "", f"`dvc params diff {rev}`:", "", table if changed else "No params changed."]


def counts_section(root: Path, sha: str, label: str) -> list[str]:
    """The integer counts of each data stage's metrics, at the revision and in the working tree."""
    rows = []
    for stage, path in DATA_METRICS.items():
        old, new = flatten(_json_at(root, sha, path)), flatten(_json_at(root, None, path))
        for key in dict.fromkeys([*old, *new]):
            a, b = old.get(key), new.get(key)
            if any(isinstance(v, int) and not isinstance(v, bool) for v in (a, b)):
                rows.append([stage, f"`{key}`", _fmt(a), _fmt(b)])
    changed = [r for r in rows if r[2] != r[3]]
    header = ["stage", "count", label, "working tree"]
    return ["## Data counts", "", *(_table(header, changed) if changed else ["No count changed."]), "",
            f"<details><summary>All {len(rows)} counts</summary>", "", *_table(header, rows), "", "</details>"]


def read_tsv(text: str | None) -> tuple[list[float], list[float]]:
    """A DVCLive plot file (``step<TAB>value``) as steps and values."""
    if not text:
        return [], []
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))[1:]
    return [float(r[0]) for r in rows if len(r) >= 2], [float(r[1]) for r in rows if len(r) >= 2]


def plot_curves(root: Path, sha: str, label: str, target: Path) -> bool:
    """Train and eval loss of pretrain and finetune, the revision dashed; False when there is none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(6 * len(CURVES), 4), squeeze=False)
    drawn = False
    for ax, folder in zip(axes[0], CURVES):
        for split, colour in (("train", "tab:blue"), ("eval", "tab:orange")):
            for rev, style, who in ((sha, "--", label), (None, "-", "working tree")):
                x, y = read_tsv(read_at(root, rev, f"{folder}/{split}/loss.tsv"))
                if x:
                    ax.plot(x, y, style, color=colour, alpha=0.6 if rev else 1.0, label=f"{split} loss, {who}")
                    drawn = True
        ax.set(title=folder.split("/")[1], xlabel="step", ylabel="loss")
        ax.legend(fontsize="small")
    if drawn:
        fig.tight_layout()
        fig.savefig(target, dpi=100)
    plt.close(fig)
    return drawn


def plot_evaluate(old: Metrics, new: Metrics, label: str, target: Path) -> bool:
    """One bar panel per evaluate metric: base and fine-tuned, at the revision and now; False if none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(k.split(".", 1)[1] for k in [*old, *new] if k.startswith("finetuned.")))
    if not names:
        return False
    cols = min(5, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    bars = [(f"base\n{label}", old, "base", "#b0b0b0"), (f"fine-tuned\n{label}", old, "finetuned", "#9ecae1"),
            ("base\nnow", new, "base", "#525252"), ("fine-tuned\nnow", new, "finetuned", "#08519c")]
    for ax, name in zip(axes.flat, names):
        values = [float(src.get(f"{model}.{name}") or 0.0) for _, src, model, _ in bars]
        ax.bar(range(len(bars)), values, color=[c for *_, c in bars])
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=6)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return True


def parse_samples(text: str | None) -> dict[str, dict[str, str]]:
    """samples.md as ``{prompt id: {"prompt": ..., model: answer, ...}}``."""
    samples: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    key = "prompt"
    for line in (text or "").splitlines():
        if m := re.fullmatch(r"## \d+\. `(.+)`", line):
            current, key = samples.setdefault(m.group(1), {}), "prompt"
        elif current is not None and (m := re.match(r"\*\*([^*]+)\*\*", line)):  # "**base** (notes)"
            key = m.group(1)
        elif current is not None and line.startswith(">"):
            part = line[2:] if line.startswith("> ") else line[1:]
            current[key] = f"{current[key]}\n{part}" if key in current else part
    return samples


def samples_section(root: Path, sha: str, label: str) -> list[str]:
    """Each review prompt, with every model's answer at the revision and in the working tree side by side."""
    old, new = parse_samples(read_at(root, sha, SAMPLES)), parse_samples(read_at(root, None, SAMPLES))
    lines = ["## Samples", "", f"`{SAMPLES}`: {label} beside the working tree."]
    for pid in dict.fromkeys([*new, *old]):
        a, b = old.get(pid, {}), new.get(pid, {})
        models = [m for m in dict.fromkeys([*b, *a]) if m != "prompt"]
        prompt = b.get("prompt") or a.get("prompt", "")
        lines += ["", f"### `{pid}`", "", *("> " + p for p in prompt.splitlines()), "",
                  *_table(["model", label, "working tree"],
                          [[m, _cell(a.get(m, "—")), _cell(b.get(m, "—"))] for m in models])]
    return lines if len(lines) > 3 else [*lines, "", "No samples."]


def write(rev: str = "main", out: str | Path = "reports", root: str | Path = ".") -> Path:
    """Write ``out/report.md`` and its PNG charts comparing the working tree of ``root`` with ``rev``."""
    root, out = Path(root).resolve(), Path(out)
    sha = resolve(root, rev)
    label = f"{rev} ({sha[:7]})" if not sha.startswith(rev) else sha[:7]
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# langlift: working tree against {label}", ""]
    lines += metrics_section(root, sha, rev, label) + [""] + params_section(root, sha, rev) + [""]
    lines += counts_section(root, sha, label) + ["", "## Charts", ""]
    if plot_curves(root, sha, label, out / "loss_curves.png"):
        lines += [f"Loss curves (dashed: {label}; solid: working tree):", "", "![loss curves](loss_curves.png)", ""]
    if plot_evaluate(_json_at(root, sha, EVALUATE), _json_at(root, None, EVALUATE), label, out / "evaluate_bars.png"):
        lines += ["Evaluate, base against fine-tuned:", "", "![evaluate](evaluate_bars.png)", ""]
    lines += samples_section(root, sha, label)
    target = out / "report.md"
    write_text(target, "\n".join(lines) + "\n")
    return target
