"""Reading and checking the evaluation sets: every record needs a unique id (answers are joined to
references by id), bad records are reported by file, line and field, and an empty selection is an error.
SIB-200 is optional: a language without its folder is skipped."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langlift import records
from langlift.params import Evaluate
from langlift.errors import DataError
from langlift.io import read_jsonl

log = logging.getLogger(__name__)

SIB200_COLUMNS = ["index_id", "category", "text"]


@dataclass
class Sib200:
    """SIB-200 topic classification of one language: its labels, the train split (for few-shot
    examples) and the test split, as ``{id, label, text}`` rows."""

    folder: Path
    labels: list[str]
    train: list[dict[str, str]]
    test: list[dict[str, str]]


@dataclass
class EvalSets:
    """What one evaluation run scores, already capped to the configured sizes."""

    texts: list[dict[str, Any]]  # held-out corpus documents {id, text}
    pairs: list[dict[str, Any]]  # {id, en, xx}: English and target-language sides
    instructions: list[dict[str, Any]]  # target-language instruction records
    prompts: list[dict[str, Any]]  # {id, prompt}
    sib200: Sib200 | None = None  # None: no SIB-200 data for this language, or turned off


def _checked(path: Path, kind: str | None, required: tuple[str, ...] = ()) -> list[tuple[int, dict[str, Any]]]:
    """Records of ``path`` with a unique non-empty string id, validated against ``kind``'s schema."""
    if not path.is_file():
        raise DataError(path, None, None, "evaluation input not found (run the earlier stages, or fix the path)")
    seen: dict[str, int] = {}
    rows = []
    for line, rec in read_jsonl(path):
        rid = rec.get("id")
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            raise DataError(path, line, "id", "missing: answers are joined to references by id")
        if not isinstance(rid, str):
            raise DataError(path, line, "id", f"expected a string, got {type(rid).__name__}")
        if rid in seen:
            raise DataError(path, line, "id", f"duplicate of line {seen[rid]}")
        seen[rid] = line
        if kind:
            records.validate(kind, rec, path, line)
        for field in required:
            value = rec.get(field)
            if not isinstance(value, str) or not value.strip():
                raise DataError(path, line, field, "missing or empty")
        rows.append((line, rec))
    return rows


def _nonempty(rows: list, path: Path, what: str) -> list:
    if not rows:
        raise DataError(path, None, None, f"no {what} to evaluate")
    return rows


def load_texts(path: str | Path, limit: int) -> list[dict[str, Any]]:
    """Held-out corpus documents, the first ``limit``."""
    path = Path(path)
    rows = _nonempty(_checked(path, "corpus"), path, "documents")
    return [{"id": r["id"], "text": r["text"]} for _, r in rows[:limit]]


def load_pairs(path: str | Path, lang: str, limit: int) -> list[dict[str, Any]]:
    """English/target-language pairs (either direction in the file), the first ``limit``."""
    path = Path(path)
    pairs = []
    for line, r in _checked(path, "parallel"):
        langs = (r["src_lang"], r["tgt_lang"])
        if langs == ("en", lang):
            pairs.append({"id": r["id"], "en": r["src"], "xx": r["tgt"]})
        elif langs == (lang, "en"):
            pairs.append({"id": r["id"], "en": r["tgt"], "xx": r["src"]})
        else:
            raise DataError(path, line, "src_lang", f"pair is {langs[0]}->{langs[1]}; expected en<->{lang}")
    return _nonempty(pairs, path, f"en<->{lang} pairs")[:limit]


def load_instructions(path: str | Path, lang: str, limit: int) -> list[dict[str, Any]]:
    """Instruction records in ``lang`` (the test split also holds English ones), the first ``limit``."""
    path = Path(path)
    rows = [r for _, r in _checked(path, "instructions") if r["lang"] == lang]
    return _nonempty(rows, path, f"instruction records with lang '{lang}'")[:limit]


def load_prompts(path: str | Path, limit: int) -> list[dict[str, Any]]:
    """Fixed generation prompts ``{id, prompt}`` for the human-review report, the first ``limit``."""
    path = Path(path)
    rows = _nonempty(_checked(path, None, ("prompt",)), path, "prompts")
    return [{"id": r["id"], "prompt": r["prompt"]} for _, r in rows[:limit]]


def _sib200_split(path: Path, labels: list[str]) -> list[dict[str, str]]:
    """The rows of one SIB-200 TSV file (``index_id  category  text``, a header line first)."""
    if not path.is_file():
        raise DataError(path, None, None, "SIB-200 split not found (the folder needs train.tsv and test.tsv)")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if next(reader, None) != SIB200_COLUMNS:
            raise DataError(path, 1, None, f"expected the header {' '.join(SIB200_COLUMNS)} (tab-separated)")
        rows, seen = [], set()
        for line, row in enumerate(reader, 2):
            if len(row) != 3 or not row[2].strip():
                raise DataError(path, line, "text", f"expected 3 tab-separated columns with a text, got {len(row)}")
            if row[1] not in labels:
                raise DataError(path, line, "category", f"{row[1]!r} is not in labels.txt")
            if row[0] in seen:
                raise DataError(path, line, "index_id", f"duplicate {row[0]!r}")
            seen.add(row[0])
            rows.append({"id": row[0], "label": row[1], "text": row[2]})
    return _nonempty(rows, path, "SIB-200 sentences")


def load_sib200(folder: str | Path | None, limit: int) -> Sib200 | None:
    """SIB-200 of one language from ``folder`` (``labels.txt``, ``train.tsv``, ``test.tsv``): the whole
    train split and the first ``limit`` test sentences; None, logged, when there is no such folder."""
    if not folder:
        return None
    folder = Path(folder)
    if not folder.is_dir():
        log.info("SIB-200: no %s for this language: topic classification skipped", folder)
        return None
    labels_file = folder / "labels.txt"
    if not labels_file.is_file():
        raise DataError(labels_file, None, None, "not found: the SIB-200 labels, one a line")
    labels = [line.strip() for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise DataError(labels_file, None, None, f"expected at least 2 distinct labels, got {labels}")
    return Sib200(folder, labels, _sib200_split(folder / "train.tsv", labels),
                  _sib200_split(folder / "test.tsv", labels)[:limit])


def load_all(cfg: Evaluate, lang: str, flores: str) -> EvalSets:
    """All sets from the paths and caps in the ``evaluate`` params section."""
    return EvalSets(
        texts=load_texts(cfg.corpus, cfg.max_docs),
        pairs=load_pairs(cfg.parallel, lang, cfg.max_pairs),
        instructions=load_instructions(cfg.test, lang, cfg.max_instructions),
        prompts=load_prompts(cfg.prompts.format(lang=lang), cfg.max_prompts),
        sib200=load_sib200(cfg.sib200 and cfg.sib200.replace("{flores}", flores), cfg.max_sib200),
    )
