"""The native-speaker review: storage of judgements, pairs from evaluate's outputs, the statistics, the fold
into metrics/human.json and corrections (read back by fetch), and the Flask app's routes (real files, no mocks).
The page in a real browser: tests/test_review_browser.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import REPO, link_languages, write_jsonl

from langlift.errors import DataError, LangliftError
from langlift.fetch import fetch_source, with_default_lang
from langlift.params import FetchSource, Language
from langlift.review.app import create_app
from langlift.review.fold import corrections, fold, fold_files, read_judge
from langlift.review.pairs import Pair, load_group, load_pairs, output_dirs, shown_order
from langlift.review.stats import cohen_kappa, fleiss_kappa
from langlift.stats import wilson
from langlift.review.store import ReviewLog, check_reviewer, log_path, read_log, reviewer_logs

HEBREW = Language(code="he", flores="heb_Hebr", name="Hebrew", script="Hebr", direction="rtl")
PROMPTS = [json.loads(line) for line in (REPO / "languages/he/prompts.jsonl").read_text(encoding="utf-8").splitlines()]


def write_outputs(folder: Path, n: int, tweak: dict[str, str] | None = None) -> None:
    """evaluate's review outputs for ``n`` Hebrew prompts: ``folder/{base,finetuned}/review.jsonl``."""
    tweak = tweak or {}
    for model, answer in (("base", "תשובה קצרה {i}"), ("finetuned", "כן, זו תשובה טובה {i}")):
        write_jsonl(folder / model / "review.jsonl",
                    [{"id": p["id"], "prompt": p["prompt"],
                      "answer": tweak.get(f"{model}/{p['id']}", answer.format(i=i))} for i, p in enumerate(PROMPTS[:n])])


def judgement(reviewer: str, pair: Pair, choice: str) -> dict:
    return {"type": "judgement", "reviewer": reviewer, "group": pair.group, "id": pair.id, "key": pair.key,
            "prompt": pair.prompt, "shown": ["base", "finetuned"], "choice": choice}


# ---------------------------------------------------------------- statistics

def test_wilson_interval_matches_known_values():
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10)[1] == pytest.approx(1.0)
    assert wilson(0, 0) == (0.0, 1.0)  # no judgements: no information


def test_cohen_and_fleiss_kappa_match_textbook_examples():
    # Cohen (1960) as on Wikipedia: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None  # chance agreement 1: undefined
    # Fleiss (1971) as on Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    items = [[str(cat) for cat, count in enumerate(row) for _ in range(count)] for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.210, abs=1e-3)


# ---------------------------------------------------------------- storage

@pytest.mark.parametrize("name", ["", "../etc/x", "a b", "-x", "x/y", "corrections", "a" * 65, "ü"])
def test_unsafe_reviewer_names_are_refused(name):
    with pytest.raises(LangliftError, match="reviewer name"):
        check_reviewer(name)


def test_log_appends_whole_lines_and_drops_a_torn_tail(tmp_path):
    path = log_path("dana_1", tmp_path / "review")
    log = ReviewLog(path)
    rec = {"type": "correction", "reviewer": "dana_1", "group": "default", "id": "he-01", "key": "k",
           "prompt": "שאלה", "original": "", "text": "תשובה"}
    log.append(rec)
    log.append({**rec, "text": "תשובה אחרת"})
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") == 2 and "תשובה אחרת" in text
    with open(path, "ab") as f:
        f.write(b'{"type": "judg')                       # a crash in the middle of a write
    log = ReviewLog(path)
    assert [r["text"] for r in log.read()] == ["תשובה", "תשובה אחרת"]
    log.append(rec)
    assert len(read_log(path)) == 3
    assert list(reviewer_logs(tmp_path / "review")) == ["dana_1"]


def test_a_bad_line_names_its_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "ann.jsonl", [{"type": "judgement", "reviewer": "ann", "group": "default",
                                                  "id": "x", "key": "k", "prompt": "p"}])
    with pytest.raises(DataError, match=r"ann.jsonl:1: field 'choice'"):
        read_log(path)


# ---------------------------------------------------------------- pairs

def test_pairs_join_both_models_and_keys_change_with_the_answers(tmp_path):
    write_outputs(tmp_path / "evaluate_outputs", 4)
    write_outputs(tmp_path / "matrix" / "qwen_evaluate_outputs", 2)
    pairs = load_pairs(output_dirs(tmp_path, ["qwen", "missing"]))
    assert [(p.group, p.id) for p in pairs] == [("default", f"he-0{i}") for i in range(1, 5)] + [
        ("matrix/qwen", "he-01"), ("matrix/qwen", "he-02")]
    assert pairs[0].answers == {"base": "תשובה קצרה 0", "finetuned": "כן, זו תשובה טובה 0"}
    write_outputs(tmp_path / "evaluate_outputs", 4, {"finetuned/he-02": "תשובה חדשה"})
    again = load_group("default", tmp_path / "evaluate_outputs")
    assert [p.key == q.key for p, q in zip(pairs, again)] == [True, False, True, True]


def test_a_prompt_that_differs_between_models_is_an_error(tmp_path):
    write_outputs(tmp_path, 2)
    rows = [json.loads(x) for x in (tmp_path / "finetuned/review.jsonl").read_text(encoding="utf-8").splitlines()]
    rows[1]["prompt"] = "אחר"
    write_jsonl(tmp_path / "finetuned/review.jsonl", rows)
    with pytest.raises(DataError, match="he-02.*differs"):
        load_group("default", tmp_path)


def test_order_is_random_per_item_but_stable_per_reviewer():
    orders = [tuple(shown_order(1234, "dana", f"key{i}")) for i in range(40)]
    assert len(set(orders)) == 2                                    # both orders occur
    assert orders == [tuple(shown_order(1234, "dana", f"key{i}")) for i in range(40)]
    assert orders != [tuple(shown_order(1234, "noa", f"key{i}")) for i in range(40)]


# ---------------------------------------------------------------- fold

def test_fold_counts_wins_ties_stale_and_agreement(tmp_path):
    write_outputs(tmp_path, 6)
    pairs = load_group("default", tmp_path)
    choices = {"ann": ["finetuned", "finetuned", "base", "both_bad", "finetuned", "finetuned"],
               "ben": ["finetuned", "base", "base", "both_bad"]}
    logs = {r: [judgement(r, p, c) for p, c in zip(pairs, cs)] for r, cs in choices.items()}
    logs["ann"].insert(0, judgement("ann", pairs[5], "base"))       # changed her mind: the last line counts
    logs["ben"].append({**judgement("ben", pairs[0], "base"), "key": "0123456789abcdef"})  # an older model's pair
    judge = {"he-01": "finetuned", "he-02": "finetuned", "he-03": "tie", "he-04": "tie"}
    metrics = fold(pairs, logs, {"default": judge})
    assert {k: metrics[k] for k in ("judgements", "stale", "reviewers", "pairs", "pairs_judged")} == {
        "judgements": 10, "stale": 1, "reviewers": 2, "pairs": 6, "pairs_judged": 6}
    assert (metrics["n"], metrics["wins"], metrics["losses"], metrics["both_bad"]) == (10, 5, 3, 2)
    assert metrics["win_rate"] == pytest.approx(0.6)               # (5 wins + 2 ties / 2) / 10
    assert (metrics["win_rate_low"], metrics["win_rate_high"]) == pytest.approx(wilson(6, 10), abs=1e-4)
    # ann and ben share 4 items and agree on 3: two reviewers, so Cohen's kappa
    agreement = metrics["agreement"]
    assert agreement["items"] == 4 and agreement["raw"] == 0.75 and "fleiss_kappa" not in agreement
    ann, ben = ["f", "f", "b", "x"], ["f", "b", "b", "x"]
    assert agreement["cohen_kappa"] == pytest.approx(cohen_kappa(ann, ben), abs=1e-4)
    # the judge (he-01, he-02: finetuned; he-03, he-04: tie): ann agrees on 3 of 4, ben on 2 (both bad = tie)
    assert metrics["judge"] == {"judgements": 8, "items": 4, "agreement": 0.625}
    logs["cy"] = [judgement("cy", p, "finetuned") for p in pairs[:2]]
    assert "fleiss_kappa" in fold(pairs, logs, {})["agreement"]    # three reviewers: Fleiss


def test_the_judge_file_merges_swapped_orders(tmp_path):
    path = write_jsonl(tmp_path / "pairwise.jsonl", [
        {"id": "a", "models": ["base", "finetuned"], "verdict": "finetuned"},
        {"id": "a", "models": ["finetuned", "base"], "verdict": "finetuned"},
        {"id": "b", "models": ["base", "finetuned"], "verdict": "base"},
        {"id": "b", "models": ["finetuned", "base"], "verdict": "finetuned"},   # the order decided: a tie
        {"id": "c", "models": ["finetuned", "other"], "verdict": "other"}])
    assert read_judge(path) == {"a": "finetuned", "b": "tie"}
    write_jsonl(path, [{"id": "a", "models": ["base", "finetuned"], "verdict": "A"}])
    with pytest.raises(DataError, match="pairwise.jsonl:1: field 'verdict'"):
        read_judge(path)


def test_corrections_become_instruction_records_that_fetch_reads(tmp_path):
    write_outputs(tmp_path / "metrics" / "evaluate_outputs", 3)
    pairs = load_pairs(output_dirs(tmp_path / "metrics", []))
    app = create_app(pairs, ReviewLog(log_path("dana", tmp_path / "review")), "dana", 1234, HEBREW)
    client = app.test_client()
    steps = ((pairs[0], 1, "תשובה מתוקנת"), (pairs[1], 3, "תשובה חדשה לגמרי"), (pairs[2], 2, None))
    for pair, position, text in steps:
        assert client.post("/api/judge", json={"key": pair.key, "position": position}).status_code == 200
        chosen = shown_order(1234, "dana", pair.key)[position - 1] if position < 3 else None
        if text:
            assert client.post("/api/correct", json={"key": pair.key, "text": text}).status_code == 200
        elif chosen:  # saving the answer unchanged is no correction
            client.post("/api/correct", json={"key": pair.key, "text": pair.answers[chosen] + " "})
    out = tmp_path / "review" / "corrections.jsonl"
    metrics = fold_files(tmp_path / "review", tmp_path / "metrics", [], "he", tmp_path / "metrics/human.json", out)
    assert metrics["judgements"] == 3 and json.loads((tmp_path / "metrics/human.json").read_text())["n"] == 3
    fetched = fetch_source(with_default_lang([FetchSource(name="review", kind="instructions", uri=str(out))], "he")[0],
                           strict=True)
    assert [(r["instruction"], r["output"], r["lang"]) for r in fetched.records] == [
        (pairs[0].prompt, "תשובה מתוקנת", "he"), (pairs[1].prompt, "תשובה חדשה לגמרי", "he")]
    logs = {"dana": read_log(log_path("dana", tmp_path / "review"))}
    assert corrections(logs, "he") == corrections(logs, "he") and len(corrections(logs, "he")) == 2


# ---------------------------------------------------------------- the app's routes

def test_the_page_is_anonymised_directed_and_resumes(tmp_path):
    write_outputs(tmp_path, 3)
    pairs = load_group("default", tmp_path)
    path = log_path("noa", tmp_path / "review")
    client = create_app(pairs, ReviewLog(path), "noa", 7, HEBREW).test_client()
    html = client.get("/").get_data(as_text=True)
    assert f'data-key="{pairs[0].key}"' in html and 'lang="he" dir="rtl"' in html
    assert "base" not in html and "finetuned" not in html          # nothing tells the models apart
    first = [pairs[0].answers[m] for m in shown_order(7, "noa", pairs[0].key)]
    assert html.index(first[0]) < html.index(first[1])
    assert client.post("/api/judge", data="position=1").status_code == 415          # JSON only
    assert client.post("/api/judge", json={"key": "nope", "position": 1}).status_code == 400
    assert client.post("/api/judge", json={"key": pairs[0].key, "position": 4}).status_code == 400
    assert client.post("/api/correct", json={"key": pairs[0].key, "text": "x"}).status_code == 409
    assert client.post("/api/judge", json={"key": pairs[0].key, "position": 2}).status_code == 200
    assert read_log(path)[0]["choice"] == shown_order(7, "noa", pairs[0].key)[1]
    # a new server (the browser closed, the server restarted) resumes at the next pair
    client = create_app(pairs, ReviewLog(path), "noa", 7, HEBREW).test_client()
    assert f'data-key="{pairs[1].key}"' in client.get("/").get_data(as_text=True)
    for pair in pairs[1:]:
        client.post("/api/judge", json={"key": pair.key, "position": 3})
    assert "All 3 pairs are judged" in client.get("/").get_data(as_text=True)


def test_the_stage_folds_and_serve_refuses_without_outputs(tmp_path, monkeypatch):
    link_languages(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"language": "he"}), encoding="utf-8")
    write_outputs(tmp_path / "metrics" / "evaluate_outputs", 2)
    pairs = load_pairs(output_dirs(tmp_path / "metrics", []))
    write_jsonl(tmp_path / "data/review/ann.jsonl", [judgement("ann", pairs[0], "finetuned")])
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("langlift_stage_review", REPO / "stages" / "review.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    main = stage.main
    result = CliRunner().invoke(main, ["fold"])
    assert result.exit_code == 0, result.output
    assert "1 judgements by 1 reviewers" in result.output
    assert json.loads((tmp_path / "metrics/human.json").read_text())["wins"] == 1
    assert (tmp_path / "data/review/corrections.jsonl").read_text() == ""
    result = CliRunner().invoke(main, ["serve", "--reviewer", "ann", "--metrics", "nowhere"])
    assert result.exit_code == 1 and "no review pairs" in result.output
    result = CliRunner().invoke(main, ["serve", "--reviewer", "../ann"])
    assert result.exit_code == 1 and "reviewer name" in result.output
