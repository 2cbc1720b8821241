"""Crash safety of the long stages under `dvc repro`, in a temporary copy of the repository: pretrain and
finetune are SIGKILLed mid-run (the process group: dvc, its shell and the stage), `dvc repro` is run again,
and the model, metrics and curves equal an uninterrupted run's; a finetune checkpoint made on a base model
that pretrain has since replaced is refused in one log line and training starts afresh.

The uninterrupted reference runs the stage script as DVC runs it, but outside DVC: DVC's run cache would
otherwise hand the rerun its outputs instead of running the stage (a crashed run is never in that cache).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_pipeline import copy_repository, dvc, sh

PRETRAIN_STEPS, FINETUNE_STEPS = 40, 30
TINY = {  # a few seconds per stage on 2 CPU cores; fp32 on one thread, so reruns are reproducible
    "hardware": {"device": "cpu", "precision": "fp32", "num_threads": 1},
    "pretrain": {
        "tokenizer": {"vocab_size": 512},
        "model": {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "context": 64},
        "steps": PRETRAIN_STEPS, "batch_size": 8, "warmup_steps": 4, "log_every": 4, "eval_every": 8,
        "eval_batches": 2, "checkpoint_every": 8,
    },
    "finetune": {
        "max_steps": FINETUNE_STEPS, "checkpoint_steps": 5, "eval_steps": 10, "logging_steps": 2, "batch_size": 2,
        "gradient_accumulation": 1, "max_seq_length": 128, "lora": {"r": 4, "alpha": 8},
    },
}
OUTPUTS = {
    "pretrain": ["models/base", "metrics/pretrain.json", "metrics/pretrain"],
    "finetune": ["models/finetuned", "metrics/finetune.json", "metrics/finetune"],
}


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` laid over it, nested sections merged key by key."""
    return {**base, **{k: merge(base[k], v) if isinstance(v, dict) else v for k, v in over.items()}}


def set_params(ws: Path, over: dict) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text(encoding="utf-8"))
    (ws / "params.yaml").write_text(yaml.safe_dump(merge(params, over), allow_unicode=True, sort_keys=False),
                                    encoding="utf-8")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A git+DVC copy of the repository with tiny training params, split data ready."""
    ws = copy_repository(tmp_path_factory.mktemp("resume"))
    set_params(ws, TINY)
    sh(ws, "git", "init", "-q")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "-c", "user.email=ci@langlift.invalid", "-c", "user.name=ci", "commit", "-qm", "clone")
    dvc(ws, "repro", "split")
    return ws


def clear(ws: Path, stage: str) -> None:
    """Remove a stage's outputs and DVC's run cache, as they are after a first run that crashed."""
    for path in OUTPUTS[stage] + [".dvc/cache/runs"]:
        target = ws / path
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def kill_when(ws: Path, stage: str, ready: str) -> None:
    """Start `dvc repro <stage>` and SIGKILL its whole process group (dvc, shell, stage) once ``ready`` exists."""
    log = ws / f".{stage}-killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", stage], cwd=ws, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not (ws / ready).exists():
            assert proc.poll() is None, f"`dvc repro {stage}` ended before {ready} appeared:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{ready} did not appear"
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def curves(ws: Path, stage: str) -> dict[str, list[tuple[int, float]]]:
    """Every dvclive curve of the stage: (step, value) rows by metric."""
    root = ws / "metrics" / stage / "plots" / "metrics"
    return {str(tsv.relative_to(root)): [(int(r.split("\t")[0]), float(r.split("\t")[1]))
                                         for r in tsv.read_text().splitlines()[1:]]
            for tsv in sorted(root.rglob("*.tsv"))}


def snapshot(ws: Path, stage: str, weights: str) -> dict:
    """What an uninterrupted and a resumed run must agree on: weights, metrics and curves."""
    return {"weights": load_file(ws / weights), "metrics": json.loads((ws / f"metrics/{stage}.json").read_text()),
            "curves": curves(ws, stage)}


def assert_same(got: dict, want: dict, keys: list[str], atol: float) -> None:
    assert got["weights"].keys() == want["weights"].keys()
    for name, tensor in want["weights"].items():
        torch.testing.assert_close(got["weights"][name], tensor, atol=atol, rtol=0)
    for key in keys:
        assert got["metrics"][key] == pytest.approx(want["metrics"][key], abs=atol), key
    assert got["curves"].keys() == want["curves"].keys()
    for name, rows in want["curves"].items():
        assert [s for s, _ in got["curves"][name]] == [s for s, _ in rows], f"{name}: steps differ"
        assert [v for _, v in got["curves"][name]] == pytest.approx([v for _, v in rows], abs=atol), name


def test_pretrain_killed_mid_run_resumes_under_dvc_repro(ws):
    sh(ws, sys.executable, "stages/pretrain.py", "--fresh")
    want = snapshot(ws, "pretrain", "models/base/model.safetensors")
    shutil.rmtree(ws / "checkpoints/pretrain")  # else the rerun would resume its last step
    clear(ws, "pretrain")

    kill_when(ws, "pretrain", "checkpoints/pretrain/step-00000008/state.json")
    assert not (ws / "models/base").exists()
    done = sorted(p.name for p in (ws / "checkpoints/pretrain").glob("step-*"))
    assert done and done[-1] < f"step-{PRETRAIN_STEPS:08d}", f"the kill came too late: {done}"

    out = dvc(ws, "repro", "pretrain")
    assert f"resumed from checkpoints/pretrain/{done[-1]} at step" in out, out
    assert "made by another run" not in out
    got = snapshot(ws, "pretrain", "models/base/model.safetensors")
    assert got["metrics"]["resumed_from_step"] == int(done[-1][5:])
    assert_same(got, want, ["train_loss", "val_loss", "initial_val_loss"], atol=1e-5)


@pytest.fixture
def pretrained(ws) -> Path:
    """The workspace with the base model made (or kept) by `dvc repro pretrain`."""
    dvc(ws, "repro", "pretrain")
    return ws


def test_finetune_killed_mid_run_resumes_under_dvc_repro(pretrained):
    ws = pretrained
    sh(ws, sys.executable, "stages/finetune.py", "--fresh")
    want = snapshot(ws, "finetune", "models/finetuned/adapter_model.safetensors")
    clear(ws, "finetune")

    kill_when(ws, "finetune", ".cache/finetune/default/checkpoint-10/live")
    assert not (ws / "models/finetuned").exists()
    assert not (ws / f".cache/finetune/default/checkpoint-{FINETUNE_STEPS}").exists(), "the kill came too late"

    out = dvc(ws, "repro", "finetune")
    assert "resuming from .cache/finetune/default/checkpoint-" in out and "made by another run" not in out
    got = snapshot(ws, "finetune", "models/finetuned/adapter_model.safetensors")
    assert got["metrics"]["tokens_per_second"] is None  # it did resume
    assert_same(got, want, ["train_loss", "train_loss_first", "eval_loss", "eval_loss_start"], atol=1e-5)


def test_finetune_refuses_a_checkpoint_made_on_a_replaced_base_model(pretrained):
    ws = pretrained
    params = (ws / "params.yaml").read_text(encoding="utf-8")
    try:
        set_params(ws, {"lr": 1e-3})  # a finetune experiment, killed
        kill_when(ws, "finetune", ".cache/finetune/default/checkpoint-5/live")
        set_params(ws, {"pretrain": {"lr": 1e-3}})  # then pretrain reruns: another base model, the same name
        out = dvc(ws, "repro", "finetune")
    finally:
        (ws / "params.yaml").write_text(params, encoding="utf-8")
    assert "Running stage 'pretrain'" in out and "Running stage 'finetune'" in out
    refused = [line for line in out.splitlines() if ".cache/finetune/default: the checkpoints were made by" in line]
    assert len(refused) == 1, out
    assert "(base_model: checkpoint 'sha256:" in refused[0] and "starting fresh" in refused[0], refused
    assert "; " not in refused[0].split("(", 1)[1], f"only the base model differs: {refused[0]}"
    assert "resuming from" not in out
    metrics = json.loads((ws / "metrics/finetune.json").read_text())
    assert metrics["steps"] == FINETUNE_STEPS and metrics["tokens_per_second"] is not None  # from step 0
