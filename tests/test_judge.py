"""The LLM judge against the local OpenAI-compatible test server playing a deterministic judge: order swapping,
position bias, ties, malformed replies, the cache (a rerun sends nothing), the budget, scores and reference
answers; and the evaluate stage end to end with the judge on, on tiny models."""

from __future__ import annotations

import json
import logging
import math

import pytest
from openai_server import FakeJudge, OpenAIServer, Reply
from test_evaluate import talkative_dirs  # noqa: F401 (a fixture)

from langlift.evaluate import judge
from langlift.evaluate.judge import Item, combine, parse_score, parse_verdict
from langlift.stats import wilson
from langlift.params import Judge, Language, validate

LANGUAGE = Language(code="az", flores="azj_Latn", name="Azerbaijani", script="Latn")
ITEMS = [Item("prompts", f"q{i}", f"Sual {i}?") for i in range(5)]
# the fine-tuned model's answer is GOOD on q0..q3, the base model's on q4
ANSWERS = {"base": {f"prompts/q{i}": f"base cavab {i}" + (" GOOD" if i == 4 else "") for i in range(5)},
           "finetuned": {f"prompts/q{i}": f"yeni cavab {i}" + (" GOOD" if i < 4 else "") for i in range(5)}}


def cfg(server: OpenAIServer, tmp_path, **kw) -> Judge:
    kw.setdefault("modes", ["pairwise"])
    kw.setdefault("client", {"concurrency": 2, "max_retries": 2})
    return Judge(enabled=True, base_url=server.url, model="judge-model", api_key_env=None,
                 cache_dir=str(tmp_path / "cache"), **kw)


def run(server: OpenAIServer, tmp_path, answers=ANSWERS, items=ITEMS, **kw) -> dict:
    return judge.run(cfg(server, tmp_path, **kw), LANGUAGE, items, answers, tmp_path / "out")


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("reply, verdict", [
    ("Verdict: A", "A"), ("A is more fluent.\n**Verdict:** [[B]]", "B"), ("verdict - Tie", "tie"), ("B", "B"),
    ("[[A]]", "A"), ("Verdict: B ... on reflection, Verdict: A", "A"), ("Both are fine, I cannot choose.", None),
    ("Verdict: C", None), ("", None)])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize("reply, score", [
    ("Good.\nScore: 7", 7.0), ("Rating: 8/10", 8.0), ("6", 6.0), ("**Score:** 9.5", 9.5), ("Score: 11", None),
    ("Score: 0", None), ("no idea", None), ("Score: 2, then Score: 4", 4.0)])
def test_parse_score(reply, score):
    assert parse_score(reply) == score


def test_combine_and_wilson():
    assert combine("B", "A", "base", "finetuned") == "finetuned"      # both orders prefer the fine-tuned answer
    assert combine("A", "A", "base", "finetuned") == "tie"            # position bias: the first answer both times
    assert combine("tie", "A", "base", "finetuned") == "tie"
    assert combine(None, "B", "base", "finetuned") == "base"          # one unparseable: the other stands
    assert combine(None, None, "base", "finetuned") is None
    low, high = wilson(8, 10)  # the textbook example: 8 of 10, 95% Wilson score interval 0.490-0.943
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson(0, 0) == (0.0, 1.0) and wilson(5, 5)[1] == 1.0


def test_pairwise_asks_both_orders_and_reports_the_win_rate_with_its_interval(tmp_path):
    bot = FakeJudge()
    with OpenAIServer(bot) as srv:
        m = run(srv, tmp_path)
    assert srv.count == 10  # 5 items, each pair judged twice
    for i in range(5):
        asked = {(s["a"], s["b"]) for s in bot.seen["pairwise"] if s["question"] == f"Sual {i}?"}
        base, tuned = ANSWERS["base"][f"prompts/q{i}"], ANSWERS["finetuned"][f"prompts/q{i}"]
        assert asked == {(base, tuned), (tuned, base)}
    assert (m["judge.wins"], m["judge.losses"], m["judge.ties"], m["judge.n"]) == (4, 1, 0, 5)
    assert m["judge.win_rate"] == 0.8 and m["judge.consistency"] == 1.0
    low, high = wilson(4, 5)
    assert (m["judge.win_rate.ci_low"], m["judge.win_rate.ci_high"]) == (round(low, 4), round(high, 4))
    assert m["judge.win_rate.prompts"] == 0.8
    assert m["judge.requests"] == 10 and m["judge.unparsed"] == 0 and m["judge.complete"] == 1
    assert m["judge.prompt_version"].startswith("j")
    # the review page's contract: one line per prompt and pair
    assert lines(tmp_path / "out" / "pairwise.jsonl") == [
        {"id": f"q{i}", "models": ["base", "finetuned"], "verdict": "finetuned" if i < 4 else "base"} for i in range(5)]


def test_a_judge_that_always_picks_the_first_answer_gives_ties(tmp_path):
    with OpenAIServer(FakeJudge(pairwise=lambda a, b: "Verdict: A")) as srv:
        m = run(srv, tmp_path)
    assert (m["judge.ties"], m["judge.win_rate"], m["judge.consistency"]) == (5, 0.5, 0.0)


def test_ties_and_identical_answers(tmp_path):
    answers = {"base": {**ANSWERS["base"], "prompts/q0": "eyni"},
               "finetuned": {**ANSWERS["finetuned"], "prompts/q0": "eyni "}}
    with OpenAIServer(FakeJudge(pairwise=lambda a, b: "They are equally good. Verdict: tie")) as srv:
        m = run(srv, tmp_path, answers=answers)
    assert srv.count == 8  # the same answer twice is a tie without asking
    assert (m["judge.ties"], m["judge.n"], m["judge.win_rate"]) == (5, 5, 0.5)
    low, high = wilson(2.5, 5)
    assert m["judge.win_rate.ci_low"] == round(low, 4) and m["judge.win_rate.ci_high"] == round(high, 4)


def test_malformed_replies_are_counted_not_fatal(tmp_path):
    def flaky(body, n):
        if n == 0:
            return Reply(body="{not json")  # a broken body: retried by the client
        content = body["messages"][-1]["content"]
        if "Sual 0?" in content:
            return "I refuse to choose."     # both orders unparseable: q0 has no verdict
        if "Sual 1?" in content and content.index("yeni cavab 1") < content.index("base cavab 1"):
            return "Hmm."                    # one order unparseable: the other stands
        return FakeJudge()(body, n)

    with OpenAIServer(flaky) as srv:
        m = run(srv, tmp_path)
    assert srv.count == 11 and m["judge.unparsed"] == 3 and m["judge.unparsed.pairwise"] == 3
    assert (m["judge.wins"], m["judge.losses"], m["judge.n"]) == (3, 1, 4)
    assert [r["id"] for r in lines(tmp_path / "out" / "pairwise.jsonl")] == ["q1", "q2", "q3", "q4"]
    replies = lines(tmp_path / "out" / "judgements.jsonl")
    assert sum(r["parsed"] is None for r in replies) == 3 and len(replies) == 10


def test_a_rerun_costs_no_request(tmp_path):
    modes = ["pairwise", "score", "reference"]
    with OpenAIServer(FakeJudge()) as srv:
        first = run(srv, tmp_path, modes=modes)
        sent = srv.count
        again = run(srv, tmp_path, modes=modes)
        assert srv.count == sent == 25  # 5 references, 10 scores, 10 pairwise judgements
    assert again["judge.requests"] == 0 and again["judge.cache_hits"] == 25 and first["judge.requests"] == 25
    costs = ("judge.requests", "judge.cache_hits")
    assert {k: v for k, v in again.items() if k not in costs} == {k: v for k, v in first.items() if k not in costs}
    assert again["judge.prompt_tokens"] > 0  # the tokens of every judgement, cached ones included


def test_a_spent_budget_gives_partial_metrics_flagged_and_a_rerun_continues(tmp_path, caplog):
    with OpenAIServer(FakeJudge()) as srv:
        with caplog.at_level(logging.WARNING):
            partial = run(srv, tmp_path, budget={"max_requests": 4}, client={"concurrency": 1})
        assert srv.count == 4 and partial["judge.complete"] == 0 and partial["judge.n"] == 2
        assert "request cap reached" in caplog.text and "judge.complete = 0" in caplog.text
        full = run(srv, tmp_path, budget={"max_requests": 100})
        assert srv.count == 10 and full["judge.requests"] == 6 and full["judge.complete"] == 1 and full["judge.n"] == 5


def test_scores_and_reference_answers(tmp_path):
    items = ITEMS[:2] + [Item("instructions", "i0", "Təlimat?")]
    answers = {"base": {"prompts/q0": "pis", "prompts/q1": "pis", "instructions/i0": "pis"},
               "finetuned": {"prompts/q0": "reference: Sual 0? GOOD", "prompts/q1": "reference: Sual 1? GOOD",
                             "instructions/i0": "reference: Təlimat? GOOD"}}
    bot = FakeJudge(reference=lambda q: f"reference: {q} GOOD")
    with OpenAIServer(bot) as srv:
        m = run(srv, tmp_path, answers=answers, items=items, modes=["score", "reference"])
        assert srv.count == 3 + 6
    assert (m["judge.score.base"], m["judge.score.finetuned"], m["judge.score.delta"]) == (3.0, 9.0, 6.0)
    assert m["judge.ref.chrf.finetuned"] == 100.0 and m["judge.ref.f1.finetuned"] == 100.0
    assert m["judge.ref.chrf.base"] < 10 and m["judge.ref.f1.base"] == 0.0 and m["judge.ref.n"] == 3
    refs = lines(tmp_path / "out" / "references.jsonl")
    assert [(r["set"], r["id"], r["reference"]) for r in refs] == [
        ("prompts", "q0", "reference: Sual 0? GOOD"), ("prompts", "q1", "reference: Sual 1? GOOD"),
        ("instructions", "i0", "reference: Təlimat? GOOD")]
    # a new reference prompt is a new version: the references are asked again
    with OpenAIServer(bot) as srv:
        again = run(srv, tmp_path, answers=answers, items=items, modes=["reference"],
                    prompts={"reference": "In {name}, answer: {question}"})
        assert srv.count == 3
    assert lines(tmp_path / "out" / "references.jsonl")[0]["version"] != refs[0]["version"]
    assert again["judge.prompt_version"] != m["judge.prompt_version"]


def test_prompts_carry_the_language_and_its_rubric(tmp_path):
    with OpenAIServer(FakeJudge()) as srv:
        run(srv, tmp_path, modes=["score"], items=ITEMS[:1])
        prompt = srv.requests[0]["messages"][0]["content"]
    assert "written in Azerbaijani" in prompt and "{name}" not in prompt and "{rubric}" not in prompt
    he = validate({"language": "he"}).evaluate.judge
    assert "right to left" in he.rubric and "Modern Hebrew" in he.rubric  # languages/he/language.yaml


def test_judge_params_are_checked():
    from langlift.errors import LangliftError

    with pytest.raises(LangliftError, match="evaluate.judge: .*base_url is empty"):
        validate({"language": "az", "evaluate": {"judge": {"enabled": True}}})
    with pytest.raises(LangliftError, match="score: the prompt must contain {answer}"):
        validate({"language": "az", "evaluate": {"judge": {"prompts": {"score": "{question}"}}}})
    assert math.isclose(wilson(1, 2)[0] + wilson(1, 2)[1], 1.0)  # symmetric around one half


def test_evaluate_stage_with_the_judge_on(tmp_path, monkeypatch, talkative_dirs):
    """The real evaluate stage on tiny models, judged by the test server (it prefers the longer answer):
    flat judge.* metrics and the review page's files."""
    from test_evaluate import _params, _run, _write_inputs

    def longer(a: str, b: str) -> str:
        return "Verdict: " + ("tie" if len(a) == len(b) else "A" if len(a) > len(b) else "B")

    _write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    with OpenAIServer(FakeJudge(pairwise=longer)) as srv:
        params = _params(tmp_path, *talkative_dirs, sib200=None, judge={
            "enabled": True, "base_url": srv.url, "model": "judge-model", "api_key_env": None,
            "cache_dir": str(tmp_path / "judge-cache")})
        result = _run(tmp_path, params)
        assert result.exit_code == 0, result.output
    first = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    # 9 items (3 prompts, 6 instructions): 9 references, 18 scores, 18 pairwise (fewer if answers are equal)
    assert first["judge.requests"] == srv.count and 27 < srv.count <= 45 and first["judge.calls"] == srv.count
    assert first["judge.n"] == 3 + 6 and first["judge.complete"] == 1 and first["judge.unparsed"] == 0
    for key in ("judge.win_rate", "judge.win_rate.ci_low", "judge.win_rate.ci_high", "judge.score.base",
                "judge.score.finetuned", "judge.ref.chrf.base", "judge.ref.chrf.finetuned", "judge.ref.f1.finetuned"):
        assert isinstance(first[key], float), key
    assert first["judge.win_rate.ci_low"] <= first["judge.win_rate"] <= first["judge.win_rate.ci_high"]

    outputs = tmp_path / "metrics" / "evaluate_outputs"
    review = {m: lines(outputs / m / "review.jsonl") for m in ("base", "finetuned")}
    assert [r["id"] for r in review["base"]] == ["q0", "q1", "q2"] and all(r["prompt"] for r in review["base"])
    verdicts = lines(outputs / "judge" / "pairwise.jsonl")
    assert [v["id"] for v in verdicts] == ["q0", "q1", "q2"]
    for v, b, f in zip(verdicts, review["base"], review["finetuned"]):
        want = "tie" if len(b["answer"].strip()) == len(f["answer"].strip()) else max(
            (b, "base"), (f, "finetuned"), key=lambda x: len(x[0]["answer"]))[1]
        assert v == {"id": b["id"], "models": ["base", "finetuned"], "verdict": want}
    details = json.loads((tmp_path / "metrics" / "evaluate_details.json").read_text())
    assert details["judge"]["prompt_version"] == first["judge.prompt_version"]
