"""What the evaluate stage writes: flat metrics with deltas and sample sizes, per-metric plot data, every
scored example, and the samples report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langlift.io import atomic_path, write_json, write_jsonl


def flat_metrics(per_model: dict[str, dict[str, float]]) -> dict[str, float]:
    """``<model>.<metric>`` for each model, then ``delta.<metric>`` = finetuned - base where both exist.

    Flat keys keep ``dvc metrics diff`` to one row per number."""
    flat = {f"{model}.{key}": round(value, 6) for model, scores in per_model.items() for key, value in scores.items()}
    base, tuned = per_model.get("base", {}), per_model.get("finetuned", {})
    flat.update({f"delta.{key}": round(tuned[key] - base[key], 6) for key in base if key in tuned})
    return flat


def sample_sizes(counts: dict[str, int], minimum: dict[str, int]) -> dict[str, int]:
    """``n.<set>``: the examples a set of metrics was computed on; ``reliable.<set>``: 1 when that is at
    least ``minimum[<set>]``, else 0. Flat keys, so ``dvc metrics diff`` shows a set becoming too small."""
    sizes: dict[str, int] = {}
    for name, n in counts.items():
        sizes[f"n.{name}"] = n
        sizes[f"reliable.{name}"] = int(n >= minimum[name])
    return sizes


def write_examples(folder: str | Path, examples: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """Every scored example, per model and task: ``<model>/<task>.hyp.txt``, ``.ref.txt`` and ``.ids.txt``,
    line-aligned (what sacrebleu's command line reads), and ``<task>.jsonl`` with every field."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for model, tasks in examples.items():
            (tmp / model).mkdir()
            for task, rows in tasks.items():
                for suffix, key in (("hyp", "hypothesis"), ("ref", "reference"), ("ids", "id")):
                    text = "".join(f"{row[key]}\n" for row in rows)
                    (tmp / model / f"{task}.{suffix}.txt").write_text(text, encoding="utf-8", newline="\n")
                write_jsonl(tmp / model / f"{task}.jsonl", rows)


def write_plots(folder: str | Path, per_model: dict[str, dict[str, float]]) -> None:
    """One ``<metric>.json`` per metric, ``[{"model": ..., "value": ...}]``, for a ``bar_horizontal`` plot
    of base against fine-tuned (each metric keeps its own scale)."""
    keys = dict.fromkeys(k for scores in per_model.values() for k in scores)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for key in keys:
            rows = [{"model": m, "value": s[key]} for m, s in per_model.items() if key in s]
            write_json(tmp / f"{key}.json", rows)


def _quote(text: str, direction: str = "ltr") -> str:
    """Text as a markdown blockquote, every line kept; right-to-left text in a ``dir="rtl"`` block."""
    quoted = "\n".join("> " + line for line in (text or "(empty)").splitlines()) or "> (empty)"
    return f'<div dir="rtl">\n\n{quoted}\n\n</div>' if direction == "rtl" else quoted


def samples_markdown(
    prompts: list[dict[str, Any]], answers: dict[str, list[str]], models: dict[str, dict[str, Any]],
    timing: dict[str, dict[str, float]], language: str, max_new_tokens: int, timed_prompts: int,
    direction: str = "ltr",
) -> str:
    """Side-by-side answers of each model to the fixed prompts, for human review (``direction``: the language's),
    each with its longest run of one token (``longest_token_runs`` in the model's info)."""
    lines = [
        f"# Generation samples ({language})",
        "",
        "Each prompt as the user turn of the model's chat template, decoded as the fine-tuned model's "
        "generation_config.json says (the chat's decoding), with at most "
        f"{max_new_tokens} new tokens (evaluate.max_new_tokens).",
        f"Speed: the first {timed_prompts} prompts generated again, exactly {max_new_tokens} tokens each, after this warm-up pass.",
        "Longest run: the most times one token follows itself in an answer.",
        "",
        "| model | path | decoding | tokens/s | time to first token (s) | longest run |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in models.items():
        t = timing[name]
        lines.append(f"| {name} | `{info['path']}` | {info.get('decoding', '')} | {t['gen_tokens_per_s']:.1f} "
                     f"| {t['ttft_s']:.3f} | {t.get('max_token_run', '')} |")
    for i, p in enumerate(prompts):
        lines += ["", f"## {i + 1}. `{p['id']}`", "", _quote(p["prompt"], direction)]
        for name in answers:
            runs = models[name].get("longest_token_runs")
            run = f" (longest run: {runs[i]})" if runs else ""
            lines += ["", f"**{name}**{run}", "", _quote(answers[name][i], direction)]
    return "\n".join(lines) + "\n"
