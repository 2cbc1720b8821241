"""Offline language identification: py3langid's bundled model (142 languages, ISO 639-1 codes).

Used by the corpus quality filter, the translate quality checks and the generate filters.
py3langid walks an Aho-Corasick automaton over the UTF-8 bytes one byte at a time in Python (about
2 ms for a 700-character document). In an Aho-Corasick automaton the state after any prefix depends
only on its last ``depth`` bytes (``depth`` = the longest feature), so :class:`FastIdentifier` computes
the state at every position at once by walking ``depth`` steps from the root with numpy. The feature
counts, and hence the scores, are exactly py3langid's (``tests/test_langid.py`` compares them).
"""

from __future__ import annotations

import functools

import numpy as np
from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

from langlift.errors import LangliftError


class FastIdentifier(LanguageIdentifier):
    """A :class:`py3langid.langid.LanguageIdentifier` whose feature extraction runs in numpy."""

    __slots__ = ("_nm", "_rb", "_out", "_depth", "_ptc")

    def _prepare(self) -> None:
        self._nm = np.asarray(self.tk_nextmove, dtype=np.uint32)  # a copy of the array.array transition table
        self._rb = np.asarray(self._rowbase, dtype=np.int64)
        self._out = np.asarray(self.tk_output, dtype=np.int64)
        self._depth = self._max_depth()
        self._ptc = np.ascontiguousarray(self.nb_ptc, dtype=np.float32)  # rows upcast once, not per call

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


@functools.cache
def identifier() -> FastIdentifier:
    """The bundled model with normalised probabilities."""
    ident = FastIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)
    ident._prepare()
    return ident


def supported(lang: str) -> bool:
    """Whether the bundled model knows ``lang`` (ISO 639-1)."""
    return lang in identifier().nb_classes


def detect(text: str) -> tuple[str, float]:
    """The most likely language of ``text`` and its probability."""
    lang, prob = identifier().classify(text)
    return lang, float(prob)


def score(text: str, lang: str) -> float:
    """Probability that ``text`` is in ``lang``; raises if the model does not know ``lang``."""
    if not supported(lang):
        raise LangliftError(
            f"language ID: the offline model has no '{lang}'; set the quality threshold to 0 to skip the check"
        )
    ident = identifier()
    return float(ident._decide(text)[ident.nb_classes.index(lang)])
