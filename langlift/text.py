"""Text normalisation and the document measures the quality filters use.

:func:`normalize` makes equal-looking texts equal byte for byte (so exact dedupe works) without
flattening structure: newlines, numbered lists, bullets, indentation and fenced code blocks survive.
The measures (:func:`char_repetition`, :func:`word_repetition`, :func:`special_ratio`) follow the
BigScience ROOTS filters that AzLlama-style corpus cleaning uses; they are plain functions so the
datatrove pipeline (:mod:`langlift.dedupe.datatrove`) reuses them unchanged.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Literal, get_args

import numpy as np

from langlift import scripts

# Invisible characters dropped: zero-width space, word joiner, invisible operators, BOM, soft
# hyphen, Mongolian vowel separator and the bidi controls (LRM/RLM, ALM, embeddings/overrides LRE..RLO
# and PDF, isolates LRI..PDI): they only steer how a renderer orders runs of right-to-left text, the
# text itself is stored in logical order, so in training text they are noise that makes equal words
# differ. ZWNJ and ZWJ (U+200C/D) are kept: they are orthographic in Persian and Indic scripts and
# join emoji sequences.
_DROP = (
    "\u00ad\u061c\u180e\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
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
_GERESHES = "\u05f3\u05f4"  # ׳ ״: word-internal in Hebrew abbreviations and loanwords (צה״ל, ג׳ירפה)
_WORD = re.compile(rf"\w+(?:[{_GERESHES}]\w+)*")
_LETTER = r"[^\W\d_]"

# Hebrew: letters, points (niqqud) and cantillation marks. Maqaf U+05BE, paseq U+05C0, sof pasuq U+05C3
# and nun hafukha U+05C6 sit inside the points' block but are punctuation, never stripped.
_HEB = "\u05d0-\u05ea"
_HEB_POINTS = re.compile("[\u0591-\u05af\u05b0-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7]")
_HEB_PREFIXES = "בהוכלמש"  # letters that prefix a word, also one in quotes: ל'מלכות השמים', ב"הארץ"
_HEB_NOT_PREFIX = "".join(chr(c) for c in range(0x5D0, 0x5EB) if chr(c) not in _HEB_PREFIXES)
# ASCII ' after a non-prefix letter (and up to 3 points) before a letter: the geresh of ג'ירפה, צ'יפס, אלג'יריה.
_NP, _P = f"[{_HEB_NOT_PREFIX}]", _HEB_POINTS.pattern
_GERESH = re.compile(rf"'(?=[{_HEB}])(?:(?<={_NP}')|(?<={_NP}{_P}')|(?<={_NP}{_P}{{2}}')|(?<={_NP}{_P}{{3}}'))")
# ASCII " between letters: gershayim before an abbreviation's last letter (צה"ל, ע"י), or before more letters
# (להט"בים) unless a closing " follows on the line, which makes it an opening quote (ב"הארץ" היום).
_GERSHAYIM = re.compile(rf'"(?<=[{_HEB}]")(?=[{_HEB}](?![{_HEB}])|[{_HEB}]{{2}}(?![^\n]*[{_HEB}]"(?![{_HEB}])))')

# Uzbek Latin: the spellings of the oʻ/gʻ sign and the tutuq belgisi folded to U+02BB and U+02BC. Each pattern
# starts with the apostrophe (the scan skips other characters fast) and leaves the right spelling alone.
_UZ_APOSTROPHES = "'\u02bb\u02bc\u2018\u2019`\u00b4"
_UZ_NOT_OKINA, _UZ_NOT_TUTUQ = _UZ_APOSTROPHES.replace("\u02bb", ""), _UZ_APOSTROPHES.replace("\u02bc", "")
_UZ_OG_INNER = re.compile(rf"[{_UZ_NOT_OKINA}](?<=[oOgG].)(?={_LETTER})")  # oʻzbek, togʻda
_UZ_TUTUQ = re.compile(rf"[{_UZ_NOT_TUTUQ}](?<={_LETTER}.)(?<![oOgG].)(?={_LETTER})")  # maʼno, sanʼat
_UZ_OG_FINAL = re.compile(rf"[{_UZ_NOT_OKINA}](?<=[oOgG].)(?!{_LETTER})")  # bogʻ, togʻ - or a closing quote
# a quote mark opening ('Bu) or closing (kino') a quotation
_UZ_QUOTE = re.compile(
    rf"(?P<open>(?<!{_LETTER})[{_UZ_APOSTROPHES}](?={_LETTER}))|(?<={_LETTER})[{_UZ_APOSTROPHES}](?!{_LETTER})"
)

Niqqud = Literal["keep", "strip"]
Geresh = Literal["keep", "fold"]
Apostrophes = Literal["keep", "uz"]
Rule = Callable[[str], str]
FORMS = ("NFC", "NFKC", "none")
NIQQUD, GERESH, APOSTROPHES = get_args(Niqqud), get_args(Geresh), get_args(Apostrophes)


def normalize(
    text: str,
    form: str = "NFC",
    *,
    niqqud: Niqqud = "keep",
    geresh: Geresh = "keep",
    apostrophes: Apostrophes = "keep",
    convert: str | None = None,
) -> str:
    """Normalise Unicode and whitespace, keeping the text's layout.

    - Unicode ``form`` (NFC by default; NFKC also folds compatibility characters; ``none`` skips it).
    - Invisible characters and control characters (except tab and newline) are removed, bidi
      controls included (LRM, RLM, ALM, LRE..PDF, LRI..PDI); right-to-left text is stored in logical
      order and needs none of them. Hebrew geresh ׳, gershayim ״ and maqaf ־ are kept as written.
    - Unicode spaces (NBSP, thin space, ideographic space, ...) become a space; CR, CRLF, line and
      paragraph separators, vertical tab and form feed become ``\\n``.
    - Trailing spaces are removed from every line; outside fenced code blocks, runs of spaces after
      the first non-space of a line collapse to one and three or more line breaks become two.
      Leading indentation is never touched, so lists, nested bullets and code keep their shape.
    - Leading and trailing whitespace of the whole text is removed.

    Per-language options, applied to prose only (fenced code blocks are kept as written):

    - ``niqqud``: ``keep`` (default) or ``strip`` the Hebrew points (U+05B0-U+05BD, U+05BF, U+05C1-2,
      U+05C4-5, U+05C7) and cantillation marks (U+0591-U+05AF), so pointed and unpointed spellings of
      a word are equal (שֶׁקֶר -> שקר). Maqaf, paseq and sof pasuq stay. Runs after the Unicode form,
      which decomposes the pointed presentation forms (שׁ U+FB2A); with ``none`` those keep their points.
    - ``geresh``: ``keep`` (default) or ``fold`` ASCII ``'`` and ``"`` standing for geresh and
      gershayim between Hebrew letters into ׳ U+05F3 and ״ U+05F4 (ג'ירפה -> ג׳ירפה, צה"ל -> צה״ל).
      Quotes are left alone: ' after a prefix letter (ל'מלכות') and " opening a quotation closed on the
      same line (ב"הארץ"); so are the word-final ' of מס' and " before a word's last letters when a
      closing quote follows (להט"בים inside "...").
    - ``apostrophes``: ``keep`` (default) or ``uz``: the Uzbek Latin oʻ/gʻ sign and the tutuq
      belgisi, written with any of ' ` ´ ‘ ’ ʻ ʼ, become one spelling: after o or g, U+02BB (oʻ gʻ);
      between other letters, U+02BC (maʼno). Only in word context: between two letters, or after a
      word-final o/g unless an opening quote earlier on the line makes it a closing one ('Bu kino').
    - ``convert``: ``None`` (default) or a key of :data:`langlift.scripts.CONVERTERS`, the language's
      code and script (``uz-Latn``): a text whose letters are mostly in the converter's source script
      is converted (Uzbek Cyrillic to Uzbek Latin); texts mostly in other scripts are left as they are.
    """
    for name, value, allowed in (
        ("form", form, FORMS), ("niqqud", niqqud, NIQQUD), ("geresh", geresh, GERESH),
        ("apostrophes", apostrophes, APOSTROPHES), ("convert", convert, (None, *scripts.CONVERTERS)),
    ):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")
    if _ODD.search(text):  # translate() is slow on non-ASCII text, so only when there is work
        text = text.replace("\r\n", "\n").translate(_TABLE)
    rules = _rules(text, niqqud, geresh, apostrophes, convert)
    parts, last = [], 0
    for fence in _FENCE.finditer(text):  # prose between code fences is tidied, code is kept as written
        parts += [_prose(text[last : fence.start()], form, rules), _TRAILING.sub("", _unicode(fence.group(), form))]
        last = fence.end()
    parts.append(_prose(text[last:], form, rules))
    return "".join(parts).strip()


def _rules(text: str, niqqud: str, geresh: str, apostrophes: str, convert: str | None) -> tuple[list[Rule], list[Rule]]:
    """The language rules for ``text``'s prose: those to run before the Unicode form, and those after."""
    before, after = [], []
    if apostrophes == "uz":  # before the form: NFKC turns ´ into a space and a combining accent
        before.append(_uz_apostrophes)
    if convert is not None:
        converter = scripts.CONVERTERS[convert]
        if converter.letters.search(text) and scripts.script_of(text) == converter.source:
            after.append(converter.convert)  # after the form: it reads precomposed letters (й, ў)
    if niqqud == "strip":  # after the form: NFC decomposes the pointed presentation forms (שׁ U+FB2A)
        after.append(_strip_niqqud)
    if geresh == "fold":
        after.append(_fold_geresh)
    return before, after


def _prose(prose: str, form: str, rules: tuple[list[Rule], list[Rule]]) -> str:
    """Prose: the language rules around the Unicode form, then trailing spaces, space runs and blank lines."""
    before, after = rules
    for rule in before:
        prose = rule(prose)
    prose = _unicode(prose, form)
    for rule in after:
        prose = rule(prose)
    return _BLANK_RUNS.sub("\n\n", _INNER_SPACES.sub(" ", _TRAILING.sub("", prose)))


def _unicode(text: str, form: str) -> str:
    return text if form == "none" else unicodedata.normalize(form, text)


def _strip_niqqud(text: str) -> str:
    return _HEB_POINTS.sub("", text)


def _fold_geresh(text: str) -> str:
    return _GERSHAYIM.sub("\u05f4", _GERESH.sub("\u05f3", text))


def _uz_apostrophes(text: str) -> str:
    text = _UZ_TUTUQ.sub("\u02bc", _UZ_OG_INNER.sub("\u02bb", text))
    return _UZ_OG_FINAL.sub(_uz_final, text)


def _uz_final(m: re.Match[str]) -> str:
    """A word-final o/g apostrophe: the oʻ/gʻ sign, unless the last quote mark before it on its line
    opens a quotation, which this one then closes ('Bu kino')."""
    s, i = m.string, m.start()
    opens = [q["open"] is not None for q in _UZ_QUOTE.finditer(s, s.rfind("\n", 0, i) + 1, i)]
    return m.group() if opens and opens[-1] else "\u02bb"


@functools.cache
def _marks() -> tuple[frozenset[str], re.Pattern[str]]:
    """Every combining mark (category M*), and a pattern for runs of word characters or marks."""
    marks = [chr(cp) for cp in range(0x110000) if unicodedata.category(chr(cp))[0] == "M"]
    word = f"[\\w{re.escape(''.join(marks))}]+"
    return frozenset(marks), re.compile(f"{word}(?:[{_GERESHES}]{word})*")


def words(text: str) -> list[str]:
    """Case-folded word tokens: runs of Unicode letters, marks, digits and underscore; a Hebrew geresh
    or gershayim between two such runs is part of the word (צה״ל, ג׳ירפה)."""
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


_SOCIAL = re.compile(r"(?:@\w+|#\w+|https?://\S+|www\.\S+|RT)[:.,!?]*")


def social_ratio(text: str) -> float:
    """Share of whitespace-separated tokens that are social-media noise: @handles, #hashtags, URLs, ``RT``,
    or emoji and other symbols with no letter or digit."""
    tokens = text.split()
    if not tokens:
        return 0.0
    noise = sum(1 for t in tokens if _SOCIAL.fullmatch(t) or not any(c.isalnum() for c in t) and
                any(unicodedata.category(c) == "So" for c in t))
    return noise / len(tokens)


def special_ratio(text: str) -> float:
    """Share of characters that are neither letters, marks, digits nor whitespace."""
    if not text:
        return 0.0
    candidates = Counter(_NOT_WORD.findall(text))  # + combining marks, which are not \w but are not special
    return sum(n for ch, n in candidates.items() if _is_special(ch)) / len(text)
