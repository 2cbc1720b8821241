"""Decoding settings in one place: params -> GenerationConfig -> the saved model's generation_config.json,
per-language overrides, the context cap, reproducible sampling, and metrics kept greedy."""

from __future__ import annotations

import copy
import json
import logging
import warnings

import pytest
import torch
from conftest import REPO, link_languages, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from langlift import generation as G
from langlift import params as P
from langlift.errors import LangliftError
from langlift.evaluate import report, timing
from langlift.evaluate.models import load_base, load_finetuned
from langlift.params import Generation
from stages.chat import fit

MESSAGES = [{"role": "user", "content": "Azərbaycanın paytaxtı haradır?"}]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    return model, tok


def _inline_language(**extra) -> dict:
    """languages/az/language.yaml as an inline mapping, with ``extra`` keys."""
    import yaml

    lang = yaml.safe_load((REPO / "languages/az/language.yaml").read_text(encoding="utf-8"))
    return {**lang, "sources": [], **extra}


def test_params_become_a_generation_config_with_the_tokenizers_tokens(tiny):
    model, tok = tiny
    sampling = G.build(Generation(temperature=0.5, top_k=20, max_new_tokens=300), tok, context=256)
    assert (sampling.do_sample, sampling.temperature, sampling.top_p, sampling.top_k) == (True, 0.5, 0.95, 20)
    assert (sampling.repetition_penalty, sampling.no_repeat_ngram_size) == (1.2, 4)
    assert sampling.max_new_tokens == 256  # no more than the context
    assert (sampling.eos_token_id, sampling.pad_token_id, sampling.bos_token_id) == (
        tok.eos_token_id, tok.pad_token_id, tok.bos_token_id)
    assert sampling.use_cache is True
    greedy = G.build(Generation(do_sample=False, repetition_penalty=1.0, no_repeat_ngram_size=0), tok)
    saved = json.loads(greedy.to_json_string(use_diff=True))
    for unused in ("temperature", "top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size"):
        assert unused not in saved  # nothing for transformers to warn about
    assert saved["do_sample"] is False


def test_a_language_overrides_only_the_keys_it_writes_and_params_yaml_wins(caplog):
    lang = _inline_language(generation={"temperature": 0.3, "no_repeat_ngram_size": 3})
    params = P.validate({"language": lang})
    assert (params.generation.temperature, params.generation.no_repeat_ngram_size) == (0.3, 3)
    assert params.generation.top_p == Generation().top_p  # not written by the language: the default
    with caplog.at_level(logging.WARNING):
        params = P.validate({"language": lang, "generation": {"temperature": 0.8}})
    assert params.generation.temperature == 0.8 and params.generation.no_repeat_ngram_size == 3
    assert "generation.temperature" in caplog.text and "params.yaml wins" in caplog.text
    with pytest.raises(LangliftError, match=r"language: generation\.temperature"):
        P.validate({"language": _inline_language(generation={"temperature": -1})})


def test_every_shipped_language_loads_with_the_generation_section(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link_languages(tmp_path)
    for code in ("az", "he", "uz", "rw"):
        assert P.validate({"language": code}).generation.max_new_tokens >= 1


def test_the_answer_is_capped_by_the_context_without_warnings(tiny, caplog):
    model, tok = tiny
    context = G.context_length(model)
    assert context == 256
    words = " ".join(["Bakı şəhəri Xəzər dənizinin sahilindədir."] * 11)
    long = [{"role": "user", "content": words}]
    prompt = len(tok.apply_chat_template(long, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
    assert 150 < prompt < context - 8
    config = G.build(Generation(max_new_tokens=256), tok, context)
    assert G.budget(config, prompt, context) == context - prompt
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        ids = G.generate(model, tok, long, config, seed=0, min_new_tokens=256)  # never stops early
    assert len(ids) == context - prompt
    assert not caught and not [r for r in caplog.records if r.name.startswith("transformers")], (
        [str(w.message) for w in caught], caplog.text)
    too_long = [{"role": "user", "content": words * 2}]
    with pytest.raises(LangliftError, match="no room for an answer"):
        G.generate(model, tok, too_long, config)


def test_sampling_with_a_seed_is_reproducible(tiny):
    model, tok = tiny
    config = G.build(Generation(max_new_tokens=20, temperature=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0),
                     tok, 256)
    first = G.generate(model, tok, MESSAGES, config, seed=5, min_new_tokens=20)
    assert first == G.generate(model, tok, MESSAGES, config, seed=5, min_new_tokens=20)
    assert first != G.generate(model, tok, MESSAGES, config, seed=6, min_new_tokens=20)


def test_no_repeat_ngram_size_bounds_the_longest_run(tiny):
    """A model that only wants one token: greedy repeats it to the end, no_repeat_ngram_size=n stops it at n."""
    model, tok = tiny
    looping = copy.deepcopy(model)
    with torch.no_grad():
        looping.model.norm.weight.zero_()  # every token equally likely...
    config = G.build(Generation(do_sample=False, repetition_penalty=1.0, no_repeat_ngram_size=0, max_new_tokens=30), tok)
    ids = G.generate(looping, tok, MESSAGES, config, min_new_tokens=30)
    assert G.longest_run(ids) == 30  # ...so greedy picks the same one every time
    config.no_repeat_ngram_size = 4
    assert G.longest_run(G.generate(looping, tok, MESSAGES, config, min_new_tokens=30)) == 4


def test_longest_run():
    assert [G.longest_run(x) for x in ([], [7], [1, 2, 3], [1, 1, 2, 2, 2, 1], [5] * 9)] == [0, 1, 1, 3, 9]


def test_chat_history_drops_the_oldest_turns_to_fit(tiny):
    _, tok = tiny
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"Sual {i}: Bakı haqqında danış."},
                    {"role": "assistant", "content": f"Cavab {i}: Bakı Azərbaycanın paytaxtıdır."}]
    assert fit(tok, history, "Yeni sual", None) == [*history, {"role": "user", "content": "Yeni sual"}]
    kept = fit(tok, history, "Yeni sual", 120)
    assert kept[-1]["content"] == "Yeni sual" and kept[:-1] == history[len(history) - len(kept) + 1:]
    assert 1 < len(kept) < len(history) and len(kept) % 2 == 1
    assert len(tok.apply_chat_template(kept, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]) <= 120
    assert fit(tok, history, "Yeni sual " * 100, 120) == [{"role": "user", "content": "Yeni sual " * 100}]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_finetune_saves_the_generation_config_and_loading_keeps_metrics_greedy(tmp_path, monkeypatch, tiny_llama_dir,
                                                                              method):
    from test_finetune import make_params, rows

    from langlift import finetune as F

    monkeypatch.chdir(tmp_path)
    link_languages(tmp_path)
    write_jsonl(tmp_path / "data/split/train.jsonl", rows(8))
    write_jsonl(tmp_path / "data/split/val.jsonl", rows(4))
    params = make_params(tiny_llama_dir, method=method, max_steps=1, merge=method == "lora")
    params.generation = Generation(temperature=0.6, seed=11)
    F.run(params)
    out = tmp_path / "models/finetuned"
    tok = AutoTokenizer.from_pretrained(out)
    saved = json.loads((out / "generation_config.json").read_text())
    assert saved["eos_token_id"] == tok.eos_token_id and saved["pad_token_id"] == tok.pad_token_id
    assert (saved["do_sample"], saved["temperature"], saved["use_cache"]) == (True, 0.6, True)
    assert json.loads((out / "langlift.json").read_text())["generation_seed"] == 11
    if method == "full":
        assert json.loads((out / "config.json").read_text())["use_cache"] is True
    else:  # finetune.merge: the standalone model answers the same way
        assert json.loads((out / "merged" / "generation_config.json").read_text()) == saved

    loaded = load_finetuned(str(out), "cpu", torch.float32)
    assert (loaded.generation.do_sample, loaded.generation.temperature) == (True, 0.6)
    kept = loaded.model.generation_config  # what every generate call (lm-eval's metrics too) starts from
    assert kept.do_sample is None and kept.temperature is None and kept.repetition_penalty is None
    assert kept.eos_token_id == tok.eos_token_id and kept.use_cache is True
    base = load_base(str(tiny_llama_dir), "cpu", torch.float32, answers=loaded.generation)
    assert base.generation.temperature == 0.6 and base.generation.eos_token_id == base.tokenizer.eos_token_id


def test_pretrain_saves_the_generation_config(tmp_path):
    from test_pretrain import corpus, paths, small_params

    from langlift.pretrain import run

    write_jsonl(tmp_path / "corpus_train.jsonl", corpus(40))
    write_jsonl(tmp_path / "corpus_val.jsonl", corpus(4, start=1600))
    params = small_params(tmp_path, steps=2, eval_every=2, checkpoint_every=2, log_every=1)
    run(params, paths(tmp_path))
    folder = tmp_path / "out" / "base"
    tok = AutoTokenizer.from_pretrained(folder)
    saved = G.load(folder)
    assert (saved.eos_token_id, saved.pad_token_id, saved.use_cache) == (tok.eos_token_id, tok.pad_token_id, True)
    assert saved.max_new_tokens == 64  # the tiny context (pretrain.model.context)
    assert (saved.temperature, saved.no_repeat_ngram_size) == (params.generation.temperature, 4)


def test_samples_report_the_decoding_and_the_longest_runs(tiny_llama_dir):
    loaded = load_base(str(tiny_llama_dir), "cpu", torch.float32)
    loaded.generation = G.build(Generation(), loaded.tokenizer, 256)
    prompts = [{"id": f"q{i}", "prompt": p} for i, p in enumerate(["Salam!", "Bakı haqqında yaz.", "Nə var?"])]
    answers, timed = timing.generate_timed(loaded, prompts, 8, 1, seed=3)
    runs = loaded.info["longest_token_runs"]
    assert len(runs) == 3 and timed["max_token_run"] == max(runs) <= 4
    assert answers == timing.generate_timed(loaded, prompts, 8, 1, seed=3)[0]  # the seed makes them reproducible
    assert loaded.info["decoding"].startswith("sampling (temperature 0.7") and "at most 8 new tokens" in loaded.info["decoding"]
    md = report.samples_markdown(prompts, {"base": answers}, {"base": loaded.info}, {"base": timed}, "Azerbaijani", 8, 1)
    assert f"**base** (longest run: {runs[0]})" in md and loaded.info["decoding"] in md


def test_saved_config_is_read_back_and_a_broken_one_is_a_clear_error(tmp_path, tiny):
    model, tok = tiny
    assert G.load(tmp_path) is None
    G.save(tmp_path, Generation(top_k=7), tok, G.context_length(model))
    assert G.load(tmp_path).top_k == 7
    (tmp_path / G.FILE).write_text("{not json")
    with pytest.raises(LangliftError, match="generation_config.json: not a valid generation config"):
        G.load(tmp_path)


def test_dvc_stages_that_write_or_read_it_depend_on_it():
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name in ("pretrain", "finetune", "evaluate"):
        assert "generation" in stages[name]["params"], name
    assert "generation" in stages["finetune-matrix"]["do"]["params"]
    assert "generation" in stages["evaluate-matrix"]["do"]["params"]

