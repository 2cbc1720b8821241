"""Qwen2 bases: the fixture's tokenizer keeps Azerbaijani intact, and continued pretraining works without BOS."""

from __future__ import annotations

from pathlib import Path

from conftest import QWEN2_EOS, az_sentences, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from langlift.packing import tokenize
from langlift.params import Params
from langlift.pretrain import Paths, run


def continued_pretraining_params(init: Path, checkpoints: Path) -> Params:
    """Ten steps of continued pretraining of ``init`` with 32 new tokens, on CPU in fp32."""
    return Params.model_validate({
        "seed": 0,
        "language": {"code": "az", "flores": "azj_Latn", "name": "Azerbaijani", "script": "Latn"},
        "hardware": {"device": "cpu", "precision": "fp32", "num_threads": 1, "gradient_checkpointing": "auto",
                     "attn_implementation": "auto", "dataloader_workers": "auto", "padding_free": "auto"},
        "pretrain": {
            "init": str(init), "extend_vocab": 32, "tokenizer": {"min_frequency": 2, "reference": None},
            "model": {"context": 64}, "chat": {"user": "### Təlimat:", "assistant": "### Cavab:"},
            "steps": 10, "batch_size": 8, "grad_accum": 1, "lr": 3e-3, "min_lr_ratio": 0.1, "warmup_steps": 2,
            "weight_decay": 0.1, "betas": [0.9, 0.95], "grad_clip": 1.0, "log_every": 5, "eval_every": 5,
            "eval_batches": 4, "checkpoint_every": 10, "keep_checkpoints": 1, "checkpoint_dir": str(checkpoints),
        },
    })


def corpus(n_docs: int, start: int = 0) -> list[dict]:
    lines = az_sentences(2000)[start:]
    return [{"id": f"d{start + i}", "text": " ".join(lines[8 * i : 8 * i + 8]), "lang": "az", "source": "t"}
            for i in range(n_docs)]


def test_qwen2_fixture_round_trips_azerbaijani(tiny_qwen2_dir):
    tok = AutoTokenizer.from_pretrained(tiny_qwen2_dir)  # as every stage loads it: Qwen2Tokenizer
    assert type(tok).__name__ == "Qwen2Tokenizer"
    text = "Azərbaycan, çay, qız"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == len(tok)


def test_continued_pretraining_of_a_tokenizer_without_bos(tmp_path, tiny_qwen2_dir):
    write_jsonl(tmp_path / "corpus_train.jsonl", corpus(120))
    write_jsonl(tmp_path / "corpus_val.jsonl", corpus(10, start=1600))
    old = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    assert old.bos_token is None

    out = Paths(train=tmp_path / "corpus_train.jsonl", val=tmp_path / "corpus_val.jsonl", model=tmp_path / "base",
                metrics=tmp_path / "pretrain.json", live=tmp_path / "live")
    m = run(continued_pretraining_params(tiny_qwen2_dir, tmp_path / "ckpt"), out)
    assert 0 < m["new_tokens"] <= 32 and m["val_loss"] < m["initial_val_loss"]

    tok = AutoTokenizer.from_pretrained(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == len(tok)
    assert (tok.bos_token, tok.eos_token) == (None, QWEN2_EOS)
    text = "Azərbaycan, çay, qız"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # documents are separated by EOS alone, as Qwen2 was pretrained
    docs = ["Bakı şəhəri.", "Gəncə çayı."]
    a, b = (tok(d, add_special_tokens=False)["input_ids"] for d in docs)
    assert tokenize(tok, docs).tolist() == a + [tok.eos_token_id] + b + [tok.eos_token_id]
