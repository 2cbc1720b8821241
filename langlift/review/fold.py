"""Fold every reviewer's judgements into ``metrics/human.json`` and their corrections into training records.

Only judgements of the answers evaluate wrote last count (a pair's key hashes its prompt and both answers);
judgements of older answers are counted as ``stale``. Corrections are kept whatever the model version: a
reviewer's answer to a prompt is good training data either way.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from langlift import records
from langlift.errors import DataError
from langlift.io import read_jsonl, write_json, write_jsonl
from langlift.review.pairs import DEFAULT_GROUP, MODELS, Pair, load_pairs, output_dirs
from langlift.review.stats import cohen_kappa, fleiss_kappa, pairwise_agreement
from langlift.stats import wilson
from langlift.review.store import BOTH_BAD, latest, read_log, reviewer_logs

TIE = "tie"
JUDGE_FILE = Path("judge") / "pairwise.jsonl"  # inside an evaluation's outputs folder
SOURCE = "review"  # the `source` of correction records


def read_judge(path: Path) -> dict[str, str]:
    """The LLM judge's verdict per prompt id on base against fine-tuned: a model name or ``tie``.

    Lines are ``{id, models: [a, b], verdict: a | b | "tie"}``; an id judged several times (both orders)
    gets its common verdict, or ``tie`` when the verdicts differ. Other model pairs are ignored.
    """
    seen: dict[str, set[str]] = defaultdict(set)
    for line, rec in read_jsonl(path):
        models = rec.get("models")
        if not isinstance(rec.get("id"), str):
            raise DataError(path, line, "id", "missing or not a string")
        if not (isinstance(models, list) and len(models) == 2 and all(isinstance(m, str) for m in models)):
            raise DataError(path, line, "models", "expected a list of two model names")
        if rec.get("verdict") not in (*models, TIE):
            raise DataError(path, line, "verdict", f"expected one of {[*models, TIE]}, got {rec.get('verdict')!r}")
        if sorted(models) == sorted(MODELS):
            seen[rec["id"]].add(rec["verdict"])
    return {id_: verdicts.pop() if len(verdicts) == 1 else TIE for id_, verdicts in seen.items()}


def _win_rate(choices: list[str]) -> dict[str, float]:
    """Fine-tuned against base: wins, losses, both bad (half a win each) and the win rate with its interval."""
    wins, losses = choices.count("finetuned"), choices.count("base")
    both_bad = len(choices) - wins - losses
    out: dict[str, float] = {"n": len(choices), "wins": wins, "losses": losses, "both_bad": both_bad}
    if choices:
        score = wins + both_bad / 2
        low, high = wilson(score, len(choices))
        out.update(win_rate=round(score / len(choices), 4), win_rate_low=round(low, 4), win_rate_high=round(high, 4))
    return out


def _agreement(by_item: dict[str, dict[str, str]]) -> dict[str, float]:
    """Agreement between reviewers on the items two or more judged: raw, and Cohen's kappa for exactly two
    reviewers, else Fleiss' kappa."""
    shared = {key: votes for key, votes in by_item.items() if len(votes) >= 2}
    out: dict[str, float] = {"items": len(shared)}
    if not shared:
        return out
    out["raw"] = round(pairwise_agreement([list(v.values()) for v in shared.values()]), 4)
    raters = sorted({r for votes in shared.values() for r in votes})
    if len(raters) == 2:
        kappa = cohen_kappa([v[raters[0]] for v in shared.values()], [v[raters[1]] for v in shared.values()])
        name = "cohen_kappa"
    else:
        kappa, name = fleiss_kappa([list(v.values()) for v in shared.values()]), "fleiss_kappa"
    if kappa is not None:
        out[name] = round(kappa, 4)
    return out


def _judge_agreement(judged: list[dict[str, Any]], verdicts: dict[str, str]) -> dict[str, float]:
    """How often a reviewer's choice matches the LLM judge's verdict (``both_bad`` matches ``tie``)."""
    both = [j for j in judged if j["id"] in verdicts]
    compared = [(j["choice"], verdicts[j["id"]]) for j in both]
    out: dict[str, float] = {"judgements": len(compared), "items": len({j["id"] for j in both})}
    if compared:
        same = sum((TIE if human == BOTH_BAD else human) == judge for human, judge in compared)
        out["agreement"] = round(same / len(compared), 4)
    return out


def group_metrics(judged: list[dict[str, Any]], verdicts: dict[str, str] | None) -> dict[str, Any]:
    """The metrics of one evaluation's current judgements."""
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for j in judged:
        by_item[j["key"]][j["reviewer"]] = j["choice"]
    out: dict[str, Any] = {**_win_rate([j["choice"] for j in judged]), "agreement": _agreement(by_item)}
    if verdicts is not None:
        out["judge"] = _judge_agreement(judged, verdicts)
    return out


def fold(pairs: list[Pair], logs: dict[str, list[dict[str, Any]]],
         verdicts: dict[str, dict[str, str]]) -> dict[str, Any]:
    """``metrics/human.json``: the default evaluation's metrics at the top, each matrix entry's under
    ``matrix.<name>``; ``verdicts``: the judge's per group that has a judge file."""
    current = {p.key: p for p in pairs}
    judged: dict[str, list[dict[str, Any]]] = defaultdict(list)
    stale = 0
    for records_ in logs.values():
        for key, j in latest(records_, "judgement").items():
            if key in current:
                judged[current[key].group].append(j)
            else:
                stale += 1
    total = sum(len(v) for v in judged.values())
    out: dict[str, Any] = {"judgements": total, "stale": stale,
                           "reviewers": sum(1 for r in logs.values() if latest(r, "judgement")),
                           "pairs": len(current), "pairs_judged": len({j["key"] for v in judged.values() for j in v})}
    out.update(group_metrics(judged.get(DEFAULT_GROUP, []), verdicts.get(DEFAULT_GROUP)))
    matrix = {g.removeprefix("matrix/"): group_metrics(judged.get(g, []), verdicts.get(g))
              for g in sorted({p.group for p in pairs} - {DEFAULT_GROUP})}
    if matrix:
        out["matrix"] = matrix
    return out


def corrections(logs: dict[str, list[dict[str, Any]]], lang: str) -> list[dict[str, Any]]:
    """Instruction records ``{id, instruction, input, output, lang, source}`` of every reviewer's last
    correction per pair that changed the answer; the same correction twice is kept once."""
    out: dict[str, dict[str, Any]] = {}
    for reviewer in sorted(logs):
        for c in latest(logs[reviewer], "correction").values():
            text = c["text"].strip()
            if not text or text == c["original"].strip():
                continue
            rec = records.make("instructions", SOURCE, instruction=c["prompt"], input="", output=text, lang=lang,
                               reviewer=reviewer, review_group=c["group"], review_id=c["id"])
            out.setdefault(rec["id"], rec)
    return sorted(out.values(), key=lambda r: (r["review_group"], r["review_id"], r["reviewer"], r["id"]))


def fold_files(reviews: Path, metrics_dir: Path, matrix: list[str], lang: str,
               human: Path, corrected: Path) -> dict[str, Any]:
    """Read the reviewers' logs, the evaluate outputs and the judge's verdicts; write ``human`` (the metrics)
    and ``corrected`` (the correction records); return the metrics."""
    dirs = output_dirs(metrics_dir, matrix)
    logs = {name: read_log(path) for name, path in reviewer_logs(reviews).items()}
    verdicts = {group: read_judge(folder / JUDGE_FILE) for group, folder in dirs.items()
                if (folder / JUDGE_FILE).is_file()}
    metrics = fold(load_pairs(dirs), logs, verdicts)
    write_json(human, metrics)
    write_jsonl(corrected, corrections(logs, lang))
    return metrics
