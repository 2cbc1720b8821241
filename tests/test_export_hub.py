"""Hub export end to end: `stages/export.py --to hub` uploads to a local stand-in for the hub (HF_ENDPOINT),
and what the stand-in stored loads: the merged weights with transformers, the tokenizer's chat template (no
generation markers) with apply_chat_template, generation stopping at the tokenizer's EOS, the model card with
ModelCard.load (model-index holding the evaluate stage's metrics, dvc.lock hashes, base and licenses), and the
dataset card and files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, REVIEW_ANSWERS, link_languages, write_jsonl
from hub_server import HubServer

from langlift import modelcard as mc
from langlift import params as P
from langlift.errors import LangliftError
from langlift.export import hub
from langlift.export.model import (checked_generation_config, load_merged, load_tokenizer, strip_generation_markers,
                                   write_adapter)

TOKEN = "hf_test_0123456789secret"
GENERATION = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "bos_token_id": 1,
              "eos_token_id": 2, "pad_token_id": 0, "use_cache": True}
EVALUATE = {
    "base.ppl": 784.6, "finetuned.ppl": 810.9, "delta.ppl": 26.3,
    "base.bleu_en_az": 0.35, "finetuned.bleu_en_az": 1.5, "delta.bleu_en_az": 1.15,
    "base.instr_f1": 0.0, "finetuned.instr_f1": 1.3, "delta.instr_f1": 1.3,
    "base.sib200_acc": 12.25, "finetuned.sib200_acc": 14.7, "delta.sib200_acc": 2.45,
    "finetuned.gen_tokens_per_s": 53.7,
    "n.perplexity": 100, "reliable.perplexity": 1, "n.translation": 50, "reliable.translation": 1,
    "n.instructions": 8, "reliable.instructions": 0, "n.sib200": 204, "reliable.sib200": 1,
}
LOCK = {"models/finetuned": "9c1a522d98d8f342cbd94116785f1490.dir",
        "models/base": "8d7f6146abc21eb751220353466bb32b.dir",
        "data/split/train.jsonl": "ab669cdef08b8842f97ea77b3c2305ab",
        "data/split/test.jsonl": "42d29e94e2d35e9b94a7317f21509962",
        "data/split/corpus_val.jsonl": "3a017ee5e735d1b0bb747c0b0210b762"}


def _project(root, tiny_llama_dir, tiny_finetuned_dir):
    """A scratch repository as `dvc repro` leaves it: base and fine-tuned model, split data, metrics, dvc.lock."""
    link_languages(root)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copytree(tiny_llama_dir, root / "models/base")
    shutil.copytree(tiny_finetuned_dir, root / "models/finetuned")
    (root / "models/finetuned/generation_config.json").write_text(json.dumps(GENERATION))  # as finetune writes it
    info = json.loads((root / "models/finetuned/langlift.json").read_text())
    info["base_model"] = "models/base"
    (root / "models/finetuned/langlift.json").write_text(json.dumps(info))
    rows = [{"id": f"r{i}", "instruction": f"Sual {i}", "input": "", "output": f"Cavab {i}", "lang": "az",
             "source": "alpaca_en", "source_id": f"e{i}", "translation": {"backend": "memory"}} for i in range(6)]
    for split, part in (("train", rows[:4]), ("val", rows[4:5]), ("test", rows[5:])):
        write_jsonl(root / f"data/split/{split}.jsonl", part)
    (root / "data/raw").mkdir(parents=True)
    (root / "data/raw/manifest.json").write_text(json.dumps({"language": "az", "sources": [
        {"name": "alpaca_en", "kind": "instructions", "uri": "hf:tatsu-lab/alpaca", "license": "CC BY-NC 4.0"},
        {"name": "ntrex128_az", "kind": "corpus", "uri": "languages/az/data/ntrex128.az.txt", "license": "CC BY-SA 4.0"},
    ]}))
    (root / "metrics").mkdir()
    (root / "metrics/evaluate.json").write_text(json.dumps(EVALUATE))
    (root / "metrics/finetune.json").write_text(json.dumps({"method": "lora", "train_loss": 1.25, "eval_loss": 1.5}))
    stages = {"out": {"cmd": "true", "outs": [{"path": p, "hash": "md5", "md5": h} for p, h in LOCK.items()]},
              "finetune": {"cmd": "python stages/finetune.py", "params": {"params.yaml": {"lr": 0.0002, "seed": 0}}}}
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    return root


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory, tiny_llama_dir, tiny_finetuned_dir):
    """Run the export command against the stand-in; returns (server, project folder, completed process)."""
    root = _project(tmp_path_factory.mktemp("project"), tiny_llama_dir, tiny_finetuned_dir)
    with HubServer(tmp_path_factory.mktemp("hub"), TOKEN) as server:
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run(
            [sys.executable, str(REPO / "stages/export.py"), "--to", "hub", "--repo-id", "org/az-tiny", "--merge",
             "--dataset-repo-id", "org/az-tiny-data"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    return server, root, done


def test_upload_goes_through_the_hub_api_with_the_token_from_the_environment(uploaded):
    server, _, done = uploaded
    assert done.returncode == 0, done.stderr[-3000:]
    assert TOKEN not in done.stdout + done.stderr
    assert set(server.repos) == {("model", "org/az-tiny"), ("dataset", "org/az-tiny-data")}
    assert all(r["authorized"] for r in server.requests if r["method"] != "GET"), server.paths()
    assert not [p for p in server.paths() if "preupload" not in p and "commit" not in p and "create" not in p
                and "validate-yaml" not in p and "whoami" not in p], server.paths()
    files = set(server.repos[("model", "org/az-tiny")]["commits"][0]["files"])
    assert {"README.md", "config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= files and "langlift.json" not in files


def test_stored_model_loads_and_generation_stops_at_eos(uploaded):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    server, root, _ = uploaded
    stored = server.repo("model", "org/az-tiny")
    model = AutoModelForCausalLM.from_pretrained(stored, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(stored)
    assert "generation %}" not in tokenizer.chat_template and "{{ eos_token }}" in tokenizer.chat_template
    gen = GenerationConfig.from_pretrained(stored)
    assert gen.use_cache is True and model.config.use_cache is True and gen.eos_token_id == tokenizer.eos_token_id
    assert (gen.temperature, gen.top_p, gen.max_new_tokens) == (0.7, 0.9, 64)  # the fine-tuned model's, copied

    cwd = os.getcwd()
    os.chdir(root)  # langlift.json names the base as the pipeline does, relative to the repository
    try:
        reference = load_merged("models/finetuned", dtype=torch.float32).eval()
    finally:
        os.chdir(cwd)
    prompts = {r["id"]: r["prompt"] for r in map(json.loads, (REPO / "languages/az/prompts.jsonl").open(encoding="utf-8"))}
    for key, answer in REVIEW_ANSWERS.items():
        enc = tokenizer.apply_chat_template([{"role": "user", "content": prompts[key]}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            assert torch.allclose(model(**enc).logits, reference(**enc).logits, atol=1e-5)
            out = model.generate(**enc, max_new_tokens=40, do_sample=False)[0, enc["input_ids"].shape[1]:]
        assert out[-1].item() == tokenizer.eos_token_id and len(out) < 40  # stopped by generation_config's EOS
        assert tokenizer.decode(out, skip_special_tokens=True) == answer


def test_model_card_has_metrics_hashes_base_and_licenses(uploaded):
    from huggingface_hub import ModelCard

    server, _, _ = uploaded
    card = ModelCard.load(server.repo("model", "org/az-tiny") / "README.md")
    data = card.data
    found = {(r.metric_name.split(" ")[0], r.metric_value, r.dataset_type) for r in data.eval_results}
    assert {("ppl", 810.9, "data/split/corpus_val.jsonl"), ("bleu_en_az", 1.5, "data/split/parallel_test.jsonl"),
            ("instr_f1", 1.3, "data/split/test.jsonl"), ("sib200_acc", 14.7, "Davlan/sib200")} <= found
    assert not any(r.metric_name.startswith("gen_tokens_per_s") for r in data.eval_results)
    ppl = next(r for r in data.eval_results if r.metric_name.startswith("ppl"))
    assert ppl.dataset_revision == LOCK["data/split/corpus_val.jsonl"]
    assert "not reliable" in next(r for r in data.eval_results if r.metric_name.startswith("instr_f1")).metric_name
    assert data.base_model is None  # trained here: no hub id to name, and never a local path
    assert ("`models/base`, a model trained from scratch in this repository by the pretrain stage (dvc.lock md5 "
            f"`{LOCK['models/base']}`)") in card.text
    assert data.dvc_lock["models/finetuned"] == LOCK["models/finetuned"]
    assert data.datasets == ["tatsu-lab/alpaca", "org/az-tiny-data"] and data.language == ["az"]
    assert data.license == "other" and data.data_licenses == {"alpaca_en": "CC BY-NC 4.0", "ntrex128_az": "CC BY-SA 4.0"}
    assert len(data.tags) == len(set(data.tags)) and "lora-merged" in data.tags
    assert "| ppl | 784.6 | 810.9 | 26.3 |" in card.text
    assert 'AutoModelForCausalLM.from_pretrained("org/az-tiny")' in card.text


def test_dataset_card_and_files(uploaded):
    from huggingface_hub import DatasetCard

    server, root, _ = uploaded
    stored = server.repo("dataset", "org/az-tiny-data")
    assert (stored / "data/train.jsonl").read_bytes() == (root / "data/split/train.jsonl").read_bytes()
    card = DatasetCard.load(stored / "README.md")
    assert card.data.language == ["az"] and card.data.license == "cc-by-nc-4.0"
    assert [f["split"] for f in card.data.configs[0]["data_files"]] == ["train", "val", "test"]
    assert card.data.dvc_lock == {"data/split/train.jsonl": LOCK["data/split/train.jsonl"],
                                  "data/split/test.jsonl": LOCK["data/split/test.jsonl"]}
    assert "| translated (memory) | 6 |" in card.text and "(https://huggingface.co/org/az-tiny)" in card.text


def test_refusals_come_before_any_work(tmp_path, tiny_llama_dir, tiny_finetuned_dir, monkeypatch):
    root = _project(tmp_path, tiny_llama_dir, tiny_finetuned_dir)
    monkeypatch.chdir(root)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    params = P.load()
    with pytest.raises(LangliftError, match="HF_TOKEN is not set"):
        hub.export("models/finetuned", params, repo_id="org/x", merge=True, dataset_repo_id=None, private=False)
    with pytest.raises(LangliftError, match="add --merge"):
        hub.export("models/finetuned", params, repo_id="org/x", merge=False, dataset_repo_id=None, private=False,
                   out=tmp_path / "out", dry_run=True)


def test_a_generation_config_that_would_not_stop_or_cache_is_corrected(tiny_finetuned_dir, caplog):
    from transformers import GenerationConfig

    tokenizer = load_tokenizer(tiny_finetuned_dir)
    gen = checked_generation_config(GenerationConfig(eos_token_id=7, use_cache=False), tokenizer, "x/generation_config.json")
    assert gen.eos_token_id == tokenizer.eos_token_id and gen.use_cache is True
    assert "x/generation_config.json: generation_config has use_cache false" in caplog.text
    assert "is not the tokenizer's EOS" in caplog.text


def test_adapter_export_points_at_the_hub_base(tmp_path, tiny_finetuned_dir):
    out = write_adapter(tiny_finetuned_dir, tmp_path / "a", "org/base-model", "a" * 40)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/base-model" and config["revision"] == "a" * 40
    assert (out / "generation_config.json").is_file() and "generation %}" not in (out / "chat_template.jinja").read_text()


def test_finetune_card_names_a_hub_base_with_its_revision():
    base = mc.base_info("Qwen/Qwen2.5-0.5B", "hub:Qwen/Qwen2.5-0.5B@" + "b" * 40)
    data = mc.card_data(base=base, language={"code": "az"}, licenses={"a": "MIT", "b": "mit"}, adapter=True,
                        method="lora", extra_tags=["lora", "sft"])
    assert data.base_model == "Qwen/Qwen2.5-0.5B" and data.base_model_revision == "b" * 40
    assert data.license == "mit" and data.tags == ["langlift", "sft", "lora"]


@pytest.mark.parametrize("template", ["{% generation %}x{% endgeneration %}", "{%- generation -%}x{%- endgeneration %}"])
def test_strip_generation_markers(template):
    assert strip_generation_markers(template) == "x"


def test_a_local_base_is_named_by_what_made_it(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"stages": {
        "pretrain": {"params": {"params.yaml": {"pretrain": {"init": "Qwen/Qwen2.5-0.5B"}}},
                     "outs": [{"path": "models/base", "md5": "c" * 32 + ".dir"}]}}}))
    assert mc.base_info("models/base", None, lock).described == (
        f"`models/base`, a model pretrained further from `Qwen/Qwen2.5-0.5B` in this repository by the pretrain "
        f"stage (dvc.lock md5 `{'c' * 32}.dir`)")
    assert mc.base_info("models/local/mine", None, lock).described == (
        "`models/local/mine`, a local model that is not on the hub (no dvc.lock entry)")
