"""The repository as a team shares it: a DVC remote, a fresh clone that pulls instead of retraining,
experiments pushed and pulled, models fetched by artifact name and data imported into another project.
Everything on this machine: a bare git repository stands in for the git host, a folder for the DVC remote."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, clone_published, dvc, git_identity, ran, sh


@pytest.fixture(scope="module")
def clone(published, tmp_path_factory) -> Path:
    """A colleague's fresh clone of the published repository, `dvc pull`ed (no training)."""
    return clone_published(published, tmp_path_factory.mktemp("colleague") / "langlift")


def test_default_remote_is_a_folder_outside_the_repository():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    default = config["core"]["remote"]
    url = config[f"'remote \"{default}\"'"]["url"]  # DVC writes the section name quoted
    target = (REPO / ".dvc" / url).resolve()  # DVC reads a relative url from the config file's folder
    assert "://" not in url and not target.is_relative_to(REPO), target


def test_push_stores_data_models_and_run_cache(published):
    storage = published["storage"]
    assert any((storage / "files" / "md5").rglob("*.dir")), "models/ and data folders were pushed"
    assert any((storage / "runs").iterdir()), "dvc push --run-cache pushed the run cache"


def test_a_pulled_clone_is_up_to_date_and_chats_without_training(clone):
    assert (clone / "models/finetuned/langlift.json").is_file() and (clone / "data/clean/instructions.jsonl").is_file()
    assert "up to date" in dvc(clone, "status")
    assert ran(dvc(clone, "repro")) == set(), "a pulled clone has nothing to rerun"
    chat = subprocess.run([sys.executable, "stages/chat.py", "--model", "models/finetuned", "--max-new-tokens", "16"],
                          cwd=clone, input="Azərbaycanın paytaxtı haradır?\n", capture_output=True, text=True)
    assert chat.returncode == 0 and chat.stdout.strip(), f"the pulled model answers on stdout:\n{chat.stderr}"


def test_an_experiment_pushed_by_one_clone_is_pulled_by_another(published, clone):
    name = published["experiment"]
    assert name in dvc(clone, "exp", "list", "origin")
    dvc(clone, "exp", "pull", "origin", name)
    assert name in dvc(clone, "exp", "list")
    shown = json.loads(dvc(clone, "exp", "show", "--json"))
    names = {e.get("name") for row in shown for e in (row.get("experiments") or [])}
    assert name in names, names
    other = clone_published(published, clone.parent / "second")
    dvc(other, "exp", "pull", "origin", name)
    dvc(other, "exp", "apply", name)  # its params and outputs, from the remote: nothing to retrain
    assert yaml.safe_load((other / "params.yaml").read_text())["lr"] == pytest.approx(1e-4)
    assert "up to date" in dvc(other, "status")


def test_artifacts_are_registered_with_type_and_labels():
    artifacts = yaml.safe_load((REPO / "dvc.yaml").read_text())["artifacts"]
    assert {"finetuned", "base"} <= set(artifacts)
    for name, spec in artifacts.items():
        assert spec["type"] == "model" and spec["desc"], name
        assert any(label.startswith("language:") for label in spec["labels"]), name


def test_another_project_gets_the_model_by_name_and_imports_the_clean_data(clone, tmp_path):
    sh(clone, "git", "tag", "-a", "finetuned@v1.0.0", "-m", "register finetuned v1.0.0")  # a registered version
    other = tmp_path / "other"
    other.mkdir()
    sh(other, "git", "init", "-q")
    git_identity(other)
    dvc(other, "init", "-q")
    dvc(other, "artifacts", "get", str(clone), "finetuned", "-o", "models/finetuned")
    for name in ("langlift.json", "tokenizer.json"):
        assert (other / "models/finetuned" / name).read_bytes() == (clone / "models/finetuned" / name).read_bytes()
    dvc(other, "get", str(clone), "models/base", "-o", "models/base")
    assert (other / "models/base/config.json").is_file()
    (other / "data").mkdir()
    dvc(other, "import", str(clone), "data/clean/instructions.jsonl", "-o", "data/instructions.jsonl")
    imported = other / "data/instructions.jsonl"
    assert imported.read_bytes() == (clone / "data/clean/instructions.jsonl").read_bytes()
    lock = yaml.safe_load((other / "data/instructions.jsonl.dvc").read_text())
    assert lock["deps"][0]["repo"]["url"] == str(clone) and lock["deps"][0]["repo"]["rev_lock"]
    assert "up to date" in dvc(other, "status")
