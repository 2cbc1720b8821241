"""The evaluate stage on tiny real models: lm-eval's perplexity against a direct computation, the
stage end to end (base against a LoRA fine-tune), and clear errors for bad input."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
import yaml
from click.testing import CliRunner

from conftest import REPO, az_sentences, en_sentences, link_languages, write_jsonl
from langlift.errors import LangliftError
from langlift.evaluate.harness import Harness
from langlift.evaluate.inputs import EvalSets
from langlift.evaluate.metrics import translation_scores
from langlift.evaluate.models import load_base
from langlift.params import Evaluate, Finetune, Language, Params

LANGUAGE = Language(code="az", flores="azj_Latn", name="Azerbaijani", script="Latn")


def _stage():
    spec = importlib.util.spec_from_file_location("evaluate_stage", REPO / "stages" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _save_lora(base, path):
    """A LoRA adapter on ``base`` saved to ``path``, non-zero so the fine-tuned model differs from its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_llama_dir):
    """A LoRA adapter on the tiny Llama, with the base's tokenizer and a manifest without a template."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("finetuned")
    _save_lora(tiny_llama_dir, path)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(path)
    (path / "langlift.json").write_text(json.dumps({"base_model": str(tiny_llama_dir), "method": "lora"}))
    return path


def _write_inputs(root, n_docs=8, n_pairs=6, n_instr=6, n_prompts=3):
    az, en = az_sentences(80), en_sentences(80)
    write_jsonl(root / "corpus_val.jsonl", [
        {"id": f"c{i}", "text": " ".join(az[2 * i:2 * i + 2]), "lang": "az", "source": "t"} for i in range(n_docs)])
    write_jsonl(root / "parallel_test.jsonl", [
        {"id": f"p{i}", "src": en[20 + i], "tgt": az[20 + i], "src_lang": "en", "tgt_lang": "az", "source": "t"}
        for i in range(n_pairs)])
    write_jsonl(root / "test.jsonl", [
        {"id": f"t{i}", "instruction": az[40 + i], "input": az[50 + i] if i % 2 else "", "output": az[60 + i],
         "lang": "az", "source": "t"} for i in range(n_instr)]
        + [{"id": "en0", "instruction": "Say hi.", "input": "", "output": "Hi.", "lang": "en", "source": "t"}])
    write_jsonl(root / "prompts.az.jsonl", [{"id": f"q{i}", "prompt": az[70 + i]} for i in range(n_prompts)])


def _params(root, base, finetuned, **evaluate):
    link_languages(root)
    return {
        "seed": 7, "base_model": str(base), "language": "az",
        "hardware": {"precision": "fp32", "num_threads": 1},
        "evaluate": {
            "finetuned": str(finetuned), "corpus": str(root / "corpus_val.jsonl"),
            "parallel": str(root / "parallel_test.jsonl"), "test": str(root / "test.jsonl"),
            "prompts": str(root / "prompts.{lang}.jsonl"), "max_docs": 100, "max_pairs": 100,
            "max_instructions": 100, "max_prompts": 20, "timing_prompts": 2, "max_new_tokens": 8, "batch_size": 4,
            "lm_eval_tasks": [], "lm_eval_chat_template": False, **evaluate,
        },
    }


def _run(root, params):
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return CliRunner().invoke(_stage(), ["--params", str(root / "params.yaml")])


def test_perplexity_is_exp_of_mean_token_nll(tmp_path, tiny_llama_dir):
    """lm-eval's rolling log-likelihoods, turned into langlift's metrics, equal a direct computation."""
    loaded = load_base(str(tiny_llama_dir), "cpu", torch.float32)
    model, tok = loaded.model, loaded.tokenizer
    texts = [{"id": f"d{i}", "text": t} for i, t in enumerate(az_sentences(12)[2:12])]
    harness = Harness(EvalSets(texts, [], [], []), LANGUAGE, Evaluate(max_new_tokens=8, batch_size=4), tmp_path, 0)
    got = harness.perplexity(loaded)

    # Directly: each text as [BOS] + tokens (no special tokens added), every token scored once given
    # all before it. The texts are shorter than the context (256), so lm-eval uses one window each.
    nll, n_tokens, n_bytes, n_words = 0.0, 0, 0, 0
    with torch.no_grad():
        for d in texts:
            ids = tok.encode(d["text"], add_special_tokens=False)
            assert len(ids) < 255
            logits = model(torch.tensor([[tok.bos_token_id] + ids])).logits[0, :-1]
            nll += torch.nn.functional.cross_entropy(logits, torch.tensor(ids), reduction="sum").item()
            n_tokens += len(ids)
            n_bytes += len(d["text"].encode("utf-8"))
            n_words += len(d["text"].split())
    assert got["ppl"] == pytest.approx(math.exp(nll / n_tokens), rel=1e-4)  # per token
    assert got["word_ppl"] == pytest.approx(math.exp(nll / n_words), rel=1e-3)  # per whitespace word
    assert got["byte_ppl"] == pytest.approx(math.exp(nll / n_bytes), rel=1e-4)  # per UTF-8 byte
    assert got["bits_per_byte"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-4)
    assert 1 < got["ppl"] < 2 * len(tok)  # a random model: about uniform over the vocabulary


def test_stage_end_to_end(tmp_path, monkeypatch, tiny_llama_dir, lora_dir):
    _write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = _run(tmp_path, _params(tmp_path, tiny_llama_dir, lora_dir))
    assert result.exit_code == 0, result.output

    metrics = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    names = ["ppl", "word_ppl", "byte_ppl", "bits_per_byte", "bleu_en_az", "chrf_en_az", "bleu_az_en",
             "chrf_az_en", "instr_em", "instr_f1", "instr_chrf", "gen_tokens_per_s", "ttft_s", "peak_mem_mb"]
    assert sorted(metrics) == sorted(f"{m}.{n}" for m in ("base", "finetuned", "delta") for n in names)
    for n in names:
        assert metrics[f"delta.{n}"] == pytest.approx(metrics[f"finetuned.{n}"] - metrics[f"base.{n}"], abs=2e-6)
    assert metrics["finetuned.ppl"] != metrics["base.ppl"]  # the adapter is loaded and active
    for m in ("base", "finetuned"):
        assert metrics[f"{m}.ppl"] > 1 and metrics[f"{m}.bits_per_byte"] > 0
        assert metrics[f"{m}.gen_tokens_per_s"] > 0 and 0 < metrics[f"{m}.ttft_s"] < 10
        assert metrics[f"{m}.peak_mem_mb"] > 10
        for n in ("bleu_en_az", "chrf_az_en", "instr_em", "instr_f1", "instr_chrf"):
            assert 0 <= metrics[f"{m}.{n}"] <= 100

    details = json.loads((tmp_path / "metrics" / "evaluate_details.json").read_text())
    _, signatures = translation_scores(["a"], ["a"], "az")
    assert details["signatures"] == {"bleu": signatures["bleu"], "chrf++": signatures["chrf"]}
    assert details["counts"] == {"documents": 8, "pairs_per_direction": 6, "instructions": 6, "prompts": 3}
    assert details["models"]["finetuned"]["method"] == "lora"

    plots = tmp_path / "metrics" / "evaluate_plots"
    assert sorted(p.stem for p in plots.iterdir()) == sorted(names)
    rows = json.loads((plots / "ppl.json").read_text())
    assert rows == [{"model": "base", "value": pytest.approx(metrics["base.ppl"])},
                    {"model": "finetuned", "value": pytest.approx(metrics["finetuned.ppl"])}]

    samples = (tmp_path / "metrics" / "samples.md").read_text(encoding="utf-8")
    for i in range(3):
        assert f"`q{i}`" in samples and az_sentences(80)[70 + i] in samples
    assert samples.count("**base**") == 3 and samples.count("**finetuned**") == 3


def _bad(root, name):
    """Break one input the way users do; return the expected message."""
    if name == "empty corpus":
        (root / "corpus_val.jsonl").write_text("")
        return "corpus_val.jsonl: no documents to evaluate"
    if name == "reference without id":
        lines = (root / "test.jsonl").read_text(encoding="utf-8").splitlines()
        rec = json.loads(lines[1])
        del rec["id"]
        lines[1] = json.dumps(rec, ensure_ascii=False)
        (root / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return "test.jsonl:2: field 'id': missing"
    if name == "no target-language instructions":
        write_jsonl(root / "test.jsonl", [{"id": "e", "instruction": "Hi", "input": "", "output": "Hello", "lang": "en", "source": "t"}])
        return "no instruction records with lang 'az'"
    if name == "pair in another language":
        write_jsonl(root / "parallel_test.jsonl", [{"id": "p", "src": "Hallo", "tgt": "Salam", "src_lang": "de", "tgt_lang": "az", "source": "t"}])
        return "parallel_test.jsonl:1: field 'src_lang': pair is de->az; expected en<->az"
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["empty corpus", "reference without id", "no target-language instructions",
                                  "pair in another language"])
def test_bad_input_is_a_clear_error(tmp_path, monkeypatch, tiny_llama_dir, lora_dir, name):
    _write_inputs(tmp_path)
    expected = _bad(tmp_path, name)
    monkeypatch.chdir(tmp_path)
    result = _run(tmp_path, _params(tmp_path, tiny_llama_dir, lora_dir))
    assert result.exit_code == 1
    assert "error: " in result.output and expected in result.output
    assert not (tmp_path / "metrics" / "evaluate.json").exists()


def test_model_without_chat_template_is_a_clear_error(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = None
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(LangliftError, match="the tokenizer has no chat template"):
        load_base(str(tmp_path), "cpu", torch.float32)


def test_base_without_chat_template_is_prompted_with_the_finetune_template(tmp_path, monkeypatch, tiny_llama_dir):
    """A raw base (no chat template, as Llama-2 or Mistral-v0.1) fine-tuned with the params template: base and
    fine-tune are both prompted through the template recorded in langlift.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from langlift.evaluate.models import load_finetuned, read_manifest, trained_template
    from langlift.templates import prompt_messages, resolve

    base, finetuned = tmp_path / "raw-base", tmp_path / "finetuned"
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = None
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(base)
    tok.save_pretrained(base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    assert not AutoTokenizer.from_pretrained(base).chat_template

    # the fine-tune as the finetune stage writes it: the tokenizer carries the template trained on, and
    # langlift.json records it
    markers = {"instruction": "### Təlimat:\n", "input": "### Giriş:\n", "response": "### Cavab:\n"}
    template = resolve(tok, Finetune(template="auto", templates={"az": markers}), "az")
    _save_lora(base, finetuned)
    tok.chat_template = template.chat_template
    tok.save_pretrained(finetuned)
    (finetuned / "langlift.json").write_text(json.dumps(
        {"base_model": str(base), "method": "lora", "template": template.as_dict()}, ensure_ascii=False))

    _write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = _run(tmp_path, _params(tmp_path, base, finetuned))
    assert result.exit_code == 0, result.output
    models = json.loads((tmp_path / "metrics" / "evaluate_details.json").read_text())["models"]
    assert models["base"]["template"] == models["finetuned"]["template"] == "params:az"

    used = trained_template(read_manifest(finetuned))
    prompts = [loaded.tokenizer.apply_chat_template(prompt_messages("Salam"), add_generation_prompt=True, tokenize=False)
               for loaded in (load_base(str(base), "cpu", torch.float32, used),
                              load_finetuned(str(finetuned), "cpu", torch.float32))]
    assert prompts == ["### Təlimat:\nSalam\n\n### Cavab:\n"] * 2


def test_finetuned_without_manifest_and_unknown_matrix_entry(tmp_path, monkeypatch, tiny_llama_dir):
    _write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = _run(tmp_path, _params(tmp_path, tiny_llama_dir, tiny_llama_dir))
    assert result.exit_code == 1 and "langlift.json: not found" in result.output
    result = CliRunner().invoke(_stage(), ["--params", str(tmp_path / "params.yaml"), "--entry", "nope"])
    assert result.exit_code == 1 and "finetune.matrix has no entry named 'nope'" in result.output


def test_listed_local_task_is_scored_by_lm_eval(tmp_path, tiny_llama_dir):
    """A YAML of langlift/evaluate/tasks/ listed in lm_eval_tasks runs with lm-eval's metrics; here the
    answer log-likelihood task, checked against the answers' log-likelihoods computed directly."""
    loaded = load_base(str(tiny_llama_dir), "cpu", torch.float32)
    model, tok = loaded.model, loaded.tokenizer
    az = az_sentences(30)
    recs = [{"id": f"t{i}", "instruction": az[i], "input": "", "output": az[10 + i], "lang": "az", "source": "t"}
            for i in range(4)]
    cfg = Evaluate(max_new_tokens=8, batch_size=4, lm_eval_tasks=["langlift_answer_loglikelihood"])
    harness = Harness(EvalSets([], [], recs, []), LANGUAGE, cfg, tmp_path, 0)
    assert harness.builtin_tasks == [] and "langlift_answer_loglikelihood" in harness.task_names()
    got = harness.listed(loaded)
    assert set(got) == {"langlift_answer_loglikelihood.bits_per_byte", "langlift_answer_loglikelihood.acc"}
    nll, n_bytes = 0.0, 0
    with torch.no_grad():  # lm-eval scores the continuation "\n\n" + answer after the instruction
        for r in recs:
            ctx = tok.encode(r["instruction"], add_special_tokens=False)
            ans = tok.encode(r["instruction"] + "\n\n" + r["output"], add_special_tokens=False)[len(ctx):]
            logits = model(torch.tensor([ctx + ans])).logits[0, len(ctx) - 1:-1]
            nll += torch.nn.functional.cross_entropy(logits, torch.tensor(ans), reduction="sum").item()
            n_bytes += len(r["output"].encode("utf-8"))
    assert got["langlift_answer_loglikelihood.bits_per_byte"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-4)
    assert got["langlift_answer_loglikelihood.acc"] == 0.0  # a random model reproduces no whole sentence


def test_builtin_lm_eval_task_offline_is_a_clear_error(tmp_path, monkeypatch):
    """A listed built-in task whose dataset is on the hub fails up front, before any model runs."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sets = EvalSets([{"id": "d", "text": "Salam."}], [], [], [])
    cfg = Evaluate(max_new_tokens=8, batch_size=4, lm_eval_tasks=["belebele_azj_Latn", "no_such_task"])
    with pytest.raises(LangliftError, match=r"unknown lm-eval task\(s\) \['no_such_task'\]"):
        Harness(sets, LANGUAGE, cfg, tmp_path, 0)
    cfg.lm_eval_tasks = ["belebele_azj_Latn"]
    with pytest.raises(LangliftError, match="cannot load their data .*Hugging Face hub"):
        Harness(sets, LANGUAGE, cfg, tmp_path, 0)


def test_prompts_match_the_finetune_format(tmp_path):
    """lm-eval renders the instruction prompt exactly as the finetune stage built its user turns."""
    from lm_eval.tasks import TaskManager

    from langlift.templates import Template, to_messages

    rec = {"id": "t", "instruction": " Tərcümə et: ", "input": "Hello, world.", "output": "Salam, dünya.", "lang": "az"}
    pair = {"id": "p", "en": "Good morning.", "xx": "Sabahınız xeyir."}
    marker = "### Giriş:\n"
    harness = Harness(EvalSets([], [pair], [rec, {**rec, "id": "u", "input": " "}], []), LANGUAGE,
                      Evaluate(max_new_tokens=8, batch_size=4), tmp_path, 0, input_marker=marker)
    tasks = TaskManager(include_defaults=False).load(
        [harness.instructions_task, *harness.translate_tasks.values()])["tasks"]
    template = Template("params:az", "", marker)
    docs = list(tasks["langlift_instructions"].test_docs())
    for doc, expected in zip(docs, [rec, {**rec, "input": " "}], strict=True):
        assert tasks["langlift_instructions"].doc_to_text(doc) == to_messages(expected, template)[0]["content"]
    en_az = tasks["langlift_translate_en_az"]
    doc = next(iter(en_az.test_docs()))
    assert en_az.doc_to_text(doc) == "Translate the following English text into Azerbaijani.\n\nGood morning."
    assert en_az.doc_to_target(doc) == "Sabahınız xeyir."
    doc = next(iter(tasks["langlift_translate_az_en"].test_docs()))
    assert tasks["langlift_translate_az_en"].doc_to_text(doc).endswith("into English.\n\nSabahınız xeyir.")


@pytest.mark.parametrize(("key", "value"), [("max_new_tokens", 0), ("batch_size", "eight"), ("timing_prompts", None)])
def test_bad_params_are_clear_errors(tmp_path, monkeypatch, tiny_llama_dir, lora_dir, key, value):
    _write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = _run(tmp_path, _params(tmp_path, tiny_llama_dir, lora_dir, **{key: value}))
    assert result.exit_code == 1 and f"params.yaml: evaluate.{key}: " in result.output


def test_matrix_entry_outputs():
    from langlift.evaluate.runner import Outputs, matrix_entry

    params = Params(language=LANGUAGE, finetune={"matrix": [{"name": "qwen", "base_model": "Qwen/Qwen2.5-0.5B"}]})
    assert matrix_entry(params, "qwen").base_model == "Qwen/Qwen2.5-0.5B"
    out = Outputs.for_entry("metrics", "qwen")
    assert [str(p) for p in (out.metrics, out.details, out.samples, out.plots)] == [
        "metrics/matrix/qwen_evaluate.json", "metrics/matrix/qwen_evaluate_details.json",
        "metrics/matrix/qwen_samples.md", "metrics/matrix/qwen_evaluate_plots"]
    with pytest.raises(LangliftError, match="no entry named 'llama'"):
        matrix_entry(params, "llama")
