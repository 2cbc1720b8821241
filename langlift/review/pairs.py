"""The pairs a reviewer judges: the answers of base and fine-tuned to the same review prompt, read from the
evaluate stage's outputs (``<outputs>/<model>/review.jsonl``, one ``{id, prompt, answer}`` per line)."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from langlift.errors import DataError
from langlift.io import read_jsonl

log = logging.getLogger(__name__)

MODELS = ("base", "finetuned")
DEFAULT_GROUP = "default"
REVIEW_FILE = "review.jsonl"


@dataclass(frozen=True)
class Pair:
    """One review prompt answered by both models of one evaluation (``group``)."""

    group: str
    id: str
    prompt: str
    answers: dict[str, str]  # model -> answer

    @property
    def key(self) -> str:
        """A hash of the prompt and both answers: a retrained model's new answers make a new pair."""
        content = [self.group, self.id, self.prompt, sorted(self.answers.items())]
        return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def output_dirs(metrics_dir: str | Path, matrix: list[str]) -> dict[str, Path]:
    """The evaluate outputs of each evaluation: ``default`` and ``matrix/<name>`` per ``finetune.matrix`` entry."""
    root = Path(metrics_dir)
    dirs = {DEFAULT_GROUP: root / "evaluate_outputs"}
    dirs.update({f"matrix/{name}": root / "matrix" / f"{name}_evaluate_outputs" for name in matrix})
    return dirs


def _answers(path: Path) -> dict[str, dict[str, str]]:
    """``id -> {prompt, answer}`` of one model's review file, every field checked."""
    rows: dict[str, dict[str, str]] = {}
    for line, rec in read_jsonl(path):
        for field in ("id", "prompt", "answer"):
            if not isinstance(rec.get(field), str):
                raise DataError(path, line, field, "missing or not a string")
        if rec["id"] in rows:
            raise DataError(path, line, "id", f"duplicate {rec['id']!r}")
        rows[rec["id"]] = {"prompt": rec["prompt"], "answer": rec["answer"]}
    return rows


def load_group(group: str, folder: Path) -> list[Pair]:
    """The pairs of one evaluation, in the base file's order; none when either model's file is missing."""
    paths = {m: folder / m / REVIEW_FILE for m in MODELS}
    if not all(p.is_file() for p in paths.values()):
        return []
    base, tuned = (_answers(paths[m]) for m in MODELS)
    pairs = []
    for id_, row in base.items():
        if id_ not in tuned:
            log.warning("%s: %r has no answer in %s: not reviewed", paths["base"], id_, paths["finetuned"])
            continue
        if tuned[id_]["prompt"] != row["prompt"]:
            raise DataError(paths["finetuned"], None, "prompt", f"{id_!r} differs from its prompt in {paths['base']}")
        pairs.append(Pair(group, id_, row["prompt"], {"base": row["answer"], "finetuned": tuned[id_]["answer"]}))
    return pairs


def load_pairs(dirs: dict[str, Path]) -> list[Pair]:
    """Every pair of every evaluation that has review outputs."""
    return [pair for group, folder in dirs.items() for pair in load_group(group, folder)]


def shown_order(seed: int, reviewer: str, key: str) -> list[str]:
    """The models in the order a reviewer sees them: random, but the same on every reload."""
    order = list(MODELS)
    random.Random(f"{seed}:{reviewer}:{key}").shuffle(order)
    return order
