"""Reading and checking the evaluation sets: every record needs a unique id (answers are joined to
references by id), bad records are reported by file, line and field, and an empty selection is an error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langlift import records
from langlift.params import Evaluate
from langlift.errors import DataError
from langlift.io import read_jsonl


@dataclass
class EvalSets:
    """What one evaluation run scores, already capped to the configured sizes."""

    texts: list[dict[str, Any]]  # held-out corpus documents {id, text}
    pairs: list[dict[str, Any]]  # {id, en, xx}: English and target-language sides
    instructions: list[dict[str, Any]]  # target-language instruction records
    prompts: list[dict[str, Any]]  # {id, prompt}


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


def load_all(cfg: Evaluate, lang: str) -> EvalSets:
    """All four sets from the paths and caps in the ``evaluate`` params section."""
    return EvalSets(
        texts=load_texts(cfg.corpus, cfg.max_docs),
        pairs=load_pairs(cfg.parallel, lang, cfg.max_pairs),
        instructions=load_instructions(cfg.test, lang, cfg.max_instructions),
        prompts=load_prompts(cfg.prompts.format(lang=lang), cfg.max_prompts),
    )
