"""Writing systems: which script a text is in, and conversion between a language's scripts.

:func:`script_of` names a text's script by the majority of its letters (ISO 15924 codes, as
``language.script`` in ``params.yaml``), so a stage can keep, convert or drop documents written in
a language's other script. :data:`CONVERTERS` holds the conversions :func:`langlift.text.normalize`
applies with ``convert=``; today Uzbek Cyrillic to Uzbek Latin (:func:`uz_cyrl_to_latn`).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

# The first word of a letter's Unicode name -> its ISO 15924 script code.
_SCRIPTS = {
    "LATIN": "Latn", "CYRILLIC": "Cyrl", "HEBREW": "Hebr", "ARABIC": "Arab", "GREEK": "Grek", "ARMENIAN": "Armn",
    "GEORGIAN": "Geor", "DEVANAGARI": "Deva", "BENGALI": "Beng", "TAMIL": "Taml", "ETHIOPIC": "Ethi", "THAI": "Thai",
    "HANGUL": "Hang", "HIRAGANA": "Hira", "KATAKANA": "Kana", "CJK": "Hani",
}
NO_LETTERS = "Zyyy"  # ISO 15924 "common": digits, punctuation, symbols only
UNKNOWN = "Zzzz"  # ISO 15924 "uncoded": letters of a script not in _SCRIPTS


@functools.cache
def _letter_script(ch: str) -> str | None:
    """The script of a letter, ``None`` for a non-letter or a modifier letter (ʻ ʼ count for no script)."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "").split(" ", 1)[0]
    return None if name == "MODIFIER" else _SCRIPTS.get(name, UNKNOWN)


def script_of(text: str) -> str:
    """ISO 15924 code of the script most of ``text``'s letters are written in (``Latn``, ``Cyrl``,
    ``Hebr``, ``Arab``, ...; ties go to the script met first). ``Zyyy`` when ``text`` has no letters,
    ``Zzzz`` for letters of a script this module has no code for."""
    votes: Counter[str] = Counter()
    for ch, n in Counter(text).items():  # counting characters first is C-fast; names are looked up once each
        if script := _letter_script(ch):
            votes[script] += n
    return votes.most_common(1)[0][0] if votes else NO_LETTERS


def in_script(text: str, script: str) -> bool:
    """Whether ``text`` is written in ``script`` (majority of letters) or has no letters at all; the
    predicate for a language's ``other_script: drop``."""
    return script_of(text) in (script, NO_LETTERS)


# Uzbek Cyrillic -> Uzbek Latin, by the 1995 alphabet and its spelling rules ("Oʻzbek tilining asosiy imlo
# qoidalari"): oʻ gʻ with U+02BB, the tutuq belgisi (ъ) with U+02BC.
_UZ_LOWER = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "yo", "ж": "j", "з": "z", "и": "i", "й": "y",
    "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f",
    "х": "x", "ц": "s", "ч": "ch", "ш": "sh", "щ": "sh", "ъ": "\u02bc", "ы": "i", "ь": "", "э": "e", "ю": "yu",
    "я": "ya", "ў": "o\u02bb", "қ": "q", "ғ": "g\u02bb", "ҳ": "h",
}


def _cased(s: str) -> int:
    """How many letters of ``s`` have case (ʻ and ʼ have none)."""
    return sum(c.lower() != c.upper() for c in s)


# Capitals whose Latin has two cased letters (Ш -> Sh or SH) are cased by context in _uz_context; the rest
# (Ў -> Oʻ, Ъ -> ʼ, Ь -> nothing) have one spelling and go through the table.
_UZ_DIGRAPH_CAPS = "".join(c.upper() for c, latn in _UZ_LOWER.items() if _cased(latn) > 1)
_UZ_TABLE = str.maketrans(
    {**_UZ_LOWER, **{c.upper(): latn.upper() for c, latn in _UZ_LOWER.items() if c.upper() not in _UZ_DIGRAPH_CAPS}}
)
_UZ_VOWELS = "аеёиоуўэюяАЕЁИОУЎЭЮЯ"
_LETTER = r"[^\W\d_]"
_UZ_CONTEXT = re.compile(  # each branch starts with the letter it rewrites, so the scan skips other letters fast
    # е is ye at the start of a word and after a vowel, ъ or ь (ер -> yer, қаерда -> qayerda, объект -> obyekt)
    rf"(?P<ye>[еЕ](?:(?<!{_LETTER}.)|(?<=[{_UZ_VOWELS}ъьЪЬ].)))"
    # ц is ts after a vowel inside a word (лицей -> litsey), else s (цирк -> sirk, концерт -> konsert, абзац -> abzas)
    rf"|(?P<ts>[цЦ](?<=[{_UZ_VOWELS}].)(?={_LETTER}))"
    # the Russian separator ъ before е ё ю я is not written (объект -> obyekt), nor ъ after ў (мўъжиза -> moʻjiza)
    r"|(?P<mute>[ъЪ](?:(?=[еёюяЕЁЮЯ])|(?<=[ўЎ].)))"
    r"|(?P<y>[ьЬ](?=[оО]))"  # ьо is yo (бульон -> bulyon)
    r"|(?P<apos_h>[ҳҲ](?<=[сС].))"  # s and h apart are sʼh, never the digraph sh (Исҳоқ -> Isʼhoq)
    r"|(?P<a>[яЯ](?:(?<=[сС][еЕ][нН][тТ].)|(?<=[оО][кК][тТ].))(?=[бБ][рР]))"  # sentabr, oktabr
    rf"|(?P<caps>[{_UZ_DIGRAPH_CAPS}])"
)
_UZ_OUT = {"ye": "ye", "ts": "ts", "mute": "", "y": "y", "apos_h": "\u02bch", "a": "a"}
_UZ_CYRL = re.compile("[\u0400-\u04ff]")


def _all_caps(s: str, i: int) -> bool:
    """Whether the capital at ``s[i]`` stands in an all-capitals word (ШАҲАР, ТОШ), not a capitalised one (Шаҳар)."""
    after = s[i + 1] if i + 1 < len(s) else ""
    return after.isupper() or (i > 0 and s[i - 1].isupper() and not after.islower())


def _uz_context(m: re.Match[str]) -> str:
    """The Latin of one letter whose spelling depends on its neighbours, cased like its word."""
    ch = m.group()
    latn = _UZ_LOWER[ch.lower()] if m.lastgroup == "caps" else _UZ_OUT[m.lastgroup]
    if ch.islower() or _cased(latn) < 2:
        return latn.upper() if ch.isupper() else latn
    return latn.upper() if _all_caps(m.string, m.start()) else latn[0].upper() + latn[1:]


def uz_cyrl_to_latn(text: str) -> str:
    """Uzbek Cyrillic to Uzbek Latin by the 1995 alphabet's rules: ш ч -> sh ch, ў ғ -> oʻ gʻ (U+02BB),
    қ ҳ х -> q h x, ё ю я -> yo yu ya, е -> ye at the start of a word and after a vowel, ъ or ь
    and e elsewhere, ц -> ts after a vowel inside a word and s elsewhere, ъ -> ʼ (U+02BC; not written
    before е ё ю я nor after ў), ь dropped (ьо -> yo), щ ы -> sh i, сҳ -> sʼh, сентябр/октябр -> sentabr/oktabr.
    Capitals follow the word: Шаҳар -> Shahar, ШАҲАР -> SHAHAR. Other characters are kept; the input
    is expected in NFC (й, ў, ё precomposed), as :func:`langlift.text.normalize` makes it."""
    if not _UZ_CYRL.search(text):
        return text
    return _UZ_CONTEXT.sub(_uz_context, text).translate(_UZ_TABLE)


class Converter(NamedTuple):
    """A conversion of a language's texts from its ``source`` script; ``letters`` finds a letter of
    that script (so texts without one skip :func:`script_of`)."""

    source: str
    letters: re.Pattern[str]
    convert: Callable[[str], str]


# Target (BCP 47 language-script tag: the language's code and ``script``) -> its converter.
CONVERTERS: dict[str, Converter] = {"uz-Latn": Converter("Cyrl", _UZ_CYRL, uz_cyrl_to_latn)}
