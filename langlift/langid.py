"""Offline language identification (py3langid's bundled model: 142 languages, ISO 639-1 codes).

Used by the corpus quality filter, the translate quality checks and the generate filters.
"""

from __future__ import annotations

import functools

from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

from langlift.errors import LangliftError


@functools.cache
def _identifier() -> LanguageIdentifier:
    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


def supported(lang: str) -> bool:
    """Whether the bundled model knows ``lang`` (ISO 639-1)."""
    return lang in _identifier().nb_classes


def detect(text: str) -> tuple[str, float]:
    """The most likely language of ``text`` and its probability."""
    lang, prob = _identifier().classify(text)
    return lang, float(prob)


def score(text: str, lang: str) -> float:
    """Probability that ``text`` is in ``lang``; raises if the model does not know ``lang``."""
    if not supported(lang):
        raise LangliftError(
            f"language ID: the offline model has no '{lang}'; set the quality threshold to 0 to skip the check"
        )
    for code, prob in _identifier().rank(text):
        if code == lang:
            return float(prob)
    return 0.0
