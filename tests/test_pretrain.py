"""The pretrain stage on the shipped Azerbaijani sample: falling loss, exact resume, bad input."""

from __future__ import annotations

import _thread
import copy
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import REPO, az_sentences, write_jsonl
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from langlift import model as llm
from langlift import params as P
from langlift.packing import doc_position_ids
from langlift.params import Pretrain
from langlift.pretrain import Paths, lr_at, run
from langlift.records import make


def corpus(n_docs: int, per_doc: int = 8, start: int = 0) -> list[dict]:
    lines = az_sentences(2000)[start:]
    return [make("corpus", "test", text=" ".join(lines[i * per_doc : (i + 1) * per_doc]), lang="az")
            for i in range(n_docs)]


def small_params(tmp: Path, **pretrain) -> P.Params:
    params = P.load(REPO / "params.yaml").model_dump()
    p = params["pretrain"]
    p["tokenizer"].update(vocab_size=512)
    p["model"].update(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, context=64)
    p.update(steps=40, batch_size=8, grad_accum=1, lr=3e-3, warmup_steps=4, log_every=5, eval_every=10,
             eval_batches=4, checkpoint_every=20, keep_checkpoints=2, checkpoint_dir=str(tmp / "ckpt"))
    p.update(pretrain)
    params["hardware"].update(precision="fp32", num_threads=1, device="cpu")  # deterministic
    return P.validate(params)


def paths(tmp: Path, name: str = "out") -> Paths:
    return Paths(train=tmp / "corpus_train.jsonl", val=tmp / "corpus_val.jsonl", model=tmp / name / "base",
                 metrics=tmp / name / "pretrain.json", live=tmp / name / "live")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "corpus_train.jsonl", corpus(120))
    write_jsonl(tmp_path / "corpus_val.jsonl", corpus(10, start=1600))
    return tmp_path


def test_loss_falls_and_the_model_loads(data_dir):
    m = run(small_params(data_dir), paths(data_dir))
    assert m["val_loss"] < m["initial_val_loss"] - 1.0, m
    assert m["steps"] == 40 and m["vocab_size"] == 512 and m["hardware.precision"] == "fp32"
    assert m["tokens_per_second"] > 0 and 0 < m["mfu"] < 1 and 1 < m["tokenizer_fertility"] < 5
    assert json.loads((data_dir / "out" / "pretrain.json").read_text()) == m
    # dvclive curves that `dvc plots show` reads
    curves = data_dir / "out" / "live" / "plots" / "metrics"
    train = (curves / "train" / "loss.tsv").read_text().splitlines()
    losses = [float(row.split("\t")[-1]) for row in train[1:]]
    assert len(losses) == 8 and losses[-1] < losses[0] - 1.0
    assert len((curves / "eval" / "perplexity.tsv").read_text().splitlines()) == 1 + 5  # steps 0,10,..,40
    # a Hugging Face model the finetune stage can load
    tok = AutoTokenizer.from_pretrained(data_dir / "out" / "base")
    model = AutoModelForCausalLM.from_pretrained(data_dir / "out" / "base")
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert "{% generation %}" in tok.chat_template and model.config.vocab_size == len(tok)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Salam"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_continued_pretraining_with_vocabulary_extension(data_dir, tiny_llama_dir):
    old = AutoTokenizer.from_pretrained(tiny_llama_dir)
    params = small_params(data_dir, init=str(tiny_llama_dir), extend_vocab=64, steps=10, eval_every=5)
    m = run(params, paths(data_dir))
    assert 0 < m["new_tokens"] <= 64 and m["vocab_size"] == len(old) + m["new_tokens"]
    assert m["val_loss"] < m["initial_val_loss"]
    tok = AutoTokenizer.from_pretrained(data_dir / "out" / "base")
    model = AutoModelForCausalLM.from_pretrained(data_dir / "out" / "base")
    assert model.config.vocab_size == len(tok) and model.config.num_hidden_layers == 2
    assert all(tok.get_vocab()[t] == i for t, i in old.get_vocab().items())


def _interrupt_when(path: Path) -> threading.Thread:
    def watch():
        while not path.exists():
            time.sleep(0.002)
        _thread.interrupt_main()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_resume_after_interruption_matches_uninterrupted(data_dir, caplog):
    kw = dict(steps=16, checkpoint_every=4, eval_every=8, log_every=4)
    full = run(small_params(data_dir / "a", **kw), paths(data_dir, "a"))

    params = small_params(data_dir / "b", **kw)
    _interrupt_when(data_dir / "b" / "ckpt" / "step-00000004" / "state.json")
    with pytest.raises(KeyboardInterrupt):
        run(params, paths(data_dir, "b"))
    assert not (data_dir / "b" / "base").exists()
    shutil.rmtree(data_dir / "b" / "live")  # DVC deletes the curves (a stage output) before it reruns the stage
    resumed = run(params, paths(data_dir, "b"))  # a plain rerun resumes
    assert 4 <= resumed["resumed_from_step"] < 16
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], abs=1e-5)
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], abs=1e-5)
    a = load_file(data_dir / "a" / "base" / "model.safetensors")
    b = load_file(data_dir / "b" / "base" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    rows = (data_dir / "b" / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
    assert [int(r.split("\t")[0]) for r in rows] == [4, 8, 12, 16]  # the curve before the crash is back, no step twice
    assert rows == (data_dir / "a" / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
    evals = (data_dir / "b" / "live" / "plots" / "metrics" / "eval" / "loss.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[0] for r in evals] == ["0", "8", "16"]
    assert len(list((data_dir / "b" / "ckpt").glob("step-*"))) == 2  # keep_checkpoints

    # resuming a finished run changes nothing and keeps its losses
    again = run(params, paths(data_dir, "b"))
    assert again["resumed_from_step"] == 16 and again["val_loss"] == resumed["val_loss"]
    assert again["initial_val_loss"] == full["initial_val_loss"] and again["tokens_per_second"] is None

    # a checkpoint of another run is refused in one line naming what differs, and training starts afresh
    other = small_params(data_dir / "b", **kw, lr=1e-3)
    other.seed += 1
    write_jsonl(data_dir / "corpus_train.jsonl", corpus(120, start=4))
    caplog.clear()
    fresh = run(other, paths(data_dir, "c"))
    refused = [r.getMessage() for r in caplog.records if "made by another run" in r.getMessage()]
    assert len(refused) == 1, refused
    assert "(loop.lr: checkpoint 0.003, now 0.001; seed: checkpoint 1234, now 1235; data.train: checkpoint" in refused[0]
    assert fresh["resumed_from_step"] == 0 and fresh["initial_val_loss"] != full["initial_val_loss"]
    states = [json.loads((p / "state.json").read_text()) for p in (data_dir / "b" / "ckpt").glob("step-*")]
    assert [s["identity"]["loop"]["lr"] for s in states] == [1e-3, 1e-3]  # the old checkpoints are gone

    assert run(other, paths(data_dir, "c"), fresh=True)["resumed_from_step"] == 0  # --fresh


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = Pretrain(steps=100, batch_size=1, lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_packed_positions_restart_after_each_eos():
    batch = torch.tensor([[5, 6, 2, 7, 8, 9, 2, 4], [2, 3, 3, 3, 3, 2, 1, 1]])
    assert doc_position_ids(batch, eos_id=2).tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 0, 1, 2, 3, 4, 0, 1]]


def test_az150m_preset_is_azllama_sized():
    arch = llm.resolve("az150m")
    config = llm.build_config(arch, arch["vocab_size"], 1, 2, 0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert 150e6 < n < 155e6
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.vocab_size) == (12, 768, 12, 4, 3072, 32000)


@pytest.fixture
def stage(monkeypatch, tmp_path):
    """Run ``stages/pretrain.py`` in-process from ``tmp_path`` with the given training corpus."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("stage_pretrain", REPO / "stages" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)

    def invoke(train: list[dict], **pretrain) -> tuple[int, str]:
        params = small_params(tmp_path, **pretrain)
        Path("params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), allow_unicode=True),
                                       encoding="utf-8")
        write_jsonl(Path("data/split/corpus_train.jsonl"), train)
        write_jsonl(Path("data/split/corpus_val.jsonl"), corpus(2))
        result = CliRunner().invoke(module.main, ["--params", "params.yaml"])
        return result.exit_code, result.output

    return invoke


@pytest.mark.parametrize("case, train, message", [
    ("empty", [], "corpus_train.jsonl: the corpus is empty"),
    ("short", corpus(30), "fewer than one sequence of 100000"),
    ("vocab", corpus(3), "the corpus supports only"),
])
def test_bad_corpus_is_a_clear_error(stage, case, train, message):
    pretrain = {"short": {"model": {"context": 100000}},
                "vocab": {"tokenizer": {"vocab_size": 8000, "min_frequency": 2, "reference": None}}}.get(case, {})
    code, output = stage(train, **pretrain)
    assert code == 1, output
    assert message in output and "Traceback" not in output
