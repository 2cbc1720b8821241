"""The ``memory`` backend: a translation memory of source -> target texts, looked up exactly.

Files are JSONL (one object per line with the source and target keys, e.g. ``{"en": ..., "az": ...}``)
or TSV (``source<TAB>target``), UTF-8 with or without a BOM (read as fetch reads its sources). Keys are
normalised (NFC, whitespace collapsed), so a lookup ignores spacing differences but nothing else. A miss
returns ``None`` and passes to the next backend.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from langlift.errors import DataError, LangliftError
from langlift.fetch import read_utf8
from langlift.io import read_jsonl
from langlift.translate.base import Backend
from langlift.translate.segment import normalize

log = logging.getLogger(__name__)


class MemoryBackend(Backend):
    name = "memory"
    masked = False
    cached = False
    chunk_size = 10_000

    def __init__(self, paths: list[str | Path], source_key: str = "en", target_key: str = "az"):
        if not paths:
            raise LangliftError("translate.memory.paths: no translation memory file given")
        super().__init__(model="+".join(str(p) for p in paths), settings={})
        self.table: dict[str, str] = {}
        self.conflicts = 0
        for path in map(Path, paths):
            if not path.exists():
                raise LangliftError(f"translate.memory.paths: {path} does not exist")
            pairs = self._read_tsv(path) if path.suffix in (".tsv", ".txt") else self._read_jsonl(
                path, source_key, target_key)
            for src, tgt in pairs:
                key = normalize(src)
                if self.table.setdefault(key, tgt) != tgt:
                    self.conflicts += 1
        log.info("translation memory: %d entries from %d file(s)%s", len(self.table), len(paths),
                 f", {self.conflicts} conflicting duplicates (first kept)" if self.conflicts else "")

    @staticmethod
    def _read_jsonl(path: Path, source_key: str, target_key: str) -> list[tuple[str, str]]:
        pairs = []
        for line, obj in read_jsonl(path):
            for key in (source_key, target_key):
                if not isinstance(obj.get(key), str) or not obj[key].strip():
                    raise DataError(path, line, key, "missing or empty (translation memory entries need both sides)")
            pairs.append((obj[source_key], obj[target_key]))
        return pairs

    @staticmethod
    def _read_tsv(path: Path) -> list[tuple[str, str]]:
        pairs = []
        for line, row in _lines(path):
            cols = row.split("\t")
            if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
                raise DataError(path, line, None, f"expected 'source<TAB>target', got {len(cols)} column(s)")
            pairs.append((cols[0], cols[1]))
        return pairs

    def lookup(self, text: str) -> str | None:
        return self.table.get(normalize(text))

    def translate(self, texts: list[str]) -> list[str | None]:
        return [self.lookup(t) for t in texts]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the non-blank lines of a UTF-8 file (BOM allowed); bad bytes are a file:line error."""
    for line, row in enumerate(read_utf8(path).split("\n"), 1):
        if row.strip():
            yield line, row.removesuffix("\r")
