"""The finetune stage on tiny real models: LoRA, QLoRA 4-bit and full fine-tuning through TRL's SFTTrainer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import az_sentences, en_sentences, link_languages, write_jsonl
from langlift import finetune as F
from langlift import modelref
from langlift import params as P
from langlift.errors import DataError, LangliftError
from langlift.evaluate.models import load_finetuned, read_manifest
from langlift.params import Params
from langlift.templates import IGNORE

AZ = {"instruction": "### Təlimat:\n", "input": "### Giriş:\n", "response": "### Cavab:\n"}
ANSWER = "Bakı şəhəridir."


def rows(n: int, answer: str | None = None) -> list[dict]:
    """Short instruction records; ``answer`` fixes every output (a task the tiny model can learn fast)."""
    az, en = az_sentences(200), en_sentences(200)
    return [
        {"id": f"r{i}", "instruction": f"Tərcümə et: {en[i][:50]}", "input": "" if i % 3 else "qısa",
         "output": answer or az[i][:50], "lang": "az", "source": "test"}
        for i in range(n)
    ]


def make_params(base: Path, **ft) -> Params:
    params = {
        "seed": 7, "lr": 5e-3, "epochs": 1, "base_model": str(base),
        "language": "az",
        "hardware": {"device": "cpu", "precision": "fp32", "num_threads": 1, "gradient_checkpointing": False},
        "finetune": {
            "method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
            "batch_size": 4, "gradient_accumulation": 1, "max_seq_length": 256, "max_steps": 8,
            "logging_steps": 1, "eval_steps": 1000, "checkpoint_steps": 1000, "lr_scheduler": "constant",
            "warmup_ratio": 0.0, "resume": False, "templates": {"az": AZ},
        },
    }
    lora = ft.pop("lora", {})
    params["finetune"].update(ft)
    params["finetune"]["lora"].update(lora)
    return P.validate(params)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A repo-like working directory with train/val splits; the stage's relative outputs land here."""
    monkeypatch.chdir(tmp_path)
    link_languages(tmp_path)
    data = rows(16)
    write_jsonl(tmp_path / "data/split/train.jsonl", data)
    write_jsonl(tmp_path / "data/split/val.jsonl", data[:8])  # a slice of train: its loss is the training loss
    return tmp_path


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_trains_and_saves_exactly_the_declared_adapter(workdir, tiny_llama_dir):
    (workdir / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  split:\n    cmd: python stages/split.py\n    outs:\n"
        "    - path: data/split/train.jsonl\n      md5: 0123456789abcdef0123456789abcdef\n      size: 10\n"
    )
    (workdir / "data/raw").mkdir(parents=True)
    (workdir / "data/raw/manifest.json").write_text(json.dumps({"sources": [{"name": "alpaca_en", "license": "CC BY-NC 4.0"}]}))
    params = make_params(tiny_llama_dir, lora={"target_modules": ["q_proj", "v_proj"], "use_rslora": True}, merge=True)
    metrics, model = F.run(params)

    assert metrics["eval_loss"] < metrics["eval_loss_start"] - 0.05
    out = workdir / "models/finetuned"
    saved = json.loads((out / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"], saved["lora_dropout"], saved["use_rslora"], saved["use_dora"]) == (
        8, 16, 0.0, True, False)
    assert sorted(saved["target_modules"]) == ["q_proj", "v_proj"]
    assert metrics["adapter.target_modules"] == "q_proj,v_proj" and metrics["adapter.use_rslora"] is True
    # trainable parameters: r * (in + out) for every targeted linear layer of the base model, counted here
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    expected = sum(8 * (m.in_features + m.out_features) for n, m in base.named_modules()
                   if n.endswith(("q_proj", "v_proj")))
    assert metrics["trainable_params"] == expected
    assert metrics["hardware.precision"] == "fp32" and metrics["hardware.gradient_checkpointing"] is False

    info = json.loads((out / "langlift.json").read_text())
    assert info["base_model"] == str(tiny_llama_dir) and info["method"] == "lora"
    assert info["base_model_fingerprint"] == metrics["base_model_fingerprint"] == modelref.fingerprint(str(tiny_llama_dir))
    assert info["adapter_config"]["use_rslora"] is True and info["template"]["source"] == "model"
    card = (out / "README.md").read_text()
    assert "base_model:" not in card and f"`{tiny_llama_dir}`, a local model that is not on the hub" in card
    assert "use_rslora" in card and "| eval_loss |" in card
    assert "| `data/split/train.jsonl` | `0123456789abcdef0123456789abcdef` |" in card
    assert "license: cc-by-nc-4.0" in card and "- alpaca_en: CC BY-NC 4.0" in card
    assert (workdir / "metrics/finetune/plots/metrics/train/loss.tsv").exists()
    assert json.loads((workdir / "metrics/finetune.json").read_text())["steps"] == 8

    reloaded = load_finetuned(str(out), "cpu", torch.float32).model
    ids = torch.randint(3, 300, (2, 24))
    assert torch.equal(logits(model, ids), logits(reloaded, ids))
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "merged")  # finetune.merge: a standalone model
    assert torch.allclose(logits(merged, ids), logits(reloaded, ids), atol=1e-5)


def test_the_adapter_check_compares_the_saved_and_wrapped_adapter_with_params(workdir, tiny_llama_dir):
    params = make_params(tiny_llama_dir, max_steps=1)  # target_modules: all-linear
    metrics, model = F.run(params)  # run() checks the adapter: all-linear passes
    out, ft = workdir / "models/finetuned", params.finetune
    assert metrics["adapter.modules"] == 14  # 2 layers x 7 linear layers; the tied output layer excluded
    assert F.verify_adapter(ft, model, out)["r"] == 8
    F.verify_adapter(ft, load_finetuned(str(out), "cpu", torch.float32).model, out)  # as loaded from disk

    for change, message in [
        ({"r": 4}, r"r: params 4, saved 8; .*r: params 4, 14 wrapped modules differ \(model\.layers\.0\..*: 8\)"),
        ({"alpha": 8}, r"lora_alpha: params 8, saved 16; .*scaling: params 1\.0, 14 wrapped .*: 2\.0\)"),
        ({"dropout": 0.1}, r"lora_dropout: params 0\.1, saved 0\.0; .*lora_dropout: params 0\.1, 14 wrapped"),
        ({"use_rslora": True}, r"use_rslora: params True, saved False; .*scaling: params 5\.65"),
        ({"target_modules": ["q_proj", "v_proj"]},
         r"target_modules: 10 saved but not in params \(model\.layers\.0\.mlp\.down_proj, .*, \.\.\.\); "
         r"target_modules: 10 wrapped but not in params"),
    ]:
        mutated = ft.model_copy(update={"lora": ft.lora.model_copy(update=change)})
        with pytest.raises(LangliftError, match=message):
            F.verify_adapter(mutated, model, out)


def test_a_config_changed_after_it_was_declared_is_caught(workdir, tiny_llama_dir):
    params = make_params(tiny_llama_dir, max_steps=1)
    prep = F.prepare(params, paths=F.Paths.for_run(None))
    prep.trainer.train()
    model = prep.trainer.model
    assert model.peft_config["default"] is prep.declared  # why comparing the two could never fail
    prep.declared.r = 999  # the applied config follows: only a config built afresh from params notices
    prep.trainer.save_model(str(workdir / "saved"))
    with pytest.raises(LangliftError, match=r"saved: the adapter differs .* r: params 8, saved 999$"):
        F.verify_adapter(params.finetune, model, workdir / "saved")

    config = json.loads((workdir / "saved/adapter_config.json").read_text())
    config.update(r=8, target_modules=sorted(config["target_modules"])[1:], modules_to_save=["lm_head"])
    (workdir / "saved/adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(LangliftError, match=r"modules_to_save: params None, saved \['lm_head'\]; "
                                            r"target_modules: 1 in params but not saved \(model\.layers\.0\.mlp\.down_proj\)$"):
        F.verify_adapter(params.finetune, model, workdir / "saved")


@pytest.mark.parametrize("method", ["qlora", "lora-8bit"])
def test_quantised_methods_lower_the_loss(workdir, tiny_llama_dir, method):
    import bitsandbytes as bnb

    params = make_params(tiny_llama_dir, method=method, lora={"use_dora": method == "qlora"})  # QDoRA
    metrics, model = F.run(params)
    assert metrics["eval_loss"] < metrics["eval_loss_start"] - 0.02
    q = model.config.quantization_config
    if method == "qlora":  # 4-bit NF4 with double quantisation
        assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
        assert metrics["adapter.use_dora"] is True
        layer = bnb.nn.Linear4bit
    else:
        assert q.load_in_8bit
        layer = bnb.nn.Linear8bitLt
    assert len([m for m in model.modules() if isinstance(m, layer)]) == 14  # all linear layers but the tied output
    assert metrics["adapter.modules"] == 14
    saved = json.loads((workdir / "models/finetuned/adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["use_dora"] == (method == "qlora")


def test_full_finetune_learns_to_answer_and_stop_and_chat_streams_it(workdir, tiny_llama_dir):
    write_jsonl(workdir / "data/split/train.jsonl", rows(16, answer=ANSWER))
    write_jsonl(workdir / "data/split/val.jsonl", rows(4, answer=ANSWER))
    metrics, model = F.run(make_params(tiny_llama_dir, method="full", max_steps=40))
    assert metrics["eval_loss"] < metrics["eval_loss_start"] / 3
    assert metrics["trainable_params"] == metrics["total_params"] == sum(p.numel() for p in model.parameters())
    out = workdir / "models/finetuned"
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()

    reloaded = load_finetuned(str(out), "cpu", torch.float32).model
    assert read_manifest(out)["adapter_config"] is None
    ids = torch.randint(3, 300, (2, 24))
    assert torch.equal(logits(model, ids), logits(reloaded, ids))

    from stages.chat import main as chat

    result = CliRunner().invoke(chat, ["--model", str(out), "--max-new-tokens", "40"],
                                input="Azərbaycanın paytaxtı?\nParisin paytaxtı hansı ölkədir?\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [ANSWER, ANSWER]  # streamed, and it stopped at EOS each time


def _eos_tokenizer_model(src: Path, dst: Path) -> Path:
    """A copy of the tiny model whose tokenizer pads with EOS (as many base models do)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    tok.pad_token = tok.eos_token
    AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


def test_collated_batches_label_eos_at_the_end_of_every_response(workdir, tiny_llama_dir):
    base = _eos_tokenizer_model(tiny_llama_dir, workdir / "eos_pad_model")
    paths = F.Paths.for_run(None)
    prep = F.prepare(make_params(base), paths=paths)
    tok = prep.trainer.processing_class
    assert tok.pad_token_id == tok.eos_token_id
    batch = next(iter(prep.trainer.get_train_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1  # padding present
    for row, n in zip(range(batch["input_ids"].shape[0]), lengths.tolist()):
        labels, mask = batch["labels"][row], batch["attention_mask"][row]
        last = int((labels != IGNORE).nonzero().max())
        assert labels[last] == tok.eos_token_id == batch["input_ids"][row, last]
        assert mask[last] == 1 and last < n  # the EOS is a real token, not padding
        assert (labels[n:] == IGNORE).all()  # padding (the same id as EOS) carries no label

    packed = F.prepare(make_params(base, packing=True), paths=paths)
    batch = next(iter(packed.trainer.get_train_dataloader()))
    labels, starts = batch["labels"][0], batch["cu_seq_lens_q"].tolist()
    for a, b in zip(starts, starts[1:]):  # every packed example ends its response with a labelled EOS
        seg = labels[a:b]
        assert seg[int((seg != IGNORE).nonzero().max())] == tok.eos_token_id


@pytest.mark.parametrize("fused_lm_head", [False, True], ids=["model-loss", "trl-fused-head"])
def test_packed_and_unpacked_training_give_the_same_loss_curve(workdir, tiny_llama_dir, fused_lm_head):
    write_jsonl(workdir / "data/split/train.jsonl", rows(8))
    (workdir / "data/split/val.jsonl").unlink()
    curves, batches = {}, {}
    for packing in (False, True):
        # one optimizer step sees all 8 examples: unpacked as 8 padded rows, packed as one row of 8 examples
        params = make_params(tiny_llama_dir, packing=packing, batch_size=8, max_seq_length=2048, max_steps=4,
                             fused_lm_head=fused_lm_head)
        prep = F.prepare(params, paths=F.Paths.for_run(f"p{packing}"))
        batches[packing] = next(iter(prep.trainer.get_train_dataloader()))
        prep.trainer.train()
        curves[packing] = [h["loss"] for h in prep.trainer.state.log_history if "loss" in h]
        model = prep.trainer.model
    assert batches[True]["input_ids"].shape[0] == 1 and len(batches[True]["cu_seq_lens_q"]) == 9
    assert curves[True] == pytest.approx(curves[False], rel=1e-4)
    assert curves[False][-1] < curves[False][0]

    # control: the same packed row with attention across example boundaries gives a different loss,
    # so the agreement above is the block-diagonal mask at work
    b = batches[True]
    with torch.no_grad():
        separate = model(input_ids=b["input_ids"], position_ids=b["position_ids"], labels=b["labels"]).loss
        crossing = model(input_ids=b["input_ids"], attention_mask=torch.ones_like(b["input_ids"]),
                         position_ids=b["position_ids"], labels=b["labels"]).loss
    assert abs(float(separate) - float(crossing)) > 1e-3


def test_matrix_over_two_architectures_yields_two_adapters(workdir, tiny_llama_dir, tiny_qwen2_dir):
    import yaml

    from stages.finetune import main as stage

    params = make_params(tiny_llama_dir, max_steps=2).model_dump(mode="json")
    params["finetune"]["matrix"] = [{"name": "llama", "base_model": str(tiny_llama_dir)},
                                    {"name": "qwen2", "base_model": str(tiny_qwen2_dir)}]
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    for entry in params["finetune"]["matrix"]:
        result = CliRunner().invoke(stage, ["--name", entry["name"], "--base-model", entry["base_model"]])
        assert result.exit_code == 0, result.output

    found = {}
    for name, arch in (("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")):
        info = json.loads((workdir / f"models/matrix/{name}/langlift.json").read_text())
        metrics = json.loads((workdir / f"metrics/matrix/{name}.json").read_text())
        assert (workdir / f"models/matrix/{name}/adapter_model.safetensors").exists()
        assert metrics["steps"] == 2 and info["base_model"] == metrics["base_model"]
        model = load_finetuned(str(workdir / f"models/matrix/{name}"), "cpu", torch.float32).model
        assert type(model.get_base_model()).__name__ == arch
        found[name] = metrics["trainable_params"]
    assert found["llama"] != found["qwen2"]  # different MLP widths: different adapters
    assert not (workdir / "models/finetuned").exists()


def test_bad_inputs_fail_with_clear_errors(workdir, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LangliftError, match="'nobody/no-such-model' cannot be loaded.*HF_HUB_OFFLINE.*hf download"):
        F.run(make_params(tiny_llama_dir), base_model="nobody/no-such-model")
    with pytest.raises(LangliftError, match="run `dvc repro pretrain` first"):
        F.resolve_base_model("models/base")

    with pytest.raises(LangliftError, match=r"target_modules: \['qkv_proj'\] match no linear layer.*q_proj"):
        F.run(make_params(tiny_llama_dir, lora={"target_modules": ["q_proj", "qkv_proj"]}))

    with pytest.raises(LangliftError, match="use_dora on an 8-bit base fails on CPU"):
        F.run(make_params(tiny_llama_dir, method="lora-8bit", lora={"use_dora": True}))

    with pytest.raises(LangliftError, match="finetune.method: .*got 'prefix'"):
        make_params(tiny_llama_dir, method="prefix")

    bad = rows(3)
    del bad[2]["output"]
    write_jsonl(workdir / "data/split/train.jsonl", bad)
    with pytest.raises(DataError, match=r"train.jsonl:3: field 'output': missing"):
        F.run(make_params(tiny_llama_dir))


def test_overlong_examples_are_counted_in_metrics(workdir, tiny_llama_dir):
    data = rows(8) + [dict(rows(1)[0], id="long", output=" ".join(["çox uzun cavab"] * 80))]
    write_jsonl(workdir / "data/split/train.jsonl", data)
    metrics, _ = F.run(make_params(tiny_llama_dir, max_seq_length=96, overlong="truncate", max_steps=1))
    assert metrics["train_truncated"] >= 1 and metrics["train_examples"] + metrics["train_dropped_overlong"] == 9
    metrics, _ = F.run(make_params(tiny_llama_dir, max_seq_length=96, overlong="drop", max_steps=1))
    assert metrics["train_truncated"] == 0 and metrics["train_dropped_overlong"] >= 1


def _run_interrupted_at(params: dict, step: int) -> None:
    """Run the stage and raise KeyboardInterrupt (Ctrl-C) once its optimizer reaches ``step``."""
    real = F.live_callback

    def interrupting(live):
        callback = real(live)

        def on_step_end(args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt

        callback.on_step_end = on_step_end
        return callback

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(F, "live_callback", interrupting)
        F.run(params)


def test_an_interrupted_run_resumes_from_its_checkpoint(workdir, tiny_llama_dir, caplog):
    params = make_params(tiny_llama_dir, max_steps=6, checkpoint_steps=2, resume=True)
    paths = F.Paths.for_run(None)
    _run_interrupted_at(params, 5)  # after checkpoint-4 was written
    assert sorted(p.name for p in paths.checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    start = json.loads((paths.checkpoints / "start.json").read_text())["eval_loss_start"]
    shutil.rmtree(paths.live)  # DVC deletes the curves (a stage output) before it reruns the stage

    metrics, _ = F.run(params)
    assert metrics["steps"] == 6 and metrics["tokens_per_second"] is None  # continued, not restarted
    assert metrics["eval_loss_start"] == start and metrics["eval_loss"] < start
    curves = paths.live / "plots" / "metrics"
    assert [row.split("\t")[0] for row in (curves / "train/loss.tsv").read_text().splitlines()[1:]] == [
        "1", "2", "3", "4", "5", "6"]  # the curve from before the interruption is back, no step twice
    assert (curves / "eval/loss.tsv").read_text().splitlines()[1].split("\t")[:2] == ["0", str(start)]
    assert not paths.checkpoints.exists()  # cleaned up once the model is saved

    changed = params.model_copy(update={"lr": 1e-3})
    _run_interrupted_at(params, 5)
    caplog.clear()
    assert F.prepare(changed, paths=paths).resume is None  # other params: the stale checkpoint is not used
    refused = [r.getMessage() for r in caplog.records if "made by another run" in r.getMessage()]
    assert len(refused) == 1 and "lr: checkpoint 0.005, now 0.001" in refused[0], refused
    assert "base_model" not in refused[0] and not list(paths.checkpoints.glob("checkpoint-*"))
