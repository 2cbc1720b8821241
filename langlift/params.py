"""Reading ``params.yaml``: the single source of every stage's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from langlift.errors import LangliftError

DEFAULT_PATH = Path("params.yaml")


def load(path: str | Path = DEFAULT_PATH) -> dict[str, Any]:
    """Load the params file; a missing or malformed file is a :class:`LangliftError`."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LangliftError(f"{path}: params file not found (run from the repository root)") from None
    except yaml.YAMLError as e:
        raise LangliftError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(params, dict):
        raise LangliftError(f"{path}: expected a mapping at the top level")
    return params


def section(params: dict[str, Any], name: str, path: str | Path = DEFAULT_PATH) -> dict[str, Any]:
    """Return ``params[name]``, raising a clear error when the section is missing."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise LangliftError(f"{path}: missing section '{name}'")
    return value
