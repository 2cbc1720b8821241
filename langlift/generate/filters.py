"""Per-item filters for generated tasks; each rejection names one reason, counted in the metrics.

Order: fields (``missing_field``, ``bad_type``) → length (``too_short``, ``too_long``) → ``blocked_keyword``
(tasks a text model cannot do: images, files, browsing; Alpaca's keyword-list idea) → ``refusal`` →
``wrong_language``. Duplicates are judged later, against everything kept (see ``rouge.py``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from langlift import langid
from langlift.errors import LangliftError
from langlift.params import GenerateFilters

NO_INPUT = {"", "<noinput>", "<no input>", "noinput", "none", "n/a", "-"}


def _words(text: str) -> int:
    return len(text.split())


def keyword_pattern(keywords: list[str]) -> re.Pattern[str] | None:
    """A case-insensitive matcher: ``word`` matches the whole word, ``word*`` any word starting with it."""
    parts = []
    for kw in keywords:
        kw = unicodedata.normalize("NFC", kw.strip().casefold())
        if not kw:
            continue
        if kw.endswith("*"):
            parts.append(rf"(?<!\w){re.escape(kw[:-1])}")
        else:
            parts.append(rf"(?<!\w){re.escape(kw)}(?!\w)")
    return re.compile("|".join(parts)) if parts else None


@dataclass
class Filters:
    lang: str
    min_instruction_words: int = 3
    max_instruction_words: int = 150
    max_input_words: int = 500
    max_output_words: int = 1000
    min_lang_score: float = 0.5
    blocked: re.Pattern[str] | None = None
    refusals: tuple[str, ...] = ()

    @classmethod
    def from_params(cls, cfg: GenerateFilters, lang: str) -> Filters:
        """Build from ``generate.filters``; keyword and refusal lists are keyed by language code."""
        def per_lang(table: dict[str, list[str]]) -> list[str]:
            return [*table.get(lang, []), *(table.get("en", []) if lang != "en" else [])]

        if cfg.min_lang_score > 0 and not langid.supported(lang):
            raise LangliftError(f"generate.filters.min_lang_score: the language-ID model has no '{lang}'; "
                                "set it to 0 to skip the language filter")
        return cls(lang=lang, min_instruction_words=cfg.min_instruction_words,
                   max_instruction_words=cfg.max_instruction_words, max_input_words=cfg.max_input_words,
                   max_output_words=cfg.max_output_words, min_lang_score=cfg.min_lang_score,
                   blocked=keyword_pattern(per_lang(cfg.blocked_keywords)),
                   refusals=tuple(unicodedata.normalize("NFC", r.casefold()) for r in per_lang(cfg.refusals)))

    def check(self, item: dict[str, Any]) -> tuple[dict[str, str] | None, str | None]:
        """``(task, None)`` with clean ``instruction``/``input``/``output`` strings, or ``(None, reason)``."""
        fields = {str(k).strip().lower(): v for k, v in item.items()}
        task = {}
        for key in ("instruction", "input", "output"):
            value = fields.get(key)
            if value is None:
                value = ""
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            elif not isinstance(value, str):
                return None, "bad_type"
            task[key] = unicodedata.normalize("NFC", value.strip())
        if task["input"].casefold() in NO_INPUT:
            task["input"] = ""
        if not task["instruction"] or not task["output"]:
            return None, "missing_field"
        n = _words(task["instruction"])
        if n < self.min_instruction_words:
            return None, "too_short"
        if (n > self.max_instruction_words or _words(task["input"]) > self.max_input_words
                or _words(task["output"]) > self.max_output_words):
            return None, "too_long"
        if self.blocked and self.blocked.search(task["instruction"].casefold()):
            return None, "blocked_keyword"
        output = task["output"].casefold()
        if any(r in output for r in self.refusals):
            return None, "refusal"
        if self.min_lang_score > 0:
            if langid.score(f"{task['instruction']}\n{task['output']}", self.lang) < self.min_lang_score:
                return None, "wrong_language"
        return task, None
