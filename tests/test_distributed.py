"""Multi-process training (DDP over gloo on CPU) through the unchanged stage scripts, launched by
``hardware.processes: 2``: 2 processes x batch b train the same curve as 1 process x batch 2b, only the main
process writes, a DDP run resumes its checkpoint; the shipped accelerate configs parse and fit the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, link_languages, write_jsonl
from safetensors.torch import load_file
from test_finetune import make_params, rows
from test_pretrain import corpus, small_params

from langlift import finetune as F
from langlift import hardware
from langlift import params as P
from langlift.errors import LangliftError
from langlift.pretrain import Paths, run

RTOL = 1e-4  # fp32 on CPU: 2 x b vs 1 x 2b differ only in the order of float sums
CONFIGS = REPO / "configs" / "accelerate"


def project(root: Path, params: P.Params) -> Path:
    """A scratch project in ``root``: params.yaml, the repository's languages/ and configs/."""
    root.mkdir(parents=True, exist_ok=True)
    link_languages(root)
    (root / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), allow_unicode=True),
                                      encoding="utf-8")
    return root


def launch(root: Path, stage: str) -> str:
    """Run ``stages/<stage>.py`` as DVC would (``python stages/<stage>.py``) in ``root``; its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done.stdout + done.stderr


def curve(live: Path, name: str) -> tuple[list[int], list[float]]:
    """Steps and values of one dvclive curve (``train/loss``, ``eval/loss``)."""
    rows_ = [r.split("\t") for r in (live / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()[1:]]
    return [int(r[0]) for r in rows_], [float(r[-1]) for r in rows_]


def assert_same_curves(a: Path, b: Path, names: tuple[str, ...]) -> None:
    for name in names:
        (steps_a, va), (steps_b, vb) = curve(a, name), curve(b, name)
        assert steps_a == steps_b, name
        torch.testing.assert_close(torch.tensor(vb), torch.tensor(va), rtol=RTOL, atol=0, msg=name)


def test_pretrain_two_processes_match_one_with_double_batch_and_resume(tmp_path):
    kw = dict(steps=8, log_every=2, eval_every=4, checkpoint_every=4, eval_batches=2)
    data = tmp_path / "data"
    write_jsonl(data / "corpus_train.jsonl", corpus(120))
    write_jsonl(data / "corpus_val.jsonl", corpus(10, start=1600))
    one = run(small_params(tmp_path / "one", batch_size=8, **kw),
              Paths(train=data / "corpus_train.jsonl", val=data / "corpus_val.jsonl", model=tmp_path / "one/base",
                    metrics=tmp_path / "one/pretrain.json", live=tmp_path / "one/live"))

    two = small_params(tmp_path, batch_size=4, **kw, checkpoint_dir="checkpoints/pretrain")
    two.hardware.processes = 2
    root = project(tmp_path / "two", two)
    shutil.copytree(data, root / "data" / "split")
    out = launch(root, "pretrain")
    assert "accelerate.commands.launch --config_file configs/accelerate/cpu2.yaml --num_processes 2" in out
    summaries = [line for line in out.splitlines() if line.startswith("pretrain: models/base: 8 steps")]
    assert len(summaries) == 1  # one summary line, from the main process
    assert out.count("hardware: num_threads = ") == 1  # the other rank logs warnings only
    m = json.loads((root / "metrics/pretrain.json").read_text())
    assert m["processes"] == 2 and m["tokens_seen"] == one["tokens_seen"] and m["hardware.num_threads"] == 1
    assert_same_curves(tmp_path / "one/live", root / "metrics/pretrain", ("train/loss", "eval/loss"))
    assert m["val_loss"] == pytest.approx(one["val_loss"], rel=RTOL)
    a, b = load_file(tmp_path / "one/base/model.safetensors"), load_file(root / "models/base/model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=RTOL, atol=1e-5)
    ckpt = root / "checkpoints/pretrain"
    assert {p.name for p in (ckpt / "step-00000008").glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"}  # each rank's RNG, for its resume

    # a crash after step 4: DVC deletes the outputs, the rerun resumes step 4 in both processes
    shutil.rmtree(ckpt / "step-00000008")
    shutil.rmtree(root / "metrics/pretrain")
    shutil.rmtree(root / "models/base")
    launch(root, "pretrain")
    resumed = json.loads((root / "metrics/pretrain.json").read_text())
    assert resumed["resumed_from_step"] == 4 and resumed["processes"] == 2
    assert resumed["val_loss"] == pytest.approx(m["val_loss"], rel=1e-6)
    assert_same_curves(tmp_path / "one/live", root / "metrics/pretrain", ("train/loss", "eval/loss"))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_finetune_two_processes_match_one_with_double_batch(method, tmp_path, monkeypatch, tiny_llama_dir):
    data = rows(16)
    ft = dict(method=method, max_steps=4, eval_steps=2)
    monkeypatch.chdir(project(tmp_path / "one", make_params(tiny_llama_dir, batch_size=4, **ft)))
    write_jsonl(Path("data/split/train.jsonl"), data)
    write_jsonl(Path("data/split/val.jsonl"), data[:8])
    one, _ = F.run(P.load("params.yaml"))

    two = make_params(tiny_llama_dir, batch_size=2, **ft)
    two.hardware.processes = 2
    root = project(tmp_path / "two", two)
    shutil.copytree(tmp_path / "one/data", root / "data")
    out = launch(root, "finetune")
    summaries = [line for line in out.splitlines() if line.startswith("finetune: models/finetuned")]
    assert len(summaries) == 1  # one summary line, from the main process
    m = json.loads((root / "metrics/finetune.json").read_text())
    assert m["steps"] == one["steps"] == 4 and m["method"] == method
    assert_same_curves(tmp_path / "one/metrics/finetune", root / "metrics/finetune", ("train/loss",))
    assert m["train_loss"] == pytest.approx(one["train_loss"], rel=RTOL)
    # the trainer averages per-batch mean losses over examples: batches of 2 weigh tokens unlike batches of 4
    assert m["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-3)  # measured: 3e-5 to 5e-5
    card = (root / "models/finetuned/README.md").read_text()
    assert card.count("## ") == (tmp_path / "one/models/finetuned/README.md").read_text().count("## ")
    assert not (root / ".cache/finetune/default").exists()  # the main process cleaned up after both


def test_launch_command_only_when_asked_and_not_inside_a_launch(monkeypatch, tmp_path):
    hw = P.Hardware(device="cpu")
    assert hardware.launch_command(hw, "stages/pretrain.py", []) is None  # one process: train here
    hw = P.Hardware(device="cpu", processes=3)
    monkeypatch.chdir(REPO)
    cmd = hardware.launch_command(hw, "stages/finetune.py", ["--name", "x"])
    assert cmd[1:] == ["-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu2.yaml",
                       "--num_processes", "3", "--num_machines", "1", "--main_process_port", "0",
                       "--mixed_precision", "no", "stages/finetune.py", "--name", "x"]
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert hardware.launch_command(hw, "stages/finetune.py", []) is None  # already one of the 3
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LangliftError, match="hardware.accelerate_config: configs/accelerate/cpu2.yaml not found"):
        hardware.launch_command(hw, "stages/pretrain.py", [])


def test_threads_and_precision_under_a_launch(monkeypatch):
    cpu = hardware.CpuState(cores=8, quota=None, busy=3.0)
    assert hardware.choose_threads(cpu)[0] == 5  # alone: the cores other work leaves free
    threads, why = hardware.choose_threads(cpu, processes=2)
    assert threads == 4 and "shared by 2 training processes" in why  # siblings split the cores, load aside
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: {"avx512_bf16"})
    assert hardware._choose_precision("cpu")[0] == "fp32"  # ranks never time their own bf16 probe


def _model_layer_class(preset: str) -> str:
    """The decoder layer class of the model pretrain builds from ``preset``."""
    from transformers import AutoModelForCausalLM

    from langlift import model as llm

    config = llm.build_config(llm.resolve(preset), 512, 1, 2, 0, "sdpa")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return type(model.model.layers[0]).__name__


def test_accelerate_configs_parse_and_fit_the_model():
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DistributedType

    args = vars(launch_command_parser().parse_args(["x.py"]))
    params = P.load(REPO / "params.yaml")
    configs = {p.stem: load_config_from_file(str(p)) for p in sorted(CONFIGS.glob("*.yaml"))}
    assert set(configs) == {"cpu2", "ddp", "fsdp", "deepspeed_zero2"}
    for name, c in configs.items():
        assert isinstance(c, ClusterConfig), name  # unknown keys would have raised
        assert c.mixed_precision == "no", f"{name}: precision is params' hardware.precision"
        assert c.num_machines == 1 and c.machine_rank == 0, name
    assert configs["cpu2"].distributed_type == DistributedType.MULTI_GPU and not configs["cpu2"].use_cpu
    assert configs["cpu2"].num_processes == 2 and configs["cpu2"].main_process_port == 0

    fsdp = configs["fsdp"]
    assert fsdp.distributed_type == DistributedType.FSDP
    assert all(k in args for k in fsdp.fsdp_config), "fsdp_config: a key accelerate launch does not know"
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == _model_layer_class(params.pretrain.preset)
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"

    ds = configs["deepspeed_zero2"]
    assert ds.distributed_type == DistributedType.DEEPSPEED
    assert all(k in args for k in ds.deepspeed_config), "deepspeed_config: a key accelerate launch does not know"
    assert ds.deepspeed_config["zero_stage"] == 2
    assert ds.deepspeed_config["gradient_accumulation_steps"] == params.pretrain.grad_accum
    assert ds.deepspeed_config["gradient_clipping"] == params.pretrain.grad_clip
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return
    from accelerate.utils import DeepSpeedPlugin

    DeepSpeedPlugin(**{k: v for k, v in ds.deepspeed_config.items() if k != "offload_param_device"})
