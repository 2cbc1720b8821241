"""Installing: requirements.txt and pyproject.toml agree, torch's pin comes first, and langlift is installed."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def requirement_lines() -> list[str]:
    """The requirement lines of requirements.txt, comments and blank lines dropped."""
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.split(" #")[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def pinned() -> dict[str, Requirement]:
    """requirements.txt's pins by canonical name (the ``-e .`` line of langlift itself left out)."""
    reqs = [Requirement(line) for line in requirement_lines() if not line.startswith("-e ")]
    return {canonicalize_name(r.name): r for r in reqs}


def declared() -> dict[str, Requirement]:
    """pyproject.toml's dependencies and its ``test`` extra, by canonical name."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    return {canonicalize_name(r.name): r for r in reqs}


def test_torch_is_pinned_first_and_langlift_installed_last():
    lines = requirement_lines()
    assert lines[0] == "torch==2.13.0"
    assert lines[-1] == "-e .[test]"
    assert all(str(r.specifier).startswith("==") for r in pinned().values())


def test_pyproject_declares_what_requirements_pins_and_the_pins_fit_its_ranges():
    pins, ranges = pinned(), declared()
    assert sorted(pins) == sorted(ranges)
    assert "pydantic" in ranges
    for name, pin in pins.items():
        version = str(pin.specifier).removeprefix("==")
        assert ranges[name].specifier.contains(version), f"{name}: pin {version} outside {ranges[name].specifier}"


def test_langlift_imports_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import importlib.metadata, langlift; print(langlift.__file__, importlib.metadata.version('langlift'))"
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    where, version = run.stdout.split()
    assert where == str(REPO / "langlift" / "__init__.py")  # this checkout's package, installed editable
    assert version == tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
