"""A reviewer's judgements: ``data/review/<reviewer>.jsonl``, one JSON line appended (and fsynced) per click.

Two kinds of line: ``judgement`` (which model's answer was better, or ``both_bad``) and ``correction`` (the
reviewer's corrected answer). The file is a log: a later line for the same pair replaces an earlier one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from langlift.errors import DataError, LangliftError
from langlift.io import read_jsonl

log = logging.getLogger(__name__)

REVIEW_DIR = Path("data/review")
CORRECTIONS = "corrections"  # data/review/corrections.jsonl is fold's output, not a reviewer
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
BOTH_BAD = "both_bad"
REQUIRED = {"judgement": ("reviewer", "group", "id", "key", "prompt", "choice"),
            "correction": ("reviewer", "group", "id", "key", "prompt", "original", "text")}


def check_reviewer(name: str) -> str:
    """``name`` if it is a safe file name (letters, digits, ``_`` and ``-``, at most 64), else an error."""
    if not NAME.match(name) or name == CORRECTIONS:
        raise LangliftError(f"reviewer name {name!r}: use 1-64 letters, digits, '_' or '-' (starting with a letter "
                            f"or digit), not {CORRECTIONS!r}")
    return name


def log_path(reviewer: str, folder: str | Path = REVIEW_DIR) -> Path:
    """Where a reviewer's judgements are stored."""
    return Path(folder) / f"{check_reviewer(reviewer)}.jsonl"


class ReviewLog:
    """One reviewer's append-only log; safe to share between the web server's threads."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._drop_torn_tail()

    def _drop_torn_tail(self) -> None:
        """Cut a last line left half-written by a crash (a line without its newline), with a warning."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping a half-written last line (%d bytes)", self.path, len(data) - keep)
        with open(self.path, "r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Append one JSON line with a single write and fsync it before returning."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            created = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:  # the new directory entry must survive a crash too
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

    def read(self) -> list[dict[str, Any]]:
        """Every line of the log, checked."""
        return read_log(self.path) if self.path.is_file() else []


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of one reviewer's file; a bad line is a :class:`DataError` naming file, line and field."""
    records = []
    for line, rec in read_jsonl(path):
        kind = rec.get("type")
        if kind not in REQUIRED:
            raise DataError(path, line, "type", f"expected one of {sorted(REQUIRED)}, got {kind!r}")
        for field in REQUIRED[kind]:
            if not isinstance(rec.get(field), str):
                raise DataError(path, line, field, "missing or not a string")
        records.append(rec)
    return records


def reviewer_logs(folder: str | Path = REVIEW_DIR) -> dict[str, Path]:
    """``reviewer -> file`` for every reviewer's log in ``folder`` (the corrections output excluded)."""
    return {p.stem: p for p in sorted(Path(folder).glob("*.jsonl")) if p.stem != CORRECTIONS and NAME.match(p.stem)}


def latest(records: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The last record of ``kind`` per pair key: a reviewer who changed their mind counts once, as they ended."""
    return {rec["key"]: rec for rec in records if rec["type"] == kind}
