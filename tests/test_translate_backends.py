"""Each model backend through its real code path: tiny seq2seq models (NLLB-style M2M-100 and Marian)
built here, the tiny Llama from conftest, and the api backend against a real local HTTP server."""

from __future__ import annotations

import re
import zlib

import pytest
import torch

from conftest import az_sentences, en_sentences
from langlift.errors import LangliftError
from langlift.translate.seq2seq import Seq2SeqBackend, detect_family, target_code
from openai_server import OpenAIServer, Reply

LANG = {"code": "az", "flores": "azj_Latn", "name": "Azerbaijani", "script": "Latn"}
TEXTS = ["Hello.", "Describe the water cycle in two sentences, please.", "Name <x0> fruits.",
         "What is the capital of Azerbaijan and why is it famous for its old city?"]


def _bpe(vocab_size: int = 300):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  show_progress=False)
    tok.train_from_iterator(en_sentences(300) + az_sentences(300), trainer)
    return tok


@pytest.fixture(scope="module")
def nllb_dir(tmp_path_factory):
    """A tiny random NLLB-style model: M2M-100 architecture, NllbTokenizer with FLORES language tokens."""
    import json

    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    spec = json.loads(_bpe().to_str())
    tok = NllbTokenizer(vocab=spec["model"]["vocab"], merges=[tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                                                               for m in spec["model"]["merges"]],
                        extra_special_tokens=["eng_Latn", "azj_Latn", "tur_Latn"], src_lang="eng_Latn")
    torch.manual_seed(0)
    config = M2M100Config(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          decoder_start_token_id=tok.eos_token_id)
    path = tmp_path_factory.mktemp("nllb")
    M2M100ForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory):
    """A tiny random multilingual Marian model whose tokenizer has OPUS-MT target tokens."""
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe(), bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", extra_special_tokens=[">>aze_Latn<<", ">>tur_Latn<<"])
    torch.manual_seed(0)
    config = MarianConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("marian")
    MarianMTModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_language_code_table():
    vocab = {"eng_Latn": 0, "azj_Latn": 1, "__az__": 2, "<2az>": 3, ">>aze_Latn<<": 4}
    assert detect_family("m2m_100", vocab, LANG) == "nllb"
    assert detect_family("m2m_100", {"__en__": 0}, LANG) == "m2m"
    assert detect_family("t5", vocab, LANG) == "madlad"
    assert detect_family("marian", vocab, LANG) == "marian"
    assert detect_family("marian", {"a": 0}, LANG) == "plain"
    assert target_code("nllb", vocab, LANG, None) == "azj_Latn"
    assert target_code("m2m", vocab, LANG, None) == "__az__"
    assert target_code("madlad", vocab, LANG, None) == "<2az>"
    assert target_code("marian", vocab, LANG, None) == ">>aze_Latn<<"
    assert target_code("plain", vocab, LANG, None) is None
    with pytest.raises(LangliftError, match="tgt_code"):
        target_code("nllb", {"eng_Latn": 0}, LANG, None)


def test_seq2seq_nllb_batched_equals_one_at_a_time(nllb_dir):
    b = Seq2SeqBackend(str(nllb_dir), LANG, batch_size=3, max_new_tokens=6)
    assert b.settings["family"] == "nllb" and b.settings["tgt_code"] == "azj_Latn"
    assert b.tok("Hello.")["input_ids"][0] == b.tok.convert_tokens_to_ids("eng_Latn")  # source code from the table
    batched = b.translate(TEXTS)
    assert all(isinstance(t, str) for t in batched)
    assert batched == [b.translate([t])[0] for t in TEXTS]  # length sorting and padding change nothing
    ids = b.model_.generate(**b.tok(["Hello."], return_tensors="pt"), max_new_tokens=3,
                            forced_bos_token_id=b.tok.convert_tokens_to_ids("azj_Latn"))
    assert ids[0, 1].item() == b.tok.convert_tokens_to_ids("azj_Latn")
    beams = b.variant({"num_beams": 2})
    assert beams.fingerprint != b.fingerprint and beams.model_ is b.model_
    assert len(beams.translate(TEXTS[:2])) == 2


def test_seq2seq_marian_prefixes_the_target_token(marian_dir):
    b = Seq2SeqBackend(str(marian_dir), LANG, batch_size=2, max_new_tokens=5)
    assert b.settings["family"] == "marian" and b.settings["tgt_code"] == ">>aze_Latn<<"
    assert b._inputs(["Hi"]) == [">>aze_Latn<< Hi"]
    assert b.tok(b._inputs(["Hi"]))["input_ids"][0][0] == b.tok.convert_tokens_to_ids(">>aze_Latn<<")
    out = b.translate(TEXTS)
    assert len(out) == 4 and all(isinstance(t, str) for t in out)


def test_llm_backend_chat_template_and_batching(tiny_llama_dir):
    from langlift.translate.llm import LLMBackend

    b = LLMBackend(str(tiny_llama_dir), "Translate into {name}:\n\n{text}", LANG, engine="transformers",
                   batch_size=3, max_new_tokens=5)
    assert b.engine == "transformers" and b.prompt_version.startswith("p")
    assert b.messages("Hi") == [{"role": "user", "content": "Translate into Azerbaijani:\n\nHi"}]
    rendered = b.tok.apply_chat_template(b.messages("Hi"), add_generation_prompt=True, tokenize=False)
    assert rendered.startswith("### Təlimat:\nTranslate into Azerbaijani:") and rendered.endswith("### Cavab:\n")
    batched = b.translate(TEXTS)
    assert batched == [b.translate([t])[0] for t in TEXTS]  # left padding keeps greedy outputs identical
    other = LLMBackend(str(tiny_llama_dir), "Render in {name}: {text}", LANG, engine="transformers", max_new_tokens=5)
    assert other.prompt_version != b.prompt_version


# -- api -----------------------------------------------------------------------------------------------
AZ_WORDS = [w for s in az_sentences(200) for w in s.split() if w.isalpha()]


def fake_az(text: str) -> str:
    """A deterministic 'translation': Azerbaijani words, mask tokens kept in place."""
    out = []
    for part in re.split(r"(<x\d+>)", text):
        if re.fullmatch(r"<x\d+>", part):
            out.append(part)
        else:
            out.extend(AZ_WORDS[zlib.crc32(w.encode()) % len(AZ_WORDS)] for w in part.split())
    return " ".join(out)


def segment_of(body: dict) -> str:
    return body["messages"][-1]["content"].split("\n\n", 1)[1]


def api_backend(url: str, **kw):
    from langlift.translate.api import ApiBackend

    kw = {"api_key_env": "LANGLIFT_TEST_KEY", "concurrency": 2, "max_retries": 3, "timeout": 5.0, "backoff": 0.05,
          **kw}
    return ApiBackend("Translate into {name}:\n\n{text}", LANG, base_url=url, model="test-model", **kw)


def test_api_backend_survives_429_500_timeouts_and_malformed_json(monkeypatch):
    monkeypatch.setenv("LANGLIFT_TEST_KEY", "sk-test")
    faults = {0: Reply(status=429, headers={"Retry-After": "0.1"}), 1: Reply(status=500),
              2: Reply(body="{not json", status=200), 3: Reply(delay=1.5, body=None)}

    def handler(body, n):
        return faults.get(n) or fake_az(segment_of(body))

    with OpenAIServer(handler) as server:
        b = api_backend(server.url, timeout=1.0)
        out = b.translate(TEXTS)
        assert out == [fake_az(t) for t in TEXTS]
        assert server.count == len(TEXTS) + len(faults)
        assert server.headers[0]["Authorization"] == "Bearer sk-test"
        assert server.requests[-1]["model"] == "test-model" and server.requests[-1]["temperature"] == 0.0
        usage = b.usage()
        assert usage["retries"] == 4 and usage["failures"] == 0


def test_api_backend_gives_up_with_a_clear_error():
    with OpenAIServer(lambda body, n: Reply(status=503)) as server:
        b = api_backend(server.url, max_retries=1)
        with pytest.raises(LangliftError, match="gave up after 2 attempts"):
            b.translate(["Hello."])


@pytest.mark.parametrize("backend", ["seq2seq", "llm"])
def test_stage_runs_with_each_model_backend(tmp_path, backend, nllb_dir, tiny_llama_dir):
    """Switching translate.backend is all it takes; a rerun is served from the segment cache."""
    from test_translate_stage import ALPACA, english, run, workspace

    model = {"seq2seq": {"model": str(nllb_dir), "max_new_tokens": 6, "batch_size": 4},
             "llm": {"model": str(tiny_llama_dir), "engine": "transformers", "max_new_tokens": 6, "batch_size": 4}}
    params = workspace(tmp_path, english(ALPACA[:6]), backend=backend, **{backend: model[backend]},
                       quality={"min_lang_score": 0, "action": "keep"})
    out, rejected, metrics = run(tmp_path, params)
    assert len(out) + len(rejected) == 6 and metrics["segments_translated"][backend] > 0
    assert all(r["translation"]["backend"] == backend and r["translation"]["model"] == model[backend]["model"]
               for r in out)
    again = run(tmp_path, params)[2]
    assert again["segments_cached"][backend] == metrics["segments_translated"][backend]
    assert again["segments_translated"][backend] == 0
