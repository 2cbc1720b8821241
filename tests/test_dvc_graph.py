"""dvc.yaml declares the code every stage runs: the stage script and every `langlift` module it imports,
transitively, found statically with `ast` (nothing is imported). A module missing from a stage's deps would
let `dvc status` say "up to date" after that module changed."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_translate_backends import nllb_dir  # noqa: F401  (a tiny real NLLB-style model)
from test_pipeline import copy_repository

PACKAGE = "langlift"


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The file of a dotted module name inside the repository (a module or a package), else None."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(file: Path, root: Path) -> str:
    """The dotted package a file's relative imports start from."""
    parts = file.relative_to(root).with_suffix("").parts
    return ".".join(parts if file.name == "__init__.py" else parts[:-1]).removesuffix(".__init__")


def imported_modules(file: Path, root: Path = REPO) -> set[str]:
    """Dotted names of the `langlift` modules a file imports anywhere (lazy imports in functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = _package_of(file, root).split(".")
                parent = parent[:len(parent) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {n for n in names if n.split(".")[0] == PACKAGE and module_file(n, root)}


def import_closure(script: Path, root: Path = REPO) -> set[str]:
    """Repository-relative paths of the script and every `langlift` module it imports, transitively,
    with the `__init__.py` of every package on the way (Python runs them on import)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        for name in imported_modules(file, root):
            parts = name.split(".")
            todo.extend(module_file(".".join(parts[:i]), root) for i in range(1, len(parts) + 1))
    return {f.relative_to(root).as_posix() for f in seen}


def stage_specs(root: Path = REPO) -> dict[str, dict]:
    """Each stage of dvc.yaml as written (a foreach stage: its `do` template)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: spec.get("do", spec) for name, spec in stages.items()}


def declared(spec: dict) -> list[str]:
    """A stage's dependency paths (interpolated ones as written)."""
    return [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps") or []]


def covered(path: str, deps: list[str]) -> bool:
    """Whether a declared file or directory covers ``path``."""
    return any(path == d.rstrip("/") or path.startswith(d.rstrip("/") + "/") for d in deps)


def script_of(spec: dict) -> Path:
    match = re.match(r"python (stages/\w+\.py)\b", spec["cmd"])
    assert match, f"cmd {spec['cmd']!r} does not run a stages/ script"
    return REPO / match.group(1)


STAGES = stage_specs()


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_imported_module_is_a_dependency(stage):
    spec = STAGES[stage]
    deps = declared(spec)
    missing = sorted(p for p in import_closure(script_of(spec)) if not covered(p, deps))
    assert not missing, f"dvc.yaml: stage '{stage}' does not declare {missing} (its code imports them)"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_code_dependency_is_declared_in_vain(stage):
    spec = STAGES[stage]
    closure = import_closure(script_of(spec))
    code = [d for d in declared(spec) if d.split("/")[0] in ("stages", PACKAGE)]
    unused = [d for d in code if not any(covered(p, [d]) for p in closure)]
    assert not unused, f"dvc.yaml: stage '{stage}' declares {unused}, which its code never imports (needless reruns)"


def test_the_closure_follows_relative_lazy_and_package_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..lazy import g\n    return g\n")
    (pkg / "lazy.py").write_text("import os\nfrom langlift import leaf\n")
    (pkg / "leaf.py").write_text("")
    (pkg / "unused.py").write_text("")
    script = tmp_path / "stages" / "s.py"
    script.write_text("import click\nfrom langlift.sub import f\n")
    assert import_closure(script, tmp_path) == {
        "stages/s.py", "langlift/__init__.py", "langlift/sub/__init__.py", "langlift/sub/a.py",
        "langlift/lazy.py", "langlift/leaf.py"}
    assert covered("langlift/sub/a.py", ["langlift/sub"]) and not covered("langlift/subx.py", ["langlift/sub"])


# -- local models are dependencies: a real `dvc repro` / `dvc status` in a temporary copy ----------------

def sh(ws: Path, *cmd: str, ok: bool = True) -> subprocess.CompletedProcess:
    run = subprocess.run(cmd, cwd=ws, capture_output=True, text=True)
    assert (run.returncode == 0) == ok, f"{' '.join(cmd)} exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
    return run


def dvc(ws: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    return sh(ws, sys.executable, "-m", "dvc", *args, ok=ok)


def set_params(ws: Path, **translate) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text(encoding="utf-8"))
    params["translate"].update(translate)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")


def test_a_changed_byte_in_a_local_translate_model_makes_translate_stale(tmp_path, nllb_dir):
    ws = copy_repository(tmp_path / "repo")
    for cmd in (["init", "-q"], ["config", "user.email", "ci@langlift.invalid"], ["config", "user.name", "ci"],
                ["add", "-A"], ["commit", "-qm", "clone"]):
        sh(ws, "git", *cmd)
    model = tmp_path / "nllb"                                   # the user's model, outside the repository
    shutil.copytree(nllb_dir, model)
    seq2seq = {"model": str(model), "max_new_tokens": 4, "batch_size": 8}
    set_params(ws, backend="seq2seq", limit=3, seq2seq=seq2seq,
               quality={**yaml.safe_load((REPO / "params.yaml").read_text())["translate"]["quality"],
                        "min_lang_score": 0, "action": "keep"})
    refused = dvc(ws, "repro", "translate", ok=False)
    assert "translate.seq2seq.model: local model" in refused.stderr and "cp -rs" in refused.stderr

    sh(ws, "cp", "-rs", str(model), "models/local/nllb")        # linked as the error says: file symlinks
    set_params(ws, seq2seq={**seq2seq, "model": "models/local/nllb"})
    dvc(ws, "repro", "translate")
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]["translate"]["deps"]
    local = next(d for d in lock if d["path"] == "models/local")
    assert local["nfiles"] == 1 + sum(1 for f in model.rglob("*") if f.is_file())   # hashed through the links
    metrics = json.loads((ws / "metrics/translate.json").read_text())
    assert metrics["models"]["seq2seq.model"]["kind"] == "local"
    assert "up to date" in dvc(ws, "status", "translate").stdout

    weights = model / "model.safetensors"                       # one byte of the real file behind the link
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    status = dvc(ws, "status", "translate").stdout
    assert "translate" in status and "modified:" in status and "models/local" in status, status
