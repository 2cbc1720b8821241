"""Tokenizer training, byte-fallback round-trips, fertility and vocabulary extension."""

from __future__ import annotations

import pytest
import torch
from conftest import az_sentences, en_sentences
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from langlift import model as llm
from langlift import tokenizer as tk
from langlift.errors import LangliftError

ROUND_TRIP = [
    "Azərbaycan dili: ə ğ ı ö ü ç ş — Ə Ğ I İ Ö Ü Ç Ş",
    "Bakı şəhərində güclü külək əsir, məktəblər bağlıdır.",
    "שלום עולם, מה שלומך?",                     # Hebrew: unseen script, spelled in bytes
    "Oʻzbekiston poytaxti — Toshkent; gʻalaba, oʻqituvchi",  # Uzbek with U+02BB
    "emoji 😀👍🏽 and a flag 🇦🇿!",
    "  leading, double  spaces,\ttabs\nand new lines \n",
    "a</s>b<s>",
]


@pytest.fixture(scope="module")
def tok():
    template = tk.chat_template("### Təlimat:", "### Cavab:")
    return tk.finalize(tk.train(az_sentences(1500), vocab_size=1024), template, 256)


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_exact_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_unseen_scripts_fall_back_to_bytes(tok):
    pieces = tok.convert_ids_to_tokens(tok("שלום 😀", add_special_tokens=False)["input_ids"])
    assert "<0xD7>" in pieces and "<0xF0>" in pieces


def test_vocab_specials_and_saved_format(tok, tmp_path):
    assert len(tok) == 1024
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.decode(again(ROUND_TRIP[0], add_special_tokens=False)["input_ids"]) == ROUND_TRIP[0]
    msgs = [{"role": "user", "content": "Salam"}, {"role": "assistant", "content": "Salam, necəsən?"}]
    text = again.apply_chat_template(msgs, tokenize=False)
    assert text.startswith("### Təlimat:\nSalam") and "### Cavab:\nSalam, necəsən?</s>" in text
    enc = again.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    answer = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert again.decode(answer) == "Salam, necəsən?</s>"


def test_fertility_favours_the_training_language(tok):
    az, en = tk.fertility(tok, az_sentences(2000)[1500:]), tk.fertility(tok, en_sentences(300))
    assert 1.0 < az < en


def test_vocab_size_the_corpus_cannot_support():
    with pytest.raises(LangliftError, match="supports only .* not vocab_size 50000"):
        tk.train(az_sentences(50), vocab_size=50000)
    with pytest.raises(LangliftError, match="too small"):
        tk.train(az_sentences(50), vocab_size=300)


def test_a_presets_vocab_size_adapts_to_a_small_corpus(caplog):
    """A size the user did not choose (the preset's) keeps what the corpus supports, and says so."""
    tok = tk.train(az_sentences(50), vocab_size=50000, exact=False)
    assert 300 < len(tok) < 50000 and "the tokenizer keeps" in caplog.text
    text = az_sentences(60)[55]
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_missing_reference_tokenizer_is_skipped(tmp_path):
    assert tk.load_reference(None) is None
    assert tk.load_reference(str(tmp_path / "nowhere")) is None


# ---------------------------------------------------------------- vocabulary extension


def test_extension_keeps_old_ids_and_uses_new_tokens(tiny_llama_dir):
    old = AutoTokenizer.from_pretrained(tiny_llama_dir)
    new, added = tk.extend(old, az_sentences(2000), new_tokens=200)
    assert 0 < len(added) <= 200
    assert len(new) == len(old) + len(added)
    old_vocab, new_vocab = old.get_vocab(), new.get_vocab()
    assert all(new_vocab[t] == i for t, i in old_vocab.items())
    assert sorted(new_vocab[t] for t in added) == list(range(len(old), len(new)))
    text = " ".join(az_sentences(2000)[1900:1950])
    old_ids, new_ids = old(text)["input_ids"], new(text)["input_ids"]
    assert len(new_ids) < len(old_ids)  # the new tokens are used, and make Azerbaijani cheaper
    assert new.decode(new_ids) == text
    for t in ROUND_TRIP:  # decoding is unchanged (the fixture's tokenizer drops a leading space, as Llama's does)
        ids_old, ids_new = old(t, add_special_tokens=False)["input_ids"], new(t, add_special_tokens=False)["input_ids"]
        assert new.decode(ids_new) == old.decode(ids_old)


@pytest.mark.parametrize("tied", [True, False])
def test_new_embeddings_are_means_of_old_pieces(tiny_llama_dir, tied):
    old = AutoTokenizer.from_pretrained(tiny_llama_dir)
    if tied:
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    else:
        cfg = LlamaConfig.from_pretrained(tiny_llama_dir)
        cfg.tie_word_embeddings = False
        torch.manual_seed(1)
        model = LlamaForCausalLM(cfg)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    new, added = tk.extend(old, az_sentences(2000), new_tokens=40)
    llm.init_new_embeddings(model, old, added, len(old))
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == len(new) and out.shape[0] == len(new)
    assert torch.equal(emb[: len(old)], before_in)
    assert torch.equal(out[: len(old)], before_out)
    for i, token in enumerate(added):
        pieces = [t.id for t in old.backend_tokenizer.model.tokenize(token)]
        assert len(pieces) >= 1 and max(pieces) < len(old)
        assert torch.allclose(emb[len(old) + i], before_in[pieces].mean(0))
        assert torch.allclose(out[len(old) + i], before_out[pieces].mean(0))
    # the extended model runs on text that uses the new tokens
    ids = new(" ".join(az_sentences(3)), return_tensors="pt")["input_ids"]
    assert ids.max() >= len(old)
    assert torch.isfinite(model(input_ids=ids).logits).all()
