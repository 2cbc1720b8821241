"""split: deterministic, stable under additions, leak-free, with the configured English share."""

from __future__ import annotations

import pytest
from conftest import write_jsonl

from langlift import records
from langlift import split as S
from langlift.errors import DataError, LangliftError
from langlift.params import Language, Split


def pairs(n: int, start: int = 0) -> list[dict]:
    """English records and their Azerbaijani translations, joined by source_id."""
    out = []
    for i in range(start, start + n):
        en = records.make("instructions", "alpaca", instruction=f"Count to {i}.", output=f"1..{i}", lang="en")
        az = records.make("instructions", "tm", instruction=f"{i}-ə qədər say.", output=f"1..{i}", lang="az",
                          source_id=en["id"])
        out += [en, az]
    return out


AZ = Language(code="az", flores="azj_Latn", name="Azerbaijani", script="Latn")


def split(recs, seed, val, test, english_share, **floors):
    cfg = Split(val=val, test=test, english_share=english_share, **{"min_val": 0, "min_test": 0, **floors})
    return S.split_instructions(recs, "az", seed, cfg)


def ids(splits):
    return {name: {r["id"] for r in recs} for name, recs in splits.items()}


def test_split_is_deterministic_and_leak_free():
    recs = pairs(2000)
    a = split(recs, 1, 0.1, 0.1, 0.1)
    b = split(list(reversed(recs)), 1, 0.1, 0.1, 0.1)
    assert ids(a) == ids(b)
    S.check_disjoint(a)
    test_groups = {S.group_key(r) for r in a["test"] + a["val"]}
    assert not any(S.group_key(r) in test_groups for r in a["train"]), "a translation's source leaked into train"
    assert all(r["lang"] == "az" for r in a["val"] + a["test"])
    assert 150 <= len(a["test"]) <= 250 and 150 <= len(a["val"]) <= 250


def test_adding_records_moves_none_of_the_old_ones():
    before = split(pairs(1000), 7, 0.1, 0.1, 0.0)
    after = split(pairs(1000) + pairs(500, start=1000), 7, 0.1, 0.1, 0.0)
    for name in before:
        assert ids(before)[name] <= ids(after)[name]


def test_english_share_of_train():
    out = split(pairs(2000), 3, 0.05, 0.05, 0.10)
    summary = S.summary(out, "az")
    assert summary["train_english_share"] == pytest.approx(0.10, abs=0.005)
    assert summary["train_az"] + summary["train_en"] == summary["train"]
    none = split(pairs(200), 3, 0.05, 0.05, 0.0)
    assert all(r["lang"] == "az" for r in none["train"])


def test_seed_changes_the_split():
    recs = pairs(500)
    assert ids(split(recs, 1, 0.2, 0.2, 0))["test"] != \
        ids(split(recs, 2, 0.2, 0.2, 0))["test"]


def test_leak_check_catches_a_shared_id():
    rec = pairs(1)[1]
    with pytest.raises(LangliftError, match="split leak"):
        S.check_disjoint({"train": [rec], "test": [rec]})


def test_a_small_language_still_gets_evaluation_sets():
    out = split(pairs(60), 1, 0.05, 0.05, 0.1, min_val=8, min_test=8)
    assert (len(out["val"]), len(out["test"])) == (8, 8)  # 5% of 60 groups would be 3
    S.check_disjoint(out)
    with pytest.raises(LangliftError, match="cannot fill test"):
        split(pairs(12), 1, 0.05, 0.05, 0.1, min_val=8, min_test=8)


def test_corpus_and_parallel_splits():
    docs = [records.make("corpus", "c", text=f"Sənəd {i}.", lang="az") for i in range(1000)]
    corpus = S.split_corpus(docs, 1, 0.1)
    assert 60 <= len(corpus["val"]) <= 140 and len(corpus["train"]) + len(corpus["val"]) == 1000
    par = [records.make("parallel", "p", src=f"Doc {i}.", tgt=f"Sənəd {i}.", src_lang="en", tgt_lang="az")
           for i in range(300)]
    first, dropped = S.parallel_test(par, AZ, 1, 50)
    assert len(first) == 50 and dropped == 0
    assert {r["id"] for r in first} == {r["id"] for r in S.parallel_test(par[::-1], AZ, 1, 50)[0]}


def test_the_parallel_test_set_gets_the_languages_script():
    """Tatoeba's Uzbek: Cyrillic references become Latin like the training text, or are left out and counted."""
    lines = [("I love you.", "Мен сени севаман."), ("Where is the school?", "Maktab qayerda?")]
    par = [records.make("parallel", "t", src=en, tgt=uz, src_lang="en", tgt_lang="uz") for en, uz in lines]
    convert = Language(code="uz", flores="uzn_Latn", name="Uzbek", script="Latn", normalize={"other_script": "convert"})
    got, dropped = S.parallel_test(par, convert, 1, 10)
    assert sorted(r["tgt"] for r in got) == ["Maktab qayerda?", "Men seni sevaman."] and dropped == 0
    drop = convert.model_copy(update={"normalize": convert.normalize.model_copy(update={"other_script": "drop"})})
    got, dropped = S.parallel_test(par, drop, 1, 10)
    assert [r["tgt"] for r in got] == ["Maktab qayerda?"] and dropped == 1


def test_read_records_rejects_duplicate_ids(tmp_path):
    rec = pairs(1)[0]
    path = write_jsonl(tmp_path / "x.jsonl", [rec, rec])
    with pytest.raises(DataError, match=r"x\.jsonl:2: field 'id': duplicate id"):
        S.read_records(path, "instructions")
