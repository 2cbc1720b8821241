"""Segmenting, masking, the translation memory, the segment cache and each quality check."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, SAMPLES, az_sentences
from langlift.errors import DataError
from langlift.translate.cache import SegmentCache, segment_key
from langlift.translate.memory import MemoryBackend
from langlift.params import Quality
from langlift.translate.quality import QualityChecker, longest_loop
from langlift.translate.segment import Masker, Segmenter, looks_like_code

TEXT = """Here are 3 tips for staying healthy:

1. Drink water every day. Visit https://example.com/health?x=1 for more. Dr. Smith agrees!
2. Run `pip install fitness` and write to coach@example.org.
   - Nested bullet with a {name} placeholder
- Sleep 8 hours.
## Summary

```python
def score(x):
    return x * 2
```
    total = score(21);
Result: 42"""


def upper(layout):
    return [p.masked.upper() for p in layout.pieces]


def test_structure_code_and_protected_spans_survive():
    seg = Segmenter(max_chars=400)
    layout = seg.split(TEXT)
    texts = [p.text for p in layout.pieces]
    assert "Drink water every day. Visit https://example.com/health?x=1 for more. Dr. Smith agrees!" in texts
    assert not any("def score" in t or "total =" in t or t.startswith("```") for t in texts)
    assert layout.join([p.text for p in layout.pieces]) == TEXT  # identity round trip is exact

    translated = [seg.masker.unmask(p, p.masked.upper())[0] for p in layout.pieces]
    out = layout.join(translated)
    lines, src_lines = out.split("\n"), TEXT.split("\n")
    assert len(lines) == len(src_lines)
    for a, b in zip(lines, src_lines):  # list markers, headings, blank lines and indentation are untouched
        prefix = b[: len(b) - len(b.lstrip(" -#0123456789.`"))]
        assert a.startswith(prefix)
    assert "```python\ndef score(x):\n    return x * 2\n```\n    total = score(21);\n" in out
    for span in ("https://example.com/health?x=1", "`pip install fitness`", "coach@example.org", "{name}", "42"):
        assert span in out, span
    assert "1. DRINK WATER" in out and "## SUMMARY" in out and "RESULT: 42" in out


def test_long_lines_split_at_sentences_not_inside_urls_or_abbreviations():
    seg = Segmenter(max_chars=40)
    line = "Dr. Smith went to www.example.com/a.b today. The price was 3.5 dollars. It rained! Then we left."
    layout = seg.split(line)
    texts = [p.text for p in layout.pieces]
    assert texts == ["Dr. Smith went to www.example.com/a.b today.", "The price was 3.5 dollars. It rained!",
                     "Then we left."]
    assert layout.join(texts) == line


def test_mask_tokens_restore_even_when_spaced_and_detect_breakage():
    m = Masker(["number", "url"])
    piece = m.piece("Call 112 or see https://x.org now")
    assert piece.masked == "Call <x0> or see <x1> now"
    assert m.unmask(piece, "Zəng edin < x0 > və ya baxın <x1 >") == ("Zəng edin 112 və ya baxın https://x.org", True)
    restored, ok = m.unmask(piece, "Zəng edin <x0> <x0>")
    assert not ok and restored == "Zəng edin 112 112"
    assert not m.unmask(piece, "Zəng edin")[1]


def test_text_without_letters_and_code_lines_are_not_sent():
    seg = Segmenter()
    assert seg.split("[2, 4, 5, 7, 8]").pieces == []
    assert seg.split("|---|---|").pieces == []
    assert looks_like_code("for (int i = 0; i < n; i++) {")
    assert looks_like_code("import numpy as np")
    assert looks_like_code("from math import sqrt; print(sqrt(x))")
    assert not looks_like_code("Write a story about a dog that learns to fly.")


def test_memory_whole_and_normalised_lookup(tmp_path):
    path = tmp_path / "tm.jsonl"
    path.write_text(json.dumps({"en": "Hello  world.\n", "az": "Salam dünya."}) + "\n"
                    + json.dumps({"en": "Good bye", "az": "Sağ ol"}) + "\n"
                    + json.dumps({"en": "Good bye", "az": "Hələlik"}) + "\n", encoding="utf-8")
    tsv = tmp_path / "tm.tsv"
    tsv.write_text("Thank you\tTəşəkkür edirəm\n", encoding="utf-8")
    mem = MemoryBackend([path, tsv], source_key="en", target_key="az")
    assert mem.translate(["Hello world.", " Good   bye ", "Thank you", "Unknown"]) == [
        "Salam dünya.", "Sağ ol", "Təşəkkür edirəm", None]
    assert mem.conflicts == 1


def test_memory_bad_line_names_file_line_field(tmp_path):
    path = tmp_path / "tm.jsonl"
    path.write_text('{"en": "a", "az": "b"}\n{"en": "c"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"tm.jsonl:2: field 'az'"):
        MemoryBackend([path], target_key="az")


def test_shipped_memory_covers_the_shipped_alpaca_subset():
    mem = MemoryBackend([REPO / "languages" / "az" / "translation_memory.jsonl"], target_key="az")
    records = json.loads((SAMPLES / "instructions" / "alpaca_az_subset.en.json").read_text(encoding="utf-8"))
    fields = [r[f] for r in records for f in ("instruction", "input", "output") if r.get(f, "").strip()]
    hits = sum(mem.lookup(f) is not None for f in fields)
    assert hits / len(fields) > 0.95


def test_cache_roundtrip_and_keys(tmp_path):
    k1 = segment_key("seq2seq", "m", "az", "f1", "Hello")
    assert k1 != segment_key("seq2seq", "m", "az", "f2", "Hello")  # settings change the key
    assert k1 != segment_key("api", "m", "az", "f1", "Hello")
    with SegmentCache(tmp_path / "c.sqlite") as cache:
        cache.put_many([(k1, "seq2seq", "m", "az", "f1", "Hello", "Salam")])
    with SegmentCache(tmp_path / "c.sqlite") as cache:  # persisted across connections
        assert cache.get_many([k1, "nope"]) == {k1: "Salam"}
        assert len(cache) == 1


@pytest.fixture(scope="module")
def checker():
    cfg = Quality(length_ratio=(0.5, 2.0), ratio_min_chars=20, min_lang_score=0.5, lang_min_chars=30,
                        untranslated_min_words=4, max_repeats=4)
    return QualityChecker(cfg, "az", Masker(["code", "url", "email", "placeholder", "number"]))


AZ = az_sentences(5)


@pytest.mark.parametrize("case, src, out, reason", [
    ("empty", "Describe the water cycle in simple words.", "", "empty"),
    ("untranslated", "Describe the water cycle in simple words.", "Describe the water cycle in simple words.",
     "untranslated"),
    ("too short", "Describe the water cycle in simple words for a child.", "Su.", "length_ratio"),
    ("too long", "Name a fruit that is yellow.", AZ[0] + " " + AZ[1], "length_ratio"),
    ("wrong language", "The cat sleeps on the warm sofa all day long.",
     "Le chat dort sur le canapé chaud toute la journée.", "wrong_language"),
    ("repetition", "Say something nice about cats and dogs.",
     "Pişiklər gözəldir, pişiklər gözəldir, pişiklər gözəldir, pişiklər gözəldir.", "repetition"),
    ("placeholders", "Visit https://example.com and write {name} to me@example.org.",
     "Ziyarət edin və mənə yazın, bu çox vacibdir.", "placeholders"),
])
def test_each_quality_check_fires(checker, case, src, out, reason):
    assert reason in checker.check({"output": src}, {"output": out}), case


def test_good_translation_and_legitimate_copies_pass(checker):
    good = {"instruction": "Translate the names of 3 cities: Baku, Ganja, Sumqayit.",
            "output": "Bakı, Gəncə və Sumqayıt şəhərlərinin adlarını tərcümə edin, 3 şəhər."}
    src = {"instruction": good["instruction"], "output": "Baku, Ganja, Sumqayit and 2,300 people."}
    out = {"instruction": good["output"], "output": "Bakı, Gəncə, Sumqayıt və 2300 nəfər."}
    assert checker.check(src, out) == []
    # short or non-English copies (names, code, foreign quotes) are not 'untranslated'
    assert checker.check({"input": "G, B, E"}, {"input": "G, B, E"}) == []
    french = "J'ai mangé mon déjeuner à midi avec mes amis."
    assert "untranslated" not in checker.check({"input": french}, {"input": french})


def test_loops_are_relative_to_the_source():
    assert longest_loop("ha ha ha ha ha") >= 4
    assert longest_loop("a normal sentence without loops") == 1
