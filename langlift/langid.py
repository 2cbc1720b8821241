"""Offline language identification: py3langid 0.4.0's bundled model (ISO 639-1 codes where one exists).

Used by the corpus quality filter, the translate quality checks and the generate filters.
py3langid walks an Aho-Corasick automaton over the UTF-8 bytes one byte at a time in Python (about
2 ms for a 700-character document). In an Aho-Corasick automaton the state after any prefix depends
only on its last ``depth`` bytes (``depth`` = the longest feature), so :class:`FastIdentifier` computes
the state at every position at once by walking ``depth`` steps from the root with numpy. The feature
counts, and hence the raw scores, are exactly py3langid's (``tests/test_langid.py`` compares them).

Two corrections over scoring the model's columns as they are:

- The model has 142 columns but 140 labels: ``sr`` and ``uz`` each have a Cyrillic and a Latin
  column. Probabilities are normalised as py3langid does (softmax of the raw scores divided by the
  square root of the byte length) and then summed per label, so Uzbek in Cyrillic scores as ``uz``
  (the installed py3langid folds the columns inside its private ``_decide`` too; langlift no longer
  depends on that).
- Hebrew points and cantillation marks (niqqud, te'amim: the Unicode category Mn characters of the
  Hebrew blocks) are removed before scoring. The model learnt pointed text as Biblical Hebrew
  (``hbo``): fully pointed modern Hebrew scored ``he`` < 0.01, unpointed it scores ``he`` > 0.99.
  Other combining marks are kept: removing Arabic harakat lowers pointed Standard Arabic from
  0.96-0.99 to 0.56-0.88 ``ar`` (the model learnt pointed text as ``ar``), and Devanagari, Tamil or
  Yoruba marks are letters or tones, not optional pointing.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata

import numpy as np
from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

from langlift.errors import LangliftError

_HEBREW_BLOCKS = (*range(0x0590, 0x0600), *range(0xFB1D, 0xFB50))  # Hebrew, Alphabetic Presentation Forms (Hebrew part)
_HEBREW_POINTS = re.compile("[" + "".join(chr(c) for c in _HEBREW_BLOCKS if unicodedata.category(chr(c)) == "Mn") + "]")


def unpoint(text: str) -> str:
    """``text`` in NFC without Hebrew points and cantillation marks; other text is unchanged."""
    return _HEBREW_POINTS.sub("", unicodedata.normalize("NFC", text))


class FastIdentifier(LanguageIdentifier):
    """A :class:`py3langid.langid.LanguageIdentifier` whose feature extraction runs in numpy."""

    __slots__ = ("_nm", "_rb", "_out", "_depth", "_ptc", "langs", "_index", "_column_lang")

    def _prepare(self) -> None:
        self._nm = np.asarray(self.tk_nextmove, dtype=np.uint32)  # a copy of the array.array transition table
        self._rb = np.asarray(self._rowbase, dtype=np.int64)
        self._out = np.asarray(self.tk_output, dtype=np.int64)
        self._depth = self._max_depth()
        self._ptc = np.ascontiguousarray(self.nb_ptc, dtype=np.float32)  # rows upcast once, not per call
        self.langs = tuple(dict.fromkeys(self.nb_classes))  # distinct labels, in column order
        self._index = {lang: i for i, lang in enumerate(self.langs)}
        self._column_lang = np.array([self._index[c] for c in self.nb_classes])

    def _max_depth(self) -> int:
        """Length of the longest automaton state string: breadth-first search from the root."""
        seen = np.zeros(len(self._rb), dtype=bool)
        seen[0], frontier, depth = True, np.array([0]), 0
        bytes_ = np.arange(256, dtype=np.int64)
        while True:
            reached = np.zeros_like(seen)
            reached[self._nm[(self._rb[frontier][:, None] + bytes_).ravel()]] = True
            frontier = np.flatnonzero(reached & ~seen)
            if not len(frontier):
                return depth
            seen[frontier], depth = True, depth + 1

    def _states(self, data: bytes) -> np.ndarray:
        b = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        head, state = [], 0
        for byte in data[: self._depth - 1]:  # the first positions have fewer than `depth` bytes behind them
            state = int(self._nm[self._rb[state] + byte])
            head.append(state)
        n = len(b) - self._depth + 1
        if n <= 0:
            return np.array(head, dtype=np.int64)
        s = np.zeros(n, dtype=np.int64)
        for j in range(self._depth):
            s = self._nm[self._rb[s] + b[j : j + n]].astype(np.int64)
        return np.concatenate([np.array(head, dtype=np.int64), s])

    def _raw_score(self, text: bytes) -> np.ndarray:
        feats = self._out[self._states(text)]
        feats = feats[feats >= 0]
        if not len(feats):
            return super()._raw_score(b"")
        idx, counts = np.unique(feats, return_counts=True)
        return np.log1p(counts.astype(np.float32)) @ self._ptc[idx] + self.nb_pc  # as py3langid's _sparse_score

    def probabilities(self, text: str) -> np.ndarray:
        """Probability of each of :attr:`langs` for ``text``, the columns of a label summed."""
        data = self._encode(unpoint(text))
        scores = self._raw_score(data).astype(np.float64) / math.sqrt(len(data) or 1)  # py3langid's temperature
        p = np.exp(scores - scores.max())
        return np.bincount(self._column_lang, weights=p / p.sum(), minlength=len(self.langs))


@functools.cache
def identifier() -> FastIdentifier:
    """The bundled model with normalised probabilities."""
    ident = FastIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)
    ident._prepare()
    return ident


def supported(lang: str) -> bool:
    """Whether the bundled model knows ``lang`` (ISO 639-1)."""
    return lang in identifier()._index


def detect(text: str) -> tuple[str, float]:
    """The most likely language of ``text`` and its probability."""
    ident = identifier()
    p = ident.probabilities(text)
    i = int(p.argmax())
    return ident.langs[i], float(p[i])


def score(text: str, lang: str) -> float:
    """Probability that ``text`` is in ``lang``; raises if the model does not know ``lang``."""
    if not supported(lang):
        raise LangliftError(
            f"language ID: the offline model has no '{lang}'; set the quality threshold to 0 to skip the check"
        )
    ident = identifier()
    return float(ident.probabilities(text)[ident._index[lang]])
