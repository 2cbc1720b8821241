"""Model identities: what exactly a model path or hub id points at, for cache keys and metrics.

A local model (a directory or a file) is identified by a content hash of every file it holds
(relative path + bytes). Hashing is chunked and cached per file, keyed by (real path, size, mtime_ns),
in ``.cache/hashes.json``, so a 14 GB model is read once and an unchanged one costs a ``stat`` per file.
A hub model is identified by its commit sha, resolved from the local Hugging Face cache without
network; an explicit 40-hex revision is used as given.

Under ``dvc repro`` a stage may use only local models its dvc.yaml entry declares: those linked under
``models/local/`` (or the pipeline's own models). DVC hashes through symlinked files there but silently skips
symlinked directories, so a model linked as one directory symlink is refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from langlift.errors import LangliftError
from langlift.io import write_json

HASH_CACHE = Path(".cache/hashes.json")
LOCAL_DIR = "models/local"
_CHUNK = 1 << 20
_SHA = re.compile(r"[0-9a-f]{40}")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


@dataclass(frozen=True)
class ModelRef:
    """A model as named in params (``ref``) and what it resolved to."""

    ref: str
    kind: Literal["local", "hub"]
    revision: str | None = None   # hub: the commit sha
    sha256: str | None = None     # local: the content hash

    @property
    def fingerprint(self) -> str:
        """One string that changes whenever the model's files do."""
        return f"sha256:{self.sha256}" if self.kind == "local" else f"hub:{self.ref}@{self.revision}"

    def to_dict(self) -> dict[str, Any]:
        """For metrics: ref, kind, revision or sha256, fingerprint."""
        return {**{k: v for k, v in asdict(self).items() if v is not None}, "fingerprint": self.fingerprint}


def resolve(ref: str, revision: str | None = None, cache: str | Path = HASH_CACHE) -> ModelRef:
    """The identity of a local model path (content hash) or a hub id (commit sha)."""
    path = Path(ref)
    if path.exists():
        return ModelRef(ref, "local", sha256=hash_path(path, cache))
    if not _HUB_ID.fullmatch(ref):
        raise LangliftError(f"model '{ref}': no such file or directory")
    return ModelRef(ref, "hub", revision=hub_revision(ref, revision))


def fingerprint(ref: str, revision: str | None = None) -> str:
    """The fingerprint of :func:`resolve` ``(ref, revision)``."""
    return resolve(ref, revision).fingerprint


def check_declared(ref: str, key: str, declared: tuple[str, ...] = (LOCAL_DIR,)) -> None:
    """Under ``dvc repro`` (``DVC_STAGE`` set), refuse a local model outside the stage's declared folders."""
    path = Path(ref)
    if not os.environ.get("DVC_STAGE") or not path.exists():
        return
    rel = Path(os.path.relpath(os.path.abspath(path)))
    root = next((Path(d) for d in declared if rel == Path(d) or Path(d) in rel.parents), None)
    if root is None:
        raise LangliftError(
            f"{key}: local model '{ref}' is outside {' and '.join(declared)}, so DVC cannot see it change; link it "
            f"into the repository (`cp -rs {path.resolve()} {LOCAL_DIR}/{path.resolve().name}`) and set {key} there")
    hidden = _dir_symlinks(root, rel)
    if hidden:
        h = hidden[0]
        raise LangliftError(
            f"{key}: '{h}' is a symlink to a directory, which DVC does not hash through; replace it with "
            f"symlinked files (`rm {h} && cp -rs {h.resolve()} {h}`) or a copy")


def _dir_symlinks(root: Path, model: Path) -> list[Path]:
    """Directory symlinks below ``root`` on the way to ``model`` or inside it (DVC skips what they hold)."""
    found = [p for p in [model, *model.parents] if root in p.parents and p.is_symlink() and p.is_dir()]
    if model.is_dir() and not found:
        for dirpath, dirs, _ in os.walk(model):
            found += [Path(dirpath, d) for d in dirs if Path(dirpath, d).is_symlink()]
    return sorted(found)


def hub_revision(repo_id: str, revision: str | None = None) -> str:
    """The commit sha of ``repo_id`` at ``revision`` (default main) from the local HF cache; no network."""
    if revision and _SHA.fullmatch(revision):
        return revision
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise LangliftError(
            f"model '{repo_id}'{f' revision {revision}' if revision else ''}: not a local path and not in the "
            f"Hugging Face cache, so its revision cannot be resolved offline; download it first "
            f"(`hf download {repo_id}`) or link a local copy under models/local/") from None
    return Path(folder).name


def hash_path(path: str | Path, cache: str | Path = HASH_CACHE) -> str:
    """sha256 over (relative path, file sha256) of every file under ``path`` (or of the one file)."""
    path = Path(path)
    files = _files(path)
    known = _load_cache(Path(cache))
    digest, dirty = hashlib.sha256(), False
    for rel, file in files:
        real = os.path.realpath(file)
        st = os.stat(real)
        entry = known.get(real)
        if not entry or entry["size"] != st.st_size or entry["mtime_ns"] != st.st_mtime_ns:
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _hash_file(real)}
            known[real], dirty = entry, True
        digest.update(f"{rel}\0{entry['sha256']}\n".encode("utf-8"))
    if dirty:
        write_json(cache, {k: v for k, v in known.items() if os.path.exists(k)})  # files gone: entries go
    return digest.hexdigest()


def _files(path: Path) -> list[tuple[str, Path]]:
    """``(relative posix path, path)`` of every file under ``path``, symlinks followed, sorted."""
    if path.is_file():
        return [(path.name, path)]
    found = []
    for root, dirs, names in os.walk(path, followlinks=True):
        dirs.sort()
        for name in names:
            file = Path(root, name)
            if file.is_file():
                found.append((file.relative_to(path).as_posix(), file))
    if not found:
        raise LangliftError(f"model '{path}': the folder holds no files")
    return sorted(found)


def _hash_file(path: str) -> str:
    """sha256 of one file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _load_cache(cache: Path) -> dict[str, dict[str, Any]]:
    """The per-file hash cache; a missing or unreadable one is empty (it is only a cache)."""
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
