"""Shared plumbing for the click scripts in ``stages/``: logging and clean errors."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from langlift.errors import LangliftError

log = logging.getLogger("langlift")


def run_stage(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a stage's click callback: log to stderr, turn user errors into one line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        try:
            return fn(*args, **kwargs)
        except LangliftError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: outputs were left as they were; cached work is kept", err=True)
            sys.exit(130)

    return wrapper
