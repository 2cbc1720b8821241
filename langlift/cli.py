"""Shared plumbing for the click scripts in ``stages/``: logging, clean errors and the closing summary line."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from langlift.errors import LangliftError

log = logging.getLogger("langlift")


def run_stage(fn: Callable[..., str | None]) -> Callable[..., None]:
    """Wrap a stage's click callback: log to stderr, turn user errors into one line and exit 1.

    A callback that returns a summary (what it did, in a few words) ends the stage with one line on stdout,
    ``<script>: <summary> (<seconds>)``, printed by the main process of a multi-process launch only.
    """
    name = Path(inspect.getsourcefile(fn) or "stage").stem

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        if not main_process():  # one copy of each line: other ranks of a launch log warnings and errors only
            log.setLevel(logging.WARNING)
        start = time.perf_counter()
        try:
            summary = fn(*args, **kwargs)
        except LangliftError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: outputs were left as they were; cached work is kept", err=True)
            sys.exit(130)
        if summary and main_process():
            click.echo(f"{name}: {summary} ({duration(time.perf_counter() - start)})")

    return wrapper


def main_process() -> bool:
    """Whether this is the main process (rank 0) of an ``accelerate launch`` / ``torchrun``, or a lone process."""
    return int(os.environ.get("RANK", "0")) == 0


def duration(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m 05s``, ``2h 01m``: a duration at the precision a person reads."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
