"""One exception type for every user-facing failure, so stages can print it without a traceback."""

from __future__ import annotations


class LangliftError(Exception):
    """A problem the user can fix: bad input, bad params, a missing model or file."""


class DataError(LangliftError):
    """A bad record, located by file, line and field."""

    def __init__(self, path: object, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field = str(path), line, field
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")
