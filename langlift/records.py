"""The three record schemas every stage speaks, and their stable content-hash ids.

- instructions: ``{id, instruction, input, output, lang, source}``
- corpus:       ``{id, text, lang, source}``
- parallel:     ``{id, src, tgt, src_lang, tgt_lang, source}``

Ids hash the content (and language), never the position, so later stages join by id and a record
keeps its id when others are added or removed. Stages may add provenance fields beside these.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langlift.errors import DataError
from langlift.io import read_jsonl

KINDS: dict[str, dict[str, tuple[str, ...]]] = {
    # required non-empty text fields, optional text fields, language fields
    "instructions": {"text": ("instruction", "output"), "optional": ("input",), "lang": ("lang",)},
    "corpus": {"text": ("text",), "optional": (), "lang": ("lang",)},
    "parallel": {"text": ("src", "tgt"), "optional": (), "lang": ("src_lang", "tgt_lang")},
}


def content_fields(kind: str) -> tuple[str, ...]:
    """The text fields of a kind, in schema order."""
    spec = KINDS[kind]
    if kind == "instructions":
        return ("instruction", "input", "output")
    return spec["text"] + spec["optional"]


def record_id(kind: str, rec: dict[str, Any]) -> str:
    """A 16-hex-digit id hashing the kind, the language fields and the text fields."""
    key = [kind] + [rec.get(f, "") for f in KINDS[kind]["lang"] + content_fields(kind)]
    return hashlib.sha256(json.dumps(key, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def validate(kind: str, rec: dict[str, Any], path: object, line: int | None) -> None:
    """Raise :class:`DataError` naming file, line and field if ``rec`` breaks the schema."""
    if kind not in KINDS:
        raise DataError(path, line, "kind", f"unknown record kind {kind!r}; expected one of {sorted(KINDS)}")
    spec = KINDS[kind]
    for field in spec["text"] + spec["lang"]:
        value = rec.get(field)
        if value is None:
            raise DataError(path, line, field, "missing")
        if not isinstance(value, str):
            raise DataError(path, line, field, f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise DataError(path, line, field, "empty")
    for field in spec["optional"]:
        value = rec.get(field, "")
        if not isinstance(value, str):
            raise DataError(path, line, field, f"expected a string, got {type(value).__name__}")


def read(path: str | Path, kind: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, record)`` from a JSONL file, each validated against ``kind``'s schema."""
    for line, rec in read_jsonl(path):
        validate(kind, rec, path, line)
        yield line, rec


def make(kind: str, source: str, **fields: Any) -> dict[str, Any]:
    """Build a record of ``kind`` with its id first and ``source`` last."""
    rec = {f: fields.pop(f, "") for f in content_fields(kind) + KINDS[kind]["lang"]}
    rec = {"id": record_id(kind, rec), **rec, "source": source, **fields}
    return rec
