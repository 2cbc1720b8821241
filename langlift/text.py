"""Text normalisation and the document measures the quality filters use.

:func:`normalize` makes equal-looking texts equal byte for byte (so exact dedupe works) without
flattening structure: newlines, numbered lists, bullets, indentation and fenced code blocks survive.
The measures (:func:`char_repetition`, :func:`word_repetition`, :func:`special_ratio`) follow the
BigScience ROOTS filters that AzLlama-style corpus cleaning uses; they are plain functions so the
datatrove cluster pipeline (``configs/datatrove_corpus.py``) reuses them unchanged.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter

import numpy as np

# Invisible characters dropped: zero-width space, word joiner, invisible operators, BOM, soft
# hyphen, Mongolian vowel separator and bidi marks/embeddings/isolates. ZWNJ and ZWJ (U+200C/D)
# are kept: they are orthographic in Persian and Indic scripts and join emoji sequences.
_DROP = (
    "\u00ad\u180e\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\ufeff"
)
_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_NEWLINES = "\r\u2028\u2029\x85\x0b\x0c"
_CONTROLS = "".join(
    chr(c) for c in [*range(0x00, 0x09), *range(0x0E, 0x20), *range(0x7F, 0xA0)] if chr(c) not in _NEWLINES
)
_TABLE = str.maketrans(
    {**dict.fromkeys(_DROP + _CONTROLS), **dict.fromkeys(_SPACES, " "), **dict.fromkeys(_NEWLINES, "\n")}
)
_ODD = re.compile("[" + re.escape(_DROP + _CONTROLS + _SPACES + _NEWLINES) + "]")

_FENCE = re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.M | re.S)
_INNER_SPACES = re.compile(r"(?<=\S) {2,}")
_TRAILING = re.compile(r"[ \t]+$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")
_NOT_WORD = re.compile(r"[^\w\s]|_")
_WORD = re.compile(r"\w+")

FORMS = ("NFC", "NFKC", "none")


def normalize(text: str, form: str = "NFC") -> str:
    """Normalise Unicode and whitespace, keeping the text's layout.

    - Unicode ``form`` (NFC by default; NFKC also folds compatibility characters; ``none`` skips it).
    - Invisible characters and control characters (except tab and newline) are removed.
    - Unicode spaces (NBSP, thin space, ideographic space, ...) become a space; CR, CRLF, line and
      paragraph separators, vertical tab and form feed become ``\\n``.
    - Trailing spaces are removed from every line; outside fenced code blocks, runs of spaces after
      the first non-space of a line collapse to one and three or more line breaks become two.
      Leading indentation is never touched, so lists, nested bullets and code keep their shape.
    - Leading and trailing whitespace of the whole text is removed.
    """
    if form not in FORMS:
        raise ValueError(f"unknown normalisation form {form!r}; expected one of {FORMS}")
    if _ODD.search(text):  # translate() is slow on non-ASCII text, so only when there is work
        text = text.replace("\r\n", "\n").translate(_TABLE)
    if form != "none":
        text = unicodedata.normalize(form, text)
    text = _TRAILING.sub("", text)
    parts, last = [], 0
    for fence in _FENCE.finditer(text):  # prose between code fences is tidied, code is kept as written
        parts += [_tidy(text[last : fence.start()]), fence.group()]
        last = fence.end()
    text = "".join(parts) + _tidy(text[last:])
    return text.strip()


def _tidy(prose: str) -> str:
    return _BLANK_RUNS.sub("\n\n", _INNER_SPACES.sub(" ", prose))


@functools.cache
def _marks() -> tuple[frozenset[str], re.Pattern[str]]:
    """Every combining mark (category M*), and a pattern for runs of word characters or marks."""
    marks = [chr(cp) for cp in range(0x110000) if unicodedata.category(chr(cp))[0] == "M"]
    return frozenset(marks), re.compile(f"[\\w{re.escape(''.join(marks))}]+")


def words(text: str) -> list[str]:
    """Case-folded word tokens: runs of Unicode letters, marks, digits and underscore."""
    marks, word_or_mark = _marks()
    if marks.isdisjoint(text):  # the fast path: casefold keeps a token whole ("İ" -> "i̇")
        return [w.casefold() for w in _WORD.findall(text)]
    return word_or_mark.findall(text.casefold())  # \w lacks marks (Devanagari vowel signs, decomposed accents)


_BASE = np.uint64(0x100000001B3)  # the 64-bit FNV prime


def char_ngram_hashes(text: str, n: int) -> np.ndarray:
    """64-bit polynomial hashes of every character ``n``-gram of ``text``, in order (one hash of
    the whole text when it is shorter than ``n``). Equal n-grams hash equal; distinct ones collide
    with probability ~2**-64."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = min(n, len(cps))
    m = len(cps) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    for j in range(n):  # modulo 2**64
        h = h * _BASE + cps[j : j + m]
    return h


def char_repetition(text: str, n: int = 10) -> float:
    """ROOTS character repetition ratio: the share of all character ``n``-gram occurrences taken
    by the most frequent repeated ``n``-grams (at most sqrt(#distinct) of them). 0 for short texts."""
    if len(text) < n:
        return 0.0
    freq = np.sort(np.unique(char_ngram_hashes(text, n), return_counts=True)[1])[::-1]
    top = min(int(len(freq) ** 0.5), int((freq > 1).sum()))
    return float(freq[:top].sum() / freq.sum())


def word_repetition(tokens: list[str], n: int = 3) -> float:
    """ROOTS word repetition ratio: the share of word ``n``-gram occurrences whose ``n``-gram occurs
    more than once. 0 for texts shorter than ``n`` words."""
    if len(tokens) < n:
        return 0.0
    freq = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)).values()
    return sum(f for f in freq if f > 1) / sum(freq)


@functools.cache
def _is_special(ch: str) -> bool:
    # punctuation (P*), symbols (S*) and other (C*: controls, format, private use, unassigned)
    return unicodedata.category(ch)[0] in "PSC" and not ch.isspace()


def special_ratio(text: str) -> float:
    """Share of characters that are neither letters, marks, digits nor whitespace."""
    if not text:
        return 0.0
    candidates = Counter(_NOT_WORD.findall(text))  # + combining marks, which are not \w but are not special
    return sum(n for ch, n in candidates.items() if _is_special(ch)) / len(text)
