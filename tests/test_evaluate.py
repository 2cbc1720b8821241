"""The evaluate stage on tiny real models: lm-eval's perplexity and SIB-200 accuracy against direct
computations, the stage end to end (base against a LoRA fine-tune) with every BLEU/chrF++ recomputed by
sacrebleu's command line from the saved examples, small sets flagged, and clear errors for bad input."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from conftest import REPO, az_sentences, en_sentences, link_languages, write_jsonl
from langlift.errors import LangliftError
from langlift.evaluate.harness import Harness
from langlift.evaluate.inputs import EvalSets, load_sib200
from langlift.evaluate.metrics import exact_match, token_f1, translation_scores
from langlift.evaluate.models import load_base
from langlift.params import Evaluate, Finetune, Language, Params

LANGUAGE = Language(code="az", flores="azj_Latn", name="Azerbaijani", script="Latn")
SIB200 = REPO / "data" / "samples" / "eval" / "sib200"


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


@pytest.fixture(scope="module")
def talkative_dirs(tmp_path_factory, tiny_llama_dir):
    """The tiny Llama and a LoRA adapter on it that never end an answer early: EOS and every token with a
    newline suppressed in their generation config, so every answer is max_new_tokens of text and BLEU and
    chrF++ have something to score (a random model otherwise often answers with nothing)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, tuned = tmp_path_factory.mktemp("talkative-base"), tmp_path_factory.mktemp("talkative-finetuned")
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.generation_config.suppress_tokens = [i for i in range(len(tok)) if "\n" in tok.decode([i])] + [tok.eos_token_id]
    model.save_pretrained(base)
    tok.save_pretrained(base)
    _save_lora(base, tuned)
    tok.save_pretrained(tuned)
    (tuned / "langlift.json").write_text(json.dumps({"base_model": str(base), "method": "lora"}))
    return base, tuned


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


def _write_sib200(folder, n_test=10, n_train=6):
    """A small SIB-200 folder: the shipped labels and the first rows of the shipped Azerbaijani splits."""
    folder.mkdir(parents=True)
    (folder / "labels.txt").write_text((SIB200 / "azj_Latn" / "labels.txt").read_text(encoding="utf-8"), encoding="utf-8")
    for split, n in (("train", n_train), ("test", n_test)):
        lines = (SIB200 / "azj_Latn" / f"{split}.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        (folder / f"{split}.tsv").write_text("".join(lines[:n + 1]), encoding="utf-8")
    return folder


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


def _sacrebleu(folder, task, pair, metrics=("bleu", "chrf")) -> dict[str, float]:
    """sacrebleu's command line on the saved reference and hypothesis files, as docs/stages.md says."""
    out = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(folder / f"{task}.ref.txt"), "-i", str(folder / f"{task}.hyp.txt"),
         "-l", pair, "-m", *metrics, "--chrf-word-order", "2", "-w", "6"],
        check=True, capture_output=True, text=True,
    ).stdout
    scores = json.loads(out)
    return {s["name"]: s["score"] for s in (scores if isinstance(scores, list) else [scores])}


def _lines(path):
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def test_stage_end_to_end(tmp_path, monkeypatch, caplog, talkative_dirs):
    _write_inputs(tmp_path)
    _write_sib200(tmp_path / "sib200" / "azj_Latn")
    monkeypatch.chdir(tmp_path)
    # 8 documents, 6 pairs, 6 instructions, 10 SIB-200 sentences against these minimums
    minimum = {"perplexity": 8, "translation": 7, "instructions": 0, "sib200": 10}
    params = _params(tmp_path, *talkative_dirs, sib200=str(tmp_path / "sib200" / "{flores}"), min_examples=minimum)
    with caplog.at_level(logging.INFO):
        result = _run(tmp_path, params)
    assert result.exit_code == 0, result.output

    metrics = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    names = ["ppl", "word_ppl", "byte_ppl", "bits_per_byte", "bleu_en_az", "chrf_en_az", "bleu_az_en",
             "chrf_az_en", "instr_em", "instr_f1", "instr_chrf", "sib200_acc", "gen_tokens_per_s", "ttft_s",
             "max_token_run", "peak_mem_mb"]
    sizes = {"n.perplexity": 8, "n.translation": 6, "n.instructions": 6, "n.sib200": 10,
             "reliable.perplexity": 1, "reliable.translation": 0, "reliable.instructions": 1, "reliable.sib200": 1}
    assert sorted(metrics) == sorted([f"{m}.{n}" for m in ("base", "finetuned", "delta") for n in names] + list(sizes))
    assert {k: metrics[k] for k in sizes} == sizes
    small = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "min_examples" in r.getMessage()]
    assert len(small) == 1 and small[0].startswith("translation: only 6 examples (evaluate.min_examples.translation: 7)")
    for n in names:
        assert metrics[f"delta.{n}"] == pytest.approx(metrics[f"finetuned.{n}"] - metrics[f"base.{n}"], abs=2e-6)
    assert metrics["finetuned.ppl"] != metrics["base.ppl"]  # the adapter is loaded and active
    for m in ("base", "finetuned"):
        assert metrics[f"{m}.ppl"] > 1 and metrics[f"{m}.bits_per_byte"] > 0
        assert metrics[f"{m}.gen_tokens_per_s"] > 0 and 0 < metrics[f"{m}.ttft_s"] < 10
        assert metrics[f"{m}.peak_mem_mb"] > 10
        for n in ("bleu_en_az", "chrf_az_en", "instr_em", "instr_f1", "instr_chrf", "sib200_acc"):
            assert 0 <= metrics[f"{m}.{n}"] <= 100

    # every scored example is saved: each BLEU/chrF++ recomputed from the files by sacrebleu's command line
    pairs = [json.loads(line) for line in (tmp_path / "parallel_test.jsonl").read_text(encoding="utf-8").splitlines()]
    instructions = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    sib_test = [line.split("\t") for line in (tmp_path / "sib200" / "azj_Latn" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    outputs = tmp_path / "metrics" / "evaluate_outputs"
    assert sorted(p.name for p in outputs.iterdir()) == ["base", "finetuned"]
    for m in ("base", "finetuned"):
        folder = outputs / m
        assert sorted(p.name for p in folder.iterdir()) == sorted([
            *(f"{t}.{s}" for t in ("translate_en_az", "translate_az_en", "instructions", "sib200")
              for s in ("hyp.txt", "ref.txt", "ids.txt", "jsonl")), "review.jsonl"])  # + answers to the review prompts
        for direction, ref in (("en_az", "tgt"), ("az_en", "src")):
            task = f"translate_{direction}"
            assert _lines(folder / f"{task}.ids.txt") == [p["id"] for p in pairs]
            assert _lines(folder / f"{task}.ref.txt") == [p[ref] for p in pairs]
            cli = _sacrebleu(folder, task, direction.replace("_", "-"))
            assert cli["BLEU"] == pytest.approx(metrics[f"{m}.bleu_{direction}"], abs=1e-6)
            assert cli["chrF2++"] == pytest.approx(metrics[f"{m}.chrf_{direction}"], abs=1e-6)
            assert cli["chrF2++"] > 0  # something to compare (BLEU of a random model's text is 0)
            assert all(_lines(folder / f"{task}.hyp.txt"))
        hyps, refs = _lines(folder / "instructions.hyp.txt"), _lines(folder / "instructions.ref.txt")
        assert _lines(folder / "instructions.ids.txt") == [r["id"] for r in instructions if r["lang"] == "az"]
        assert _sacrebleu(folder, "instructions", "az-az", ["chrf"])["chrF2++"] == pytest.approx(metrics[f"{m}.instr_chrf"], abs=1e-6)
        em = 100 * sum(exact_match(h, r, "az") for h, r in zip(hyps, refs, strict=True)) / len(refs)
        f1 = 100 * sum(token_f1(h, r, "az") for h, r in zip(hyps, refs, strict=True)) / len(refs)
        assert (em, f1) == (pytest.approx(metrics[f"{m}.instr_em"], abs=1e-6), pytest.approx(metrics[f"{m}.instr_f1"], abs=1e-6))
        assert _lines(folder / "sib200.ids.txt") == [row[0] for row in sib_test]
        assert _lines(folder / "sib200.ref.txt") == [row[1] for row in sib_test]
        right = sum(h == r for h, r in zip(_lines(folder / "sib200.hyp.txt"), _lines(folder / "sib200.ref.txt"), strict=True))
        assert 100 * right / len(sib_test) == pytest.approx(metrics[f"{m}.sib200_acc"], abs=1e-6)
        rows = [json.loads(line) for line in (folder / "sib200.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [r["hypothesis"] for r in rows] == [max(r["loglikelihoods"], key=r["loglikelihoods"].get) for r in rows]

    details = json.loads((tmp_path / "metrics" / "evaluate_details.json").read_text())
    _, signatures = translation_scores(["a"], ["a"], "az")
    assert details["signatures"] == {"bleu": signatures["bleu"], "chrf++": signatures["chrf"]}
    assert details["counts"] == {"documents": 8, "pairs_per_direction": 6, "instructions": 6, "prompts": 3}
    assert details["models"]["finetuned"]["method"] == "lora"
    assert details["min_examples"] == minimum
    assert details["sib200"] == {"folder": str(tmp_path / "sib200" / "azj_Latn"), "shots": 0, "test_sentences": 10,
                                 "labels": (SIB200 / "azj_Latn" / "labels.txt").read_text(encoding="utf-8").split()}

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
    # no SIB-200 folder for this language here (the default path, relative to tmp_path): skipped, not an error
    assert not any("sib200" in k for k in json.loads((tmp_path / "metrics" / "evaluate.json").read_text()))

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
    assert [str(p) for p in (out.metrics, out.details, out.samples, out.plots, out.examples)] == [
        "metrics/matrix/qwen_evaluate.json", "metrics/matrix/qwen_evaluate_details.json",
        "metrics/matrix/qwen_samples.md", "metrics/matrix/qwen_evaluate_plots", "metrics/matrix/qwen_evaluate_outputs"]
    assert str(Outputs.for_entry("metrics", None).examples) == "metrics/evaluate_outputs"
    with pytest.raises(LangliftError, match="no entry named 'llama'"):
        matrix_entry(params, "llama")


def test_sib200_accuracy_is_the_argmax_of_label_loglikelihoods(tmp_path, tiny_llama_dir):
    """lm-eval's multiple-choice accuracy on SIB-200 equals a direct computation: each sentence gets the
    label whose log-likelihood after the prompt is highest."""
    loaded = load_base(str(tiny_llama_dir), "cpu", torch.float32)
    model, tok = loaded.model, loaded.tokenizer
    sib = load_sib200(_write_sib200(tmp_path / "sib200", n_test=12), limit=12)
    harness = Harness(EvalSets([], [], [], [], sib), LANGUAGE, Evaluate(batch_size=4), tmp_path / "work", 0)
    scores, examples = harness.sib200(loaded)

    predicted = []
    with torch.no_grad():  # the label, after a space, is the continuation; no special tokens (the tokenizer adds none)
        for doc in sib.test:
            prompt = (f"Given the categories {', '.join(sib.labels)}, what category does the text '{doc['text']}' "
                      "belong to?\nCategory:")
            ctx = tok.encode(prompt)
            lls = []
            for label in sib.labels:
                cont = tok.encode(f"{prompt} {label}")[len(ctx):]
                logits = model(torch.tensor([ctx + cont])).logits[0, len(ctx) - 1:-1]
                lls.append(-torch.nn.functional.cross_entropy(logits, torch.tensor(cont), reduction="sum").item())
            predicted.append(sib.labels[lls.index(max(lls))])
            saved = next(r for r in examples["sib200"] if r["id"] == doc["id"])
            assert list(saved["loglikelihoods"].values()) == pytest.approx(lls, rel=1e-4)
    assert [r["hypothesis"] for r in examples["sib200"]] == predicted
    right = sum(p == d["label"] for p, d in zip(predicted, sib.test, strict=True))
    assert scores == {"sib200_acc": pytest.approx(100 * right / len(sib.test))}
    assert [r["reference"] for r in examples["sib200"]] == [d["label"] for d in sib.test]


def test_sib200_few_shot_examples_come_from_train_with_the_seed(tmp_path, tiny_llama_dir):
    """evaluate.sib200_shots > 0: that many train sentences, with their labels, before each test sentence;
    the same seed draws the same ones."""
    from lm_eval.tasks import TaskManager

    sib = load_sib200(_write_sib200(tmp_path / "sib200", n_test=3, n_train=6), limit=3)
    train_texts = {d["text"]: d["label"] for d in sib.train}

    def contexts(seed: int, work: str) -> list[str]:
        harness = Harness(EvalSets([], [], [], [], sib), LANGUAGE, Evaluate(sib200_shots=2), tmp_path / work, seed)
        task = TaskManager(include_defaults=False).load([harness.sib200_task])["tasks"]["langlift_sib200"]
        task.set_fewshot_seed(seed)
        return [task.fewshot_context(doc, num_fewshot=2) for doc in task.test_docs()]

    first = contexts(3, "a")
    assert first == contexts(3, "b")
    for ctx, doc in zip(first, sib.test, strict=True):
        shots = [t for t in train_texts if f"'{t}'" in ctx]
        assert len(shots) == 2 and all(f"'{t}' belong to?\nCategory: {train_texts[t]}\n\n" in ctx for t in shots)
        assert ctx.endswith(f"'{doc['text']}' belong to?\nCategory:")


def test_sib200_missing_folder_is_skipped_and_bad_rows_are_clear_errors(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        assert load_sib200(tmp_path / "nope" / "tur_Latn", 10) is None
    assert "SIB-200: no " in caplog.text and "topic classification skipped" in caplog.text
    folder = _write_sib200(tmp_path / "sib200", n_test=3)
    with open(folder / "test.tsv", "a", encoding="utf-8") as f:
        f.write("9999\tcooking\tBir cümlə.\n")
    with pytest.raises(LangliftError, match=r"test.tsv:5: field 'category': 'cooking' is not in labels.txt"):
        load_sib200(folder, 10)
    (folder / "test.tsv").write_text("id\ttext\n1\tx\n", encoding="utf-8")
    with pytest.raises(LangliftError, match=r"test.tsv:1: expected the header index_id category text"):
        load_sib200(folder, 10)


def test_training_data_is_decontaminated_against_sib200(tmp_path, monkeypatch, caplog):
    """The shipped params decontaminate against the language's SIB-200 sentences and the English ones: a
    corpus document equal to a SIB-200 sentence, and an instruction quoting an English one, are removed as
    `contaminated`; a language without SIB-200 data is skipped with a warning, not an error."""
    from langlift.dedupe.pipeline import Outputs, eval_texts, run
    from langlift.params import load
    from conftest import az_sentences as az

    params = load(REPO / "params.yaml")
    sib = [s for s in params.dedupe.decontaminate.eval_sets if "sib200" in s.path]
    assert [s.path for s in sib] == ["data/samples/eval/sib200/azj_Latn/*.tsv", "data/samples/eval/sib200/eng_Latn/*.tsv"]
    monkeypatch.chdir(REPO)
    az_test = (SIB200 / "azj_Latn" / "test.tsv").read_text(encoding="utf-8").splitlines()[1].split("\t")[2]
    en_dev = (SIB200 / "eng_Latn" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1].split("\t")[2]
    write_jsonl(tmp_path / "corpus.jsonl", [
        {"id": "leak", "text": az_test, "lang": "az", "source": "t"},
        *({"id": f"c{i}", "text": s, "lang": "az", "source": "t"} for i, s in enumerate(az(40)[:30]))])
    write_jsonl(tmp_path / "instructions.jsonl", [
        {"id": "quote", "instruction": f"Summarise: {en_dev}", "input": "", "output": "A summary.", "lang": "en", "source": "t"},
        {"id": "fine", "instruction": "Name three colours.", "input": "", "output": "Red, green, blue.", "lang": "en",
         "source": "t"}])
    cfg = params.dedupe.model_copy(deep=True)
    cfg.decontaminate.eval_sets = sib
    cfg.inputs.instructions, cfg.inputs.corpus = [str(tmp_path / "instructions.jsonl")], [str(tmp_path / "corpus.jsonl")]
    out = Outputs(*(tmp_path / "clean" / n for n in ("instructions.jsonl", "corpus.jsonl", "removed.jsonl", "data.json")))
    metrics = run(cfg, params.language, out)
    assert metrics["corpus.removed.contaminated"] == 1 and metrics["instructions.removed.contaminated"] == 1
    removed = {r["id"]: r for r in map(json.loads, out.removed.read_text(encoding="utf-8").splitlines())}
    assert removed["leak"]["reason"] == removed["quote"]["reason"] == "contaminated"
    assert removed["leak"]["eval_set"] == "data/samples/eval/sib200/azj_Latn/test.tsv"
    assert removed["quote"]["eval_set"] == "data/samples/eval/sib200/eng_Latn/dev.tsv"
    assert az_test not in out.corpus.read_text(encoding="utf-8") and metrics["corpus.kept"] > 0
    assert '"fine"' in out.instructions.read_text(encoding="utf-8")

    turkish = sib[0].model_copy(update={"path": "data/samples/eval/sib200/tur_Latn/*.tsv"})
    with caplog.at_level(logging.WARNING):
        assert eval_texts([turkish]) == {}
    assert "data/samples/eval/sib200/tur_Latn/*.tsv matches no file: skipped" in caplog.text
