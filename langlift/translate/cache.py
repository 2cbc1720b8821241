"""The persistent segment cache: every translation a model backend makes, kept across runs.

One SQLite file (WAL mode, one commit per batch), keyed by sha256 of (backend, model identity, language,
settings fingerprint incl. prompt version, normalised text). The model identity is what the model files
are, not where they are (:mod:`langlift.modelref`: a content hash of local weights, a hub commit sha; an API
backend's endpoint and model name), so new weights at the same path never get the old weights' translations.
A crash, kill or Ctrl-C loses at most the batch in flight; a rerun finds every finished segment here and
does not ask the backend again.
The file lives outside DVC's outputs (``.cache/translate/`` by default), so ``dvc repro`` never
deletes it and a params change re-runs the stage over a warm cache.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    lang TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def segment_key(backend: str, model_identity: str, lang: str, fingerprint: str, text: str) -> str:
    """The cache key of one segment (``text`` already normalised)."""
    blob = json.dumps([backend, model_identity, lang, fingerprint, text], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class SegmentCache:
    """``get_many`` / ``put_many`` over one SQLite file; usable as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(_SCHEMA)
        self.db.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        """The cached targets of those ``keys`` that are present."""
        keys, found = list(keys), {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self.db.execute(
                f"SELECT key, target FROM segments WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update(rows)
        return found

    def put_many(self, rows: Iterable[tuple[str, str, str, str, str, str, str]]) -> None:
        """Store ``(key, backend, model, lang, fingerprint, source, target)`` rows and commit."""
        now = time.time()
        self.db.executemany("INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [(*r, now) for r in rows])
        self.db.commit()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM segments").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> SegmentCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
