"""Upload a fine-tuned model (the adapter, or merged into its base) and its instruction data to the
Hugging Face hub, each with its card, through ``huggingface_hub.HfApi`` (``create_repo`` + ``upload_folder``).

The token comes from the environment only (``HF_TOKEN``) and is never logged; ``HF_ENDPOINT`` points the
upload at another hub (a mirror, a test server). ``stage`` builds the folders without uploading anything.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langlift import modelcard as mc
from langlift.errors import LangliftError
from langlift.evaluate.models import read_manifest
from langlift.export import card
from langlift.export import model as em
from langlift.io import write_text

log = logging.getLogger(__name__)

TOKEN_ENV = "HF_TOKEN"


@dataclass(frozen=True)
class Staged:
    """Folders ready to upload: the model's, and the dataset's when one was asked for (they outlive the export
    only when it was given an ``out`` folder)."""

    model: Path
    dataset: Path | None


def stage_model(model_dir: str | Path, out: Path, params: Any, *, repo_id: str, merge: bool,
                dataset_repo_id: str | None = None, project: card.Project = card.Project()) -> Path:
    """Write the model folder to upload into ``out``: weights or adapter, tokenizer, generation config, card."""
    info = read_manifest(model_dir)
    adapter = em.is_adapter(model_dir)
    base = mc.base_info(info["base_model"], info.get("base_model_fingerprint"), project.lock)
    if adapter and not merge:
        if base.hub_id is None:
            raise LangliftError(f"{model_dir}: an adapter over the local base '{base.ref}' is of no use on the hub "
                                "without that base; add --merge to upload the merged model")
        em.write_adapter(model_dir, out, base.hub_id, base.revision)
    else:
        em.write_merged(model_dir, out)
    model_card = card.model_card(model_dir, params, repo_id=repo_id, merged=adapter and merge,
                                 dataset_repo_id=dataset_repo_id, project=project)
    write_text(out / "README.md", str(model_card))
    return out


def stage_dataset(out: Path, params: Any, *, model_repo_id: str | None,
                  project: card.Project = card.Project()) -> Path:
    """Write the dataset folder into ``out``: ``data/{train,val,test}.jsonl`` (those that exist) and the card."""
    files = {s: project.split_dir / f"{s}.jsonl" for s in card.SPLITS if (project.split_dir / f"{s}.jsonl").is_file()}
    if "train" not in files:
        raise LangliftError(f"{project.split_dir / 'train.jsonl'}: not found; run the split stage first")
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, path in files.items():
        shutil.copy2(path, out / "data" / f"{split}.jsonl")
    write_text(out / "README.md", str(card.dataset_card(params, files=files, model_repo_id=model_repo_id,
                                                        project=project)))
    return out


def token() -> str:
    """The hub token from ``HF_TOKEN``; nothing else is consulted (no saved login)."""
    value = os.environ.get(TOKEN_ENV, "").strip()
    if not value:
        raise LangliftError(f"{TOKEN_ENV} is not set: the hub export reads a write token from the environment only")
    return value


def upload(folder: Path, repo_id: str, *, repo_type: str, private: bool, message: str) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` as one commit; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token(), endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        log.info("uploading %s to %s (%s)", folder, url, repo_type)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                                 commit_message=message)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "no response"
        raise LangliftError(f"hub upload to {repo_type} {repo_id} at {api.endpoint} failed ({status}): "
                            f"{str(e).splitlines()[0]}") from None
    log.info("committed %s", info.commit_url)
    return info.commit_url


def export(model_dir: str | Path, params: Any, *, repo_id: str, merge: bool, dataset_repo_id: str | None,
           private: bool, out: Path | None = None, dry_run: bool = False,
           project: card.Project = card.Project()) -> Staged:
    """Stage the model (and dataset) folders under ``out`` (a temporary folder when None) and upload them,
    unless ``dry_run``. The token is checked before any work."""
    import tempfile

    if not dry_run:
        token()
    with tempfile.TemporaryDirectory(prefix="langlift-export-") as tmp:
        root = Path(out) if out else Path(tmp)
        if root.exists() and any(root.iterdir()):
            raise LangliftError(f"{root}: exists and is not empty; the export stages into a fresh folder")
        staged = Staged(
            stage_model(model_dir, root / "model", params, repo_id=repo_id, merge=merge,
                        dataset_repo_id=dataset_repo_id, project=project),
            stage_dataset(root / "dataset", params, model_repo_id=repo_id, project=project) if dataset_repo_id else None)
        if not dry_run:
            if staged.dataset is not None:
                upload(staged.dataset, dataset_repo_id, repo_type="dataset", private=private,
                       message="langlift: instruction data and dataset card")
            upload(staged.model, repo_id, repo_type="model", private=private,
                   message=f"langlift: {'merged model' if merge else 'model'} from {model_dir}")
        return staged
