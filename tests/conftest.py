"""Shared fixtures: tiny real models and tokenizers built in-process (nothing is downloaded)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from langlift import tokenizer as tk
from langlift.tokenizer import QWEN2_EOS, chat_template  # noqa: F401 (QWEN2_EOS: for the tests)
from langlift.tokenizer import train as train_tokenizer

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
AZ_DATA = REPO / "languages" / "az" / "data"


def link_languages(root: Path) -> None:
    """Let a scratch project under ``root`` read the repository's ``languages/`` (params name a language by code)."""
    if not (root / "languages").exists():
        (root / "languages").symlink_to(REPO / "languages", target_is_directory=True)

# Nothing in the tests may reach the hub: a hub id must fail fast with langlift's own error.
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# `dvc repro` runs stage commands as `python stages/...`: make that the interpreter running the tests.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

torch.set_num_threads(1)  # tiny models: one thread is as fast and keeps the suite steady on a busy machine


def az_sentences(n: int = 2000) -> list[str]:
    """Real Azerbaijani sentences from the shipped NTREX-128 sample."""
    lines = (AZ_DATA / "ntrex128.az.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()][:n]


def en_sentences(n: int = 2000) -> list[str]:
    """The English side of the same NTREX-128 sample."""
    lines = (AZ_DATA / "ntrex128.en.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()][:n]


CHAT_TEMPLATE = chat_template("### Təlimat:", "### Cavab:")


def build_tokenizer(vocab_size: int = 768):
    """A byte-fallback BPE tokenizer (langlift's own) trained on the Azerbaijani and English samples."""
    tok = train_tokenizer(az_sentences(1500) + en_sentences(500), vocab_size)
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A saved tiny tokenizer (with a chat template)."""
    path = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A saved, randomly initialised 2-layer Llama with the tiny tokenizer beside it."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    path = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_qwen2_tokenizer(vocab_size: int = 768):
    """A Qwen2Tokenizer (byte-level BPE, no BOS) trained on the Azerbaijani and English samples."""
    tok = tk.train_qwen2(az_sentences(1500) + en_sentences(500), vocab_size)
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """A saved, randomly initialised 2-layer Qwen2 with a Qwen2 tokenizer (byte-level BPE, no BOS) beside it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_qwen2_tokenizer()
    torch.manual_seed(1)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("qwen2")
    Qwen2ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write test rows as JSONL (tests build their inputs with this)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
