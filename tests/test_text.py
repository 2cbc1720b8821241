"""Normalisation and the quality measures, on real Alpaca and Azerbaijani samples."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from conftest import SAMPLES, az_sentences

from langlift import text

ALPACA = json.loads((SAMPLES / "instructions" / "alpaca_5000.en.json").read_text(encoding="utf-8"))


def test_normalize_cleans_invisible_and_odd_whitespace():
    raw = "\ufeffBakı\u00a0şəhəri\u200b  gözəldir.\r\nİkinci\u2009sətir.\u2028Üçüncü\tsətir \u00ad\x07"
    assert text.normalize(raw) == "Bakı şəhəri gözəldir.\nİkinci sətir.\nÜçüncü\tsətir"
    assert text.normalize("e\u0301") == "\u00e9"  # NFC composes
    assert text.normalize("ﬁ", "NFKC") == "fi" and text.normalize("ﬁ", "NFC") == "ﬁ"
    assert text.normalize("خانه\u200cها") == "خانه\u200cها"  # ZWNJ is orthographic in Persian: kept
    assert text.normalize("a\n\n\n\n\nb") == "a\n\nb"
    with pytest.raises(ValueError, match="NFD"):
        text.normalize("x", "NFD")


def test_normalize_keeps_lists_bullets_and_code():
    raw = (
        "Steps:\n1.  Open\u00a0the file.   \n2. Read it.\n\n- bullet\n  - nested  item\n\n"
        "```python\ndef f(x):\n    y  =  1   # aligned\n\n\n\n    return y\n```\nAfter   code."
    )
    assert text.normalize(raw) == (
        "Steps:\n1. Open the file.\n2. Read it.\n\n- bullet\n  - nested item\n\n"
        "```python\ndef f(x):\n    y  =  1   # aligned\n\n\n\n    return y\n```\nAfter code."
    )


def _structure(s: str) -> list[tuple[str, str]]:
    """Each non-blank line's indentation and list marker."""
    return [(re.match(r"[ \t]*", line).group(), re.match(r"\s*(\d+\.|[-*•])?", line).group(1) or "")
            for line in s.rstrip().splitlines() if line.strip()]


def test_normalize_on_real_alpaca_lists_and_code():
    lists = [r["output"] for r in ALPACA if re.search(r"^1\. .*\n2\. ", r["output"], re.M)]
    code = [r["output"] for r in ALPACA if "```" in r["output"] or re.search(r"^    \S", r["output"], re.M)]
    assert len(lists) > 100 and len(code) > 20
    for s in lists + code:
        out = text.normalize(s)
        assert text.normalize(out) == out  # idempotent
        assert _structure(out) == _structure(s.strip()), s  # same lines, indentation and markers
        assert out.count("\n") <= s.count("\n")


def _char_repetition_reference(s: str, n: int) -> float:  # BigScience ROOTS, with strings
    freq = sorted(Counter(s[i : i + n] for i in range(len(s) - n + 1)).values(), reverse=True)
    top = min(int(len(freq) ** 0.5), sum(f > 1 for f in freq))
    return sum(freq[:top]) / sum(freq)


def test_char_repetition_matches_the_string_reference():
    docs = [" ".join(az_sentences(2000)[i : i + 8]) for i in range(0, 400, 8)]
    docs += ["abcabcabcabcabcabcabcabc", "Misbah yaxşı bir iş görəcək, Misbah yaxşı bir oğlandır.", "short"]
    for d in docs:
        assert text.char_repetition(d, 10) == pytest.approx(_char_repetition_reference(d, 10) if len(d) >= 10 else 0)
    assert text.char_repetition("ha" * 200, 10) == pytest.approx(0.5, abs=0.01)  # 2 distinct 10-grams, top 1


def test_word_repetition_and_special_ratio():
    assert text.word_repetition(text.words("Xeyr. Xeyr. Xeyr. Xeyr."), 3) == 1.0
    assert text.word_repetition(text.words(az_sentences(1)[0]), 3) == 0.0
    assert text.word_repetition(["a", "b"], 3) == 0.0
    assert text.special_ratio("ab!! c_") == pytest.approx(3 / 7)
    assert text.special_ratio("नमस्ते दुनिया") == 0.0  # combining marks are part of words
    assert text.special_ratio("Bakı, 2024-cü il.") == pytest.approx(3 / 17)
    assert text.words("Salam, DÜNYA! İki_söz") == ["salam", "dünya", "i̇ki_söz"]
