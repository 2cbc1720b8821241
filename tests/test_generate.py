"""The generate stage against a real local OpenAI-compatible server serving canned generations.

Replies are a function of the request body (not of arrival order), like a model at a fixed seed: a
rerun that rebuilds the same prompts would get the same replies, which is what the cache relies on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import shutil
import signal
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner
from conftest import REPO, az_sentences, en_sentences, link_languages, write_jsonl
from openai_server import OpenAIServer, Reply, chat_response

from langlift import records
from langlift.errors import DataError, LangliftError
from langlift.generate import Filters, load_seeds
from langlift.generate.parse import extract
from langlift.generate.rouge import RougeIndex, lcs_length, rouge_l, tokens
from langlift.io import load_jsonl
from langlift.params import GenerateFilters
from langlift.params import load as load_params

STAGE = REPO / "stages" / "generate.py"
PARAMS = load_params(REPO / "params.yaml")
FILTERS = Filters.from_params(PARAMS.generate.filters, "az")
# Azerbaijani sentences that pass every filter on their own, to build canned tasks from
POOL = [s for s in az_sentences(1500) if 8 <= len(s.split()) <= 30 and FILTERS.check(
    {"instruction": s, "output": s})[1] is None]
ENGLISH = "Write a short story about a brave little fox who lives in the forest."
SEEDS = [
    {"id": "seed_task_0", "name": "capital",
     "instruction": "Azərbaycanın paytaxtı hansı şəhərdir və orada nə görmək olar?",
     "instances": [{"input": "", "output": "Azərbaycanın paytaxtı Bakıdır. İçərişəhər və Qız qalası görməyə dəyər."}],
     "is_classification": False},
    {"id": "seed_task_1", "name": "sentiment", "instruction": "Verilmiş rəyin müsbət, yoxsa mənfi olduğunu müəyyən et.",
     "instances": [{"input": "Yemək çox dadlı idi.", "output": "Müsbət"}], "is_classification": True},
    {"id": "seed_task_2", "name": "antonym", "instruction": "Verilmiş sözün əks mənalı sözünü yazın.",
     "instances": [{"input": "isti", "output": "soyuq"}], "is_classification": False},
]
BLOCKED = "Bu şəkildəki insanların nə etdiyini ətraflı təsvir edin və fikrinizi bildirin."


def task(instruction: str, output: str, input: str = "") -> dict:
    return {"instruction": instruction, "input": input, "output": output}


def canned(body: dict) -> str:
    """Three good tasks plus one of every fault, chosen by the prompt's hash."""
    rng = random.Random(hashlib.sha256(json.dumps(body["messages"]).encode()).hexdigest())
    a, b, c, d, out = rng.sample(POOL, 5)
    near = a.split()
    near[len(near) // 2] = "tamamilə"  # one word changed: ROUGE-L well above 0.7
    items = [
        task(a, out), task(b, out), task(c, out),
        task(" ".join(near), out),                                            # near-duplicate of the first
        task(SEEDS[0]["instruction"], out),                                   # exact duplicate of a seed
        task(ENGLISH, "Once upon a time, a little fox lived in a quiet forest near the river."),
        task(d, "Üzr istəyirəm, mən bu sorğuya cavab verə bilmərəm."),        # refusal
        task(BLOCKED, out),                                                   # needs an image
        {"instruction": "Bu tapşırığın cavabı yoxdur, çünki model onu unudub."},  # no output
    ]
    text = json.dumps({"tasks": items}, ensure_ascii=False)
    return text[:-2] + ', {"instruction": "Yarımçıq qalmış tapşırıq", "output": "kəsil'  # truncated item


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link_languages(tmp_path)
    write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    return tmp_path


def write_params(workdir, url: str, **overrides) -> str:
    """The repo's params with the generate section pointed at the test server and files in ``workdir``."""
    link_languages(workdir)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    gen = params["generate"]
    gen.update(enabled=True, base_url=url, model="test-model", api_key_env=None, seeds=str(workdir / "seeds.jsonl"),
               target=12, per_request=9, batch_size=2, cache_dir=str(workdir / "cache"))
    gen["client"].update(concurrency=2)
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (gen[section] if section else gen)[name] = value
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump({k: params[k] for k in ("seed", "language", "generate")}, allow_unicode=True),
                    encoding="utf-8")
    return str(path)


def _stage_main():
    spec = importlib.util.spec_from_file_location("langlift_stage_generate", STAGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


STAGE_MAIN = _stage_main()


def invoke(params_path: str):
    """Run the stage script's click command in-process (the cwd is the test's work directory)."""
    return CliRunner().invoke(STAGE_MAIN, ["--params", params_path])


# -- the stage, end to end ---------------------------------------------------------------------------

def test_generates_filters_and_dedupes_into_schema_records(workdir):
    with OpenAIServer(lambda body, n: canned(body)) as srv:
        result = invoke(write_params(workdir, srv.url))
        assert result.exit_code == 0, result.output
    recs = load_jsonl("data/generated/instructions.jsonl")
    m = json.loads((workdir / "metrics/generate.json").read_text())
    assert len(recs) == m["kept"] == 12
    responses = m["responses"]["responses"]
    assert srv.count == responses == m["http"]["requests"] and responses >= 4
    # every fault in every reply was caught, each under its own reason
    for reason in ("near_duplicate", "duplicate", "wrong_language", "refusal", "blocked_keyword", "missing_field",
                   "malformed"):
        assert m["removed"][reason] >= responses, (reason, m["removed"])
    assert m["parsed"] == 9 * responses
    assert m["parsed"] == m["kept"] + sum(v for k, v in m["removed"].items() if k != "malformed")
    kept = {r["instruction"] for r in recs}
    assert BLOCKED not in kept and SEEDS[0]["instruction"] not in kept
    for i, rec in enumerate(recs):
        records.validate("instructions", rec, "out", i)
        assert rec["id"] == records.record_id("instructions", rec)
        assert rec["lang"] == "az" and rec["source"] == "generate" and rec["model"] == "test-model"
        assert rec["prompt_version"] == "v1" and set(rec["seed_ids"]) <= {s["id"] for s in SEEDS}
        assert len(rec["seed_ids"]) == 3 and len(rec["request_key"]) == 64
    # the prompt shows seeds (and, after the first round, kept tasks); JSON mode is asked for
    body = srv.requests[0]
    assert body["response_format"] == {"type": "json_object"} and body["temperature"] == 1.0
    assert "Azerbaijani" in body["messages"][0]["content"]
    assert sum(s["instruction"] in body["messages"][1]["content"] for s in SEEDS) == 3
    assert all(any(json.dumps(r["instruction"], ensure_ascii=False)[1:-1] in b["messages"][1]["content"]
                   for r in recs) for b in srv.requests[2:])
    # usage and cost from the prices in params
    assert m["tokens"]["prompt"] == 10 * responses  # the test server bills 10 prompt tokens a reply
    expected = (m["tokens"]["prompt"] * 0.15 + m["tokens"]["completion"] * 0.60) / 1e6
    assert m["cost_usd"] == pytest.approx(expected, abs=1e-4) and m["cost_usd"] > 0
    removed = load_jsonl("data/generated/removed.jsonl")
    near = next(r for r in removed if r["reason"] == "near_duplicate")
    assert near["rouge_l"] > 0.7 and near["similar_to"] in kept


def test_rouge_dedupe_keeps_the_first_of_two_near_identical_instructions(workdir):
    first = "Azərbaycan mətbəxinin ən məşhur yeməklərini sadalayın və hər birini qısaca təsvir edin."
    second = "Azərbaycan mətbəxinin ən məşhur yeməklərini sadalayın və hər birini qısa təsvir edin."
    assert 0.7 < rouge_l(first, second) < 1
    reply = json.dumps({"tasks": [task(first, POOL[0]), task(second, POOL[1]), task(POOL[2], POOL[3])]},
                       ensure_ascii=False)
    with OpenAIServer(lambda body, n: reply) as srv:
        result = invoke(write_params(workdir, srv.url, target=2, per_request=3, batch_size=1))
        assert result.exit_code == 0, result.output
    assert [r["instruction"] for r in load_jsonl("data/generated/instructions.jsonl")] == [first, POOL[2]]
    [removed] = [r for r in load_jsonl("data/generated/removed.jsonl") if r["reason"] == "near_duplicate"]
    assert removed["item"]["instruction"] == second and removed["similar_to"] == first


def test_request_cap_stops_the_run_and_a_rerun_never_pays_twice(workdir):
    with OpenAIServer(lambda body, n: canned(body)) as srv:
        result = invoke(write_params(workdir, srv.url, target=40, **{"budget.max_requests": 3}))
        assert result.exit_code == 1
        assert "request cap reached" in result.output and "max_requests=3" in result.output
        assert srv.count == 3
        assert not (workdir / "data/generated/instructions.jsonl").exists()  # no partial output
        result = invoke(write_params(workdir, srv.url, target=40, **{"budget.max_requests": 100}))
        assert result.exit_code == 0, result.output
    sent = [json.dumps(b, sort_keys=True) for b in srv.requests]
    assert len(sent) == len(set(sent))  # no request was sent twice across the two runs
    m = json.loads((workdir / "metrics/generate.json").read_text())
    assert m["kept"] == 40 and m["http"]["cache_hits"] >= 2 and m["cost_usd_this_run"] < m["cost_usd"]


def test_resume_after_kill_gives_the_same_records(workdir, tmp_path_factory, monkeypatch):
    # reference: one uninterrupted run in another directory
    ref = tmp_path_factory.mktemp("reference")
    write_jsonl(ref / "seeds.jsonl", SEEDS)
    with OpenAIServer(lambda body, n: canned(body)) as srv:
        monkeypatch.chdir(ref)
        assert invoke(write_params(ref, srv.url, target=30)).exit_code == 0
        monkeypatch.chdir(workdir)
        total = srv.count
    expected = load_jsonl(ref / "data/generated/instructions.jsonl")
    assert total >= 6

    proc: dict = {}
    kill_at = total // 2

    def killer(body, n):
        if n == kill_at:
            proc["p"].send_signal(signal.SIGKILL)  # a crash mid-run, while a request is in flight
            return Reply(delay=0.5, body=chat_response("never read"))
        return canned(body)

    with OpenAIServer(killer) as srv:
        # one request at a time, so every reply before the killed request has been cached
        params = write_params(workdir, srv.url, target=30, **{"client.concurrency": 1})
        proc["p"] = subprocess.Popen([sys.executable, str(STAGE), "--params", params], cwd=workdir,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        proc["p"].communicate(timeout=60)
        assert proc["p"].returncode == -signal.SIGKILL
        assert not (workdir / "data/generated/instructions.jsonl").exists()
        answered = {json.dumps(b, sort_keys=True) for b in srv.requests[:kill_at]}
        srv.handler = lambda body, n: canned(body)
        result = invoke(params)
        assert result.exit_code == 0, result.output
        resent = [json.dumps(b, sort_keys=True) for b in srv.requests[kill_at + 1:]]
    assert not answered & set(resent)  # replies received before the kill were read from the cache
    assert len(resent) == total - kill_at  # only the killed request and those after it are sent
    def strip(recs):  # request_key hashes the base URL, and the reference ran on another port
        return [{k: v for k, v in r.items() if k != "request_key"} for r in recs]

    assert strip(load_jsonl(workdir / "data/generated/instructions.jsonl")) == strip(expected)


def test_falls_back_to_plain_text_when_json_mode_is_rejected(workdir):
    def no_json_mode(body, n):
        if "response_format" in body:
            return Reply(status=400, body={"error": {"message": "response_format is not supported"}})
        return "Budur tapşırıqlar:\n```json\n" + canned(body)[: -60] + "\n```"

    with OpenAIServer(no_json_mode) as srv:
        result = invoke(write_params(workdir, srv.url))
        assert result.exit_code == 0, result.output
    m = json.loads((workdir / "metrics/generate.json").read_text())
    assert m["response_format"] == "none" and m["kept"] == 12


def test_json_schema_mode_sends_the_schema(workdir):
    with OpenAIServer(lambda body, n: canned(body)) as srv:
        assert invoke(write_params(workdir, srv.url, response_format="json_schema", target=3)).exit_code == 0
    fmt = srv.requests[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"]["required"] == ["tasks"]


def test_stalls_with_a_clear_error_when_nothing_is_kept(workdir):
    with OpenAIServer(lambda body, n: "Üzr istəyirəm, kömək edə bilmərəm.") as srv:
        result = invoke(write_params(workdir, srv.url, batch_size=1))
    assert result.exit_code == 1 and "5 rounds in a row kept no new task" in result.output
    assert srv.count == 5


def test_disabled_writes_empty_outputs_and_says_so(workdir):
    assert PARAMS.generate.enabled is False  # the default pipeline needs no endpoint
    result = invoke(str(REPO / "params.yaml"))
    assert result.exit_code == 0, result.output
    assert "disabled" in result.output
    assert (workdir / "data/generated/instructions.jsonl").read_text() == ""
    assert json.loads((workdir / "metrics/generate.json").read_text()) == {"enabled": False, "kept": 0}


def test_enabled_without_endpoint_is_a_clear_error(workdir):
    result = invoke(write_params(workdir, ""))
    assert result.exit_code == 1
    assert "generate: enabled is true but base_url is empty" in result.output


def test_api_key_comes_from_the_named_env_var(workdir, monkeypatch):
    monkeypatch.setenv("LANGLIFT_GEN_KEY", "sk-gen-secret")
    with OpenAIServer(lambda body, n: canned(body)) as srv:
        result = invoke(write_params(workdir, srv.url, api_key_env="LANGLIFT_GEN_KEY", target=3))
        assert result.exit_code == 0, result.output
    assert srv.headers[0]["Authorization"] == "Bearer sk-gen-secret"
    assert "sk-gen-secret" not in (workdir / "params.yaml").read_text() + result.output
    assert "sk-gen-secret" not in (workdir / "metrics/generate.json").read_text()


# -- seeds -------------------------------------------------------------------------------------------

def test_seeds_accept_alpaca_and_shared_formats(tmp_path):
    alpaca = load_seeds(write_jsonl(tmp_path / "a.jsonl", SEEDS))
    assert alpaca[1] == {"id": "seed_task_1", "instruction": SEEDS[1]["instruction"],
                         "input": "Yemək çox dadlı idi.", "output": "Müsbət"}
    shared = load_seeds(write_jsonl(tmp_path / "s.jsonl", [task("Bir şeir yazın.", "Şeir.")]))
    assert shared[0]["id"] == records.record_id("instructions", task("Bir şeir yazın.", "Şeir."))
    assert len(load_seeds(REPO / "languages/az/seed_tasks.jsonl")) >= 20  # the shipped Azerbaijani seeds


def test_bad_seed_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [SEEDS[0], {"id": "x", "instruction": "Yazın.", "instances": []}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'instances'"):
        load_seeds(path)
    path = write_jsonl(tmp_path / "bad2.jsonl", [{"instruction": "Yazın.", "instances": [{"input": ""}]}])
    with pytest.raises(DataError, match=r"bad2.jsonl:1: field 'instances\[0\].output': missing"):
        load_seeds(path)
    with pytest.raises(LangliftError, match="seed tasks not found"):
        load_seeds(tmp_path / "none.jsonl")


# -- parsing -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, n_items, n_malformed", [
    ('{"tasks": [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]}', 2, 0),
    ('[{"instruction": "a", "output": "b"}, 7, "x"]', 1, 2),
    ('Sure! Here they are:\n```json\n[{"instruction": "a", "output": "b"}]\n```\nEnjoy.', 1, 0),
    ('{"tasks": [{"instruction": "a", "output": "b"}, {"instruction": "c", "outp', 1, 1),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "say "hi"", "output": "x"}\n'
     '{"instruction": "c", "output": "uses {braces}"}', 2, 1),
    ('{"Instruction": "a", "Output": "b"}', 1, 0),
    ("I'm sorry, I can't help with that.", 0, 0),
    ("", 0, 0),
])
def test_extract_is_tolerant_and_counts_malformed_items(text, n_items, n_malformed):
    parsed = extract(text)
    assert (len(parsed.items), parsed.malformed) == (n_items, n_malformed)


# -- filters -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def filters():
    return FILTERS


@pytest.mark.parametrize("item, reason", [
    (task(POOL[0], POOL[1]), None),
    ({"instruction": POOL[0]}, "missing_field"),
    (task(POOL[0], ""), "missing_field"),
    ({"instruction": POOL[0], "output": ["a", "b"]}, "bad_type"),
    (task("Şeir yaz.", POOL[1]), "too_short"),
    (task(" ".join([POOL[0]] * 20), POOL[1]), "too_long"),
    (task("Bu videonu izləyin və əsas fikirləri qısaca yazın.", POOL[1]), "blocked_keyword"),
    (task("Əlavə edilmiş faylı oxuyun və xülasəsini hazırlayın.", POOL[1]), "blocked_keyword"),
    (task("Describe the picture of the cat on the sofa.", POOL[1]), "blocked_keyword"),
    (task(POOL[0], "Bir süni intellekt kimi mənim şəxsi fikirlərim yoxdur."), "refusal"),
    (task("Write a short poem about the sea and the wind.", "The sea is calm and the wind is soft."),
     "wrong_language"),
])
def test_filters_name_one_reason(filters, item, reason):
    got, why = filters.check(item)
    assert why == reason
    if reason is None:
        assert got == {"instruction": POOL[0], "input": "", "output": POOL[1]}


def test_filters_normalise_fields(filters):
    got, why = filters.check({" Instruction ": f"  {POOL[0]} ", "input": "<noinput>", "OUTPUT": POOL[1]})
    assert why is None and got == {"instruction": POOL[0], "input": "", "output": POOL[1]}


def test_unsupported_language_needs_the_language_filter_off():
    with pytest.raises(LangliftError, match="set it to 0"):
        Filters.from_params(GenerateFilters(min_lang_score=0.5), "xx")
    assert Filters.from_params(GenerateFilters(min_lang_score=0), "xx").check(task("a b c d", "e"))[1] is None


# -- ROUGE-L -----------------------------------------------------------------------------------------

def test_lcs_matches_dynamic_programming():
    def dp(a, b):
        prev = [0] * (len(b) + 1)
        for x in a:
            cur = [0]
            for j, y in enumerate(b):
                cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
            prev = cur
        return prev[-1]

    rng = random.Random(0)
    for _ in range(500):
        a = [rng.randrange(4) for _ in range(rng.randrange(0, 70))]
        b = [rng.randrange(4) for _ in range(rng.randrange(0, 70))]
        assert lcs_length(a, b) == dp(a, b)


def test_rouge_l_equals_rouge_score_on_ascii_and_keeps_azerbaijani_letters():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    en = en_sentences(120)
    for a, b in zip(en, en[1:]):
        assert rouge_l(a, b) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure, abs=1e-12)
    assert tokens("Şəhərdə çoxlu ağac əkildi.") == ["şəhərdə", "çoxlu", "ağac", "əkildi"]


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_rouge_index_decides_exactly_as_brute_force(threshold):
    rng = random.Random(threshold)
    texts = []
    for s in POOL[:400]:
        texts.append(s)
        words = s.split()
        if rng.random() < 0.4:
            for _ in range(rng.randrange(1, 5)):
                words[rng.randrange(len(words))] = rng.choice(POOL).split()[0]
            texts.append(" ".join(words))
        if rng.random() < 0.2:
            texts.append(" ".join(words[1:-1]))
    index, kept, kept_tokens = RougeIndex(threshold), [], []
    for text in texts:
        added, match, score = index.add_if_new(text)
        toks = tokens(text)
        brute = [2 * lcs_length(toks, k) / (len(toks) + len(k)) for k in kept_tokens]
        assert added == (max(brute, default=0) <= threshold)
        if not added:
            assert score == pytest.approx(max(brute)) == pytest.approx(rouge_l(text, kept[match]))
        else:
            kept.append(text)
            kept_tokens.append(toks)
    assert 0 < index.comparisons < len(texts) * len(kept) / 20  # the prefilter skips almost every pair


# -- DVC ---------------------------------------------------------------------------------------------

def test_dvc_repro_generates_and_a_rerun_with_a_larger_target_pays_only_for_new_requests(tmp_path):
    """`dvc repro generate` in a scratch DVC project holding the repo's stage definition and code."""
    ws = tmp_path / "ws"
    for item in ["langlift", "stages/generate.py", "data/samples"]:
        src, dst = REPO / item, ws / item
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["generate"]
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"generate": stage}}), encoding="utf-8")
    write_jsonl(ws / "seeds.jsonl", SEEDS)

    def dvc(*args: str) -> str:
        run = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout + run.stderr

    dvc("init", "--no-scm", "-q")
    with OpenAIServer(lambda body, n: canned(body)) as srv:
        write_params(ws, srv.url, target=10, cache_dir=".cache/generate")
        assert "Running stage 'generate'" in dvc("repro", "generate")
        first = srv.count
        assert len(load_jsonl(ws / "data/generated/instructions.jsonl")) == 10
        assert "Running stage" not in dvc("repro", "generate")  # nothing changed: nothing runs, nothing is sent
        assert srv.count == first
        write_params(ws, srv.url, target=20, cache_dir=".cache/generate")
        dvc("repro", "generate")
        sent = [json.dumps(b, sort_keys=True) for b in srv.requests]
        assert len(set(sent)) == len(sent) > first  # the first run's replies came from the cache
    assert len(load_jsonl(ws / "data/generated/instructions.jsonl")) == 20
    assert '"kept": 20' in dvc("metrics", "show", "--json")
