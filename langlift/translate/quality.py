"""Per-record quality checks on translations. Each check returns a reason name when it fails.

- ``empty``: a non-empty source field came back empty;
- ``untranslated``: a field came back identical to its (long enough) English source;
- ``length_ratio``: translated/source character ratio outside the configured bounds;
- ``wrong_language``: language ID of the translated text says it is not the target language;
- ``repetition``: a generation loop (a short unit repeated back to back) the source does not have;
- ``placeholders``: protected spans (code, URLs, numbers, placeholders) lost or altered.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from langlift import langid
from langlift.errors import LangliftError
from langlift.translate.segment import PROTECT_PATTERNS, Masker, normalize

REASONS = ("empty", "untranslated", "length_ratio", "wrong_language", "repetition", "placeholders")
_LOOP = re.compile(r"(\S.{1,49}?)(?:[\s,;.!?-]*\1){2,}", re.DOTALL)
_WORD = re.compile(r"[^\W\d_]{2,}")
_LETTERS = re.compile(r"[^\W\d_]")
_NUMBER = re.compile(PROTECT_PATTERNS["number"])


def longest_loop(text: str) -> int:
    """How many times the most repeated short unit (2-50 chars) occurs back to back in ``text``."""
    best = 1
    for m in _LOOP.finditer(text.lower()):
        unit = m.group(1)
        best = max(best, len(re.findall(re.escape(unit), m.group(0))))
    return best


class QualityChecker:
    def __init__(self, cfg: Quality, lang: str, masker: Masker):
        if cfg.min_lang_score > 0 and not langid.supported(lang):
            raise LangliftError(f"translate.quality.min_lang_score: the offline language-ID model has no '{lang}'; "
                                "set it to 0 to skip the language check")
        self.cfg, self.lang, self.masker = cfg, lang, masker

    def check(self, source: dict[str, str], target: dict[str, str], lang_text: str | None = None) -> list[str]:
        """The reasons (in :data:`REASONS` order) why ``target`` fields are a bad translation of ``source``.

        ``lang_text`` is what language ID judges (the translated pieces, without code copied verbatim);
        by default the target fields with protected spans removed.
        """
        cfg, reasons = self.cfg, set()
        for field, src in source.items():
            out = target.get(field, "")
            if not src.strip():
                continue
            if not out.strip():
                reasons.add("empty")
                continue
            if normalize(out) == normalize(src) and self._english(src):
                reasons.add("untranslated")
            if len(src) >= cfg.ratio_min_chars and not cfg.length_ratio[0] <= len(out) / len(src) <= cfg.length_ratio[1]:
                reasons.add("length_ratio")
            loops = longest_loop(out)
            if loops >= cfg.max_repeats and loops > longest_loop(src):
                reasons.add("repetition")
            if Counter(map(_span_key, self.masker.spans(src))) - Counter(map(_span_key, self.masker.spans(out))):
                reasons.add("placeholders")
        if cfg.min_lang_score > 0:
            text = lang_text if lang_text is not None else " ".join(target.values())
            text = self.masker.regex.sub(" ", text) if self.masker.regex else text
            if len(_LETTERS.findall(text)) >= cfg.lang_min_chars and langid.score(text, self.lang) < cfg.min_lang_score:
                reasons.add("wrong_language")
        return [r for r in REASONS if r in reasons]

    def _english(self, text: str) -> bool:
        """Whether a source is English prose (copies of code, names, foreign quotes are legitimate)."""
        bare = self.masker.regex.sub(" ", text) if self.masker.regex else text
        return len(_WORD.findall(bare)) >= self.cfg.untranslated_min_words and langid.detect(bare)[0] == "en"


def _span_key(span: str) -> str:
    """Numbers compare by their digits (2,300 and 2300 are the same number written per locale)."""
    return re.sub(r"\D", "", span) if _NUMBER.fullmatch(span) else span
