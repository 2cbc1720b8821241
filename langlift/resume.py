"""Safe resumption of the long stages (pretrain, finetune): a checkpoint is reused only by the run that made it.

A run's identity (the content hash of the model it starts from, the hashes of its data, its loop config,
seed and hardware precision, and the version of its own training code) is stored beside its checkpoints.
After a crash, ``dvc repro`` simply runs the stage again: it resumes the newest checkpoint when the
identities match; otherwise one log line names every difference and the stage starts afresh.

The dvclive folder (``metrics/<stage>/``) is a DVC output, which DVC deletes before it reruns a stage:
each checkpoint keeps a copy of it as it was at that step (:func:`keep_curves`), put back on resume
(:func:`restore_curves`), so the curves from before the crash survive.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

from langlift import modelref

log = logging.getLogger(__name__)

CURVES = "live"  # the dvclive copy inside a checkpoint folder


def code_version(*modules: ModuleType) -> str:
    """A hash of the source files of ``modules``: the training code a checkpoint was made with."""
    h = hashlib.sha256()
    for module in modules:
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def data_hashes(files: dict[str, Path]) -> dict[str, str]:
    """Content hash of each data file, by role (``train``, ``val``)."""
    return {role: modelref.hash_path(path) for role, path in files.items()}


def differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: checkpoint X, now Y`` for every value of ``current`` that ``saved`` does not share."""
    out = []
    for key, now in current.items():
        then = saved.get(key)
        if isinstance(now, dict) and isinstance(then, dict):
            out += differences(then, now, f"{prefix}{key}.")
        elif then != now:
            out.append(f"{prefix}{key}: checkpoint {then!r}, now {now!r}")
    return out


def same_run(saved: dict[str, Any] | None, current: dict[str, Any], where: Path) -> bool:
    """Whether checkpoints made with identity ``saved`` may be resumed now; if not, one log line says why."""
    diffs = differences(saved or {}, json.loads(json.dumps(current)))  # tuples compare as the lists saved
    if diffs:
        log.warning("%s: the checkpoints were made by another run (%s): starting fresh and removing them",
                    where, "; ".join(diffs) if saved is not None else "no identity recorded")
    return not diffs


def keep_curves(live: Path, checkpoint: Path) -> None:
    """Copy the dvclive folder into ``checkpoint``, replacing any earlier copy in one rename."""
    tmp = checkpoint / f".{CURVES}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if live.exists():
        shutil.copytree(live, tmp)
    else:
        tmp.mkdir(parents=True)
    shutil.rmtree(checkpoint / CURVES, ignore_errors=True)
    os.replace(tmp, checkpoint / CURVES)


def restore_curves(checkpoint: Path, live: Path) -> None:
    """Replace the dvclive folder with the copy kept in ``checkpoint`` (the curves up to its step)."""
    shutil.rmtree(live, ignore_errors=True)
    if (checkpoint / CURVES).exists():
        shutil.copytree(checkpoint / CURVES, live)
