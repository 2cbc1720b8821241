"""ROUGE-L near-duplicate detection against everything kept so far, fast enough for 50k+ items.

Self-instruct (Wang et al.; Stanford Alpaca) drops a new instruction whose ROUGE-L F1 with any
instruction already kept exceeds a threshold (0.7). Compared naively that is O(n²) LCS computations.
:class:`RougeIndex` gives the same answers with far less work, using bounds that can only discard
pairs which cannot pass the threshold:

- F1 = 2·LCS / (m + n) and LCS ≤ min(m, n): a pair above ``t`` needs ``2·min/(m+n) > t`` (length filter);
- LCS ≤ multiset overlap of the two token bags: ``2·overlap/(m+n) > t`` is needed (overlap filter);
- so a duplicate pair shares more than ``t·m/(2-t)`` tokens, and by the prefix-filtering lemma of
  set-similarity joins (AllPairs, PPJoin) it shares a token among the first ``m - α + 1`` tokens of
  each bag under any fixed global order. Only those prefix tokens are indexed and probed. The order is
  rarest first, by document frequency, so postings stay short; as items arrive one at a time, the
  frequencies are re-read and everything re-indexed whenever the index doubles (amortised O(1) per item);
- if the first shared token sits at positions ``i`` and ``j`` of the two sorted bags, the overlap is at
  most ``min(m - i, n - j)`` (PPJoin's positional filter).

Survivors get an exact LCS by the bit-parallel algorithm (Allison-Dix / Hyyrö) on Python ints.

Tokens are Unicode words, case-folded. ``rouge_score``'s tokenizer keeps only ``[a-z0-9]``, which cuts
Azerbaijani words at every ə, ş, ç, ğ, ı, ö, ü; on ASCII text the two give the same scores.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Sequence

from langlift.errors import LangliftError

_WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    """Case-folded Unicode word tokens."""
    return _WORD.findall(text.casefold())


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence, bit-parallel: O(len(b)) big-int operations."""
    if len(a) < len(b):
        a, b = b, a
    masks: dict[Hashable, int] = {}
    for i, x in enumerate(a):
        masks[x] = masks.get(x, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for y in b:
        u = v & masks.get(y, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts on word tokens."""
    ta, tb = tokens(a), tokens(b)
    if not ta or not tb:
        return 0.0
    return 2 * lcs_length(ta, tb) / (len(ta) + len(tb))


class RougeIndex:
    """Texts added so far, queried for the most similar one above ``threshold`` (ROUGE-L F1 > threshold).

    A bag element is ``(token id, occurrence)``: the second "the" of a text is its own element, so set
    overlap of bags is the multiset overlap of tokens.
    """

    FIRST_REINDEX = 256

    def __init__(self, threshold: float):
        if not 0 < threshold:
            raise LangliftError(f"ROUGE-L threshold must be above 0, got {threshold} (use 1.0 to disable)")
        self.threshold = threshold
        self._ids: dict[str, int] = {}                       # token -> int, for LCS and elements
        self._docs: list[tuple[list[int], frozenset[tuple[int, int]]]] = []
        self._postings: dict[tuple[int, int], list[tuple[int, int]]] = {}  # prefix element -> (doc, position)
        self._df: Counter[tuple[int, int]] = Counter()       # live document frequency of each element
        self._rank: dict[tuple[int, int], int] = {}          # frozen frequencies that order the bags
        self._next_reindex = self.FIRST_REINDEX
        self.comparisons = 0                                 # exact LCS computations done (for benchmarks)

    def __len__(self) -> int:
        return len(self._docs)

    def _min_overlap(self, m: int) -> int:
        """Fewest shared tokens a bag of ``m`` tokens needs with any partner to pass the threshold."""
        t = self.threshold
        return math.floor(t * m / (2 - t) - 1e-9) + 1

    def _prefix(self, elems: list[tuple[int, int]]) -> list[tuple[int, int]]:
        return elems[: len(elems) - self._min_overlap(len(elems)) + 1]

    def _sorted(self, elems: frozenset[tuple[int, int]] | list[tuple[int, int]]) -> list[tuple[int, int]]:
        rank = self._rank
        return sorted(elems, key=lambda e: (rank.get(e, 0), e))

    def _encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids, and the bag's elements sorted rarest first."""
        ids = [self._ids.setdefault(w, len(self._ids)) for w in tokens(text)]
        seen: Counter[int] = Counter()
        elems = []
        for i in ids:
            elems.append((i, seen[i]))
            seen[i] += 1
        return ids, self._sorted(elems)

    def query(self, text: str) -> tuple[int | None, float]:
        """``(index, score)`` of the most similar text added so far if above the threshold, else ``(None, best)``."""
        return self._query(*self._encode(text))

    def _query(self, ids: list[int], elems: list[tuple[int, int]]) -> tuple[int | None, float]:
        m, t = len(ids), self.threshold
        if m == 0 or t >= 1:
            return None, 0.0
        bag: set[tuple[int, int]] | None = None
        seen: set[int] = set()
        best, best_doc = 0.0, None
        for i, e in enumerate(self._prefix(elems)):
            for d, j in self._postings.get(e, ()):
                if d in seen:
                    continue
                seen.add(d)  # first shared prefix element: x[i] == y[j], none shared before either
                other, other_bag = self._docs[d]
                n = len(other)
                need = t * (m + n) / 2  # the overlap (and the LCS) must exceed this
                if min(m, n) <= need or min(m - i, n - j) <= need:  # length and positional filters
                    continue
                if bag is None:
                    bag = set(elems)
                if len(bag & other_bag) <= need:
                    continue
                self.comparisons += 1
                score = 2 * lcs_length(ids, other) / (m + n)
                if score > best or (score == best and best_doc is not None and d < best_doc):
                    best, best_doc = score, d
        return (best_doc, best) if best > t else (None, best)

    def add(self, text: str) -> int:
        """Index ``text`` unconditionally; returns its index."""
        return self._add(*self._encode(text))

    def _add(self, ids: list[int], elems: list[tuple[int, int]]) -> int:
        d = len(self._docs)
        self._docs.append((ids, frozenset(elems)))
        self._df.update(elems)
        for j, e in enumerate(self._prefix(elems)):
            self._postings.setdefault(e, []).append((d, j))
        if len(self._docs) >= self._next_reindex:
            self._reindex()
        return d

    def _reindex(self) -> None:
        """Order elements by their current document frequency and rebuild the postings."""
        self._rank = dict(self._df)
        self._postings = {}
        for d, (_, bag) in enumerate(self._docs):
            for j, e in enumerate(self._prefix(self._sorted(bag))):
                self._postings.setdefault(e, []).append((d, j))
        self._next_reindex = 2 * len(self._docs)

    def add_if_new(self, text: str) -> tuple[bool, int | None, float]:
        """Add ``text`` unless a near-duplicate is already indexed: ``(added, duplicate_of, score)``."""
        ids, elems = self._encode(text)
        match, score = self._query(ids, elems)
        if match is not None:
            return False, match, score
        self._add(ids, elems)
        return True, None, score
