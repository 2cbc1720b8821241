"""Composable filtering steps in the spirit of datatrove's pipeline blocks.

A step is a callable ``step(records, removed) -> iterator of kept records``; it reports every
record it drops as ``removed(record, reason, **details)``. Steps chain lazily, so a pipeline
streams: ``for step in steps: records = step(records, removed)``. Each step lists the ``reasons``
it can report, so metrics name every reason even when nothing was removed for it.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import multiprocessing
import multiprocessing.pool
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from langlift import langid, scripts, text
from langlift.dedupe.minhash import LSH, MinHasher, jaccard, lsh_params, one_thread, shingle_hashes, shingles
from langlift.errors import LangliftError
from langlift.params import DedupeQuality

log = logging.getLogger(__name__)

Record = dict[str, Any]


class Removed(Protocol):
    def __call__(self, record: Record, reason: str, **details: Any) -> None: ...


class Step(Protocol):
    reasons: tuple[str, ...]

    def __call__(self, records: Iterable[Record], removed: Removed) -> Iterator[Record]: ...


@dataclass(frozen=True)
class Kind:
    """Which fields of a record kind hold its text and which must stay non-empty."""

    name: str
    fields: tuple[str, ...]
    required: tuple[str, ...]

    def text(self, rec: Record) -> str:
        """The record's text as one string (non-empty fields joined by newlines)."""
        return "\n".join(rec[f] for f in self.fields if rec.get(f))


INSTRUCTIONS = Kind("instructions", ("instruction", "input", "output"), ("instruction", "output"))
CORPUS = Kind("corpus", ("text",), ("text",))


class Collector:
    """Counts removals by reason and keeps the first ``sample`` removed records of each reason."""

    def __init__(self, dataset: str, reasons: Iterable[str], sample: int):
        self.dataset, self.sample = dataset, sample
        self.counts: dict[str, int] = dict.fromkeys(reasons, 0)
        self.samples: list[Record] = []

    def __call__(self, record: Record, reason: str, **details: Any) -> None:
        self.counts[reason] += 1
        if self.counts[reason] <= self.sample:
            self.samples.append({"dataset": self.dataset, "reason": reason, **details, **record})


@dataclass
class Normalize:
    """Normalise every text field in place (:func:`langlift.text.normalize`); drop records left empty.

    Records in the target language ``lang`` also get that language's ``options`` (``Language.text_options``:
    niqqud, geresh, apostrophes, conversion from another script); with ``drop_other``, those not written
    mostly in ``script`` are dropped and counted.
    """

    kind: Kind
    form: str = "NFC"
    lang: str = ""
    script: str = ""
    options: dict[str, str] = field(default_factory=dict)
    drop_other: bool = False
    reasons: tuple[str, ...] = ("empty", "other_script")

    def __call__(self, records: Iterable[Record], removed: Removed) -> Iterator[Record]:
        for rec in records:
            target = rec.get("lang") == self.lang
            for f in self.kind.fields:
                if f in rec:
                    rec[f] = text.normalize(rec[f], self.form, **(self.options if target else {}))
            empty = [f for f in self.kind.required if not rec[f]]
            if empty:
                removed(rec, "empty", field=empty[0])
            elif target and self.drop_other and not scripts.in_script(self.kind.text(rec), self.script):
                removed(rec, "other_script", script=scripts.script_of(self.kind.text(rec)))
            else:
                yield rec


@dataclass
class QualityFilter:
    """Corpus quality checks, cheapest first; the first failing check names the reason.

    Bounds: word count in [min_words, max_words]; the share of social-media noise tokens (handles,
    hashtags, URLs, emoji); ROOTS character and word repetition ratios; the share of special characters;
    the language-ID probability of ``lang`` (0 turns it off).
    """

    kind: Kind
    lang: str
    limits: DedupeQuality = field(default_factory=DedupeQuality)  # ``dedupe.quality``
    reasons: tuple[str, ...] = (
        "too_few_words", "too_many_words", "social_noise", "char_repetition", "word_repetition", "special_chars",
        "lang_score",
    )

    def __post_init__(self) -> None:
        if self.limits.min_lang_score > 0 and not langid.supported(self.lang):
            raise LangliftError(
                f"dedupe.quality.min_lang_score: the offline language-ID model has no '{self.lang}'; set it to 0"
            )

    def check(self, doc: str) -> tuple[str, float] | None:
        """The first failing check as ``(reason, value)``, or None when the text passes."""
        q, tokens = self.limits, text.words(doc)
        if len(tokens) < q.min_words:
            return "too_few_words", len(tokens)
        if len(tokens) > q.max_words:
            return "too_many_words", len(tokens)
        if (v := text.social_ratio(doc)) > q.max_social_ratio:
            return "social_noise", v
        if (v := text.special_ratio(doc)) > q.max_special_ratio:
            return "special_chars", v
        if (v := text.word_repetition(tokens, q.word_ngram)) > q.max_word_repetition:
            return "word_repetition", v
        if (v := text.char_repetition(doc, q.char_ngram)) > q.max_char_repetition:
            return "char_repetition", v
        if q.min_lang_score > 0 and (v := langid.score(doc, self.lang)) < q.min_lang_score:
            return "lang_score", v
        return None

    def __call__(self, records: Iterable[Record], removed: Removed) -> Iterator[Record]:
        for rec in records:
            failed = self.check(self.kind.text(rec))
            if failed:
                removed(rec, failed[0], value=round(float(failed[1]), 4))
            else:
                yield rec


@dataclass
class ExactDedupe:
    """Keep the first record of each (language, normalised text); later copies are removed."""

    kind: Kind
    reasons: tuple[str, ...] = ("exact_duplicate",)

    def __call__(self, records: Iterable[Record], removed: Removed) -> Iterator[Record]:
        seen: dict[bytes, str] = {}
        for rec in records:
            key = "\x1f".join([rec.get("lang", ""), *(rec.get(f, "") for f in self.kind.fields)])
            digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
            if digest in seen:
                removed(rec, "exact_duplicate", duplicate_of=seen[digest])
            else:
                seen[digest] = rec["id"]
                yield rec


@dataclass
class _Index:
    lsh: LSH
    texts: list[bytes] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


@dataclass
class NearDedupe:
    """MinHash LSH near-duplicate removal, per language, keeping the first record in input order.

    A record is a near-duplicate when an earlier kept record of its language shares an LSH band
    and the exact Jaccard similarity of their character ``shingle``-gram sets is >= ``threshold``.
    """

    kind: Kind
    threshold: float = 0.8
    num_perm: int = 128
    shingle: int = 5
    reasons: tuple[str, ...] = ("near_duplicate",)

    def __post_init__(self) -> None:
        self.bands, self.rows = lsh_params(self.threshold, self.num_perm)
        self._minhash = MinHasher(self.num_perm)
        log.info("near-dedupe: Jaccard >= %s on %d-char shingles; LSH %d bands x %d rows of %d permutations",
                 self.threshold, self.shingle, self.bands, self.rows, self.num_perm)

    def __call__(self, records: Iterable[Record], removed: Removed) -> Iterator[Record]:
        indexes: dict[str, _Index] = {}
        with one_thread():
            for rec in records:
                lang = rec.get("lang", "")
                if lang not in indexes:
                    indexes[lang] = _Index(LSH(self.bands, self.rows))
                index = indexes[lang]
                doc = self.kind.text(rec)
                keys = index.lsh.keys(self._minhash(shingle_hashes(doc, self.shingle)))
                best, sim = self._most_similar(doc, index, index.lsh.query(keys))
                if best is None:
                    index.lsh.insert(keys, len(index.texts))
                    index.texts.append(doc.encode("utf-8"))  # half the memory of a non-Latin-1 str
                    index.ids.append(rec["id"])
                    yield rec
                else:
                    removed(rec, "near_duplicate", duplicate_of=index.ids[best], similarity=round(sim, 4))

    def _most_similar(self, doc: str, index: _Index, candidates: set[int]) -> tuple[int | None, float]:
        """The earliest candidate with the highest exact similarity >= threshold, if any."""
        best, best_sim = None, 0.0
        if candidates:
            mine = shingles(doc, self.shingle)
            for c in sorted(candidates):
                sim = jaccard(mine, shingles(index.texts[c].decode("utf-8"), self.shingle))
                if sim >= self.threshold and sim > best_sim:
                    best, best_sim = c, sim
        return best, best_sim


class Decontaminate:
    """Drop records sharing a word ``ngram``-gram with any evaluation text.

    Evaluation texts shorter than ``ngram`` words count as one n-gram of their full length, as in
    GPT-3's decontamination, so a record containing the whole short text is dropped. Texts shorter
    than ``min_words`` ("Yes.", "What?") would match ordinary words anywhere; they only drop a record
    that consists of exactly that text. Words are case-folded ``\\w+`` tokens, so punctuation and
    case do not hide an overlap.
    """

    reasons = ("contaminated",)

    def __init__(self, kind: Kind, eval_texts: dict[str, Iterable[str]], ngram: int = 13, min_words: int = 4):
        self.kind = kind
        self._grams: dict[str, str] = {}  # n-gram -> evaluation set it came from
        self._whole: dict[str, str] = {}  # texts shorter than min_words -> evaluation set
        self._lengths: dict[tuple[str, ...], set[int]] = {}  # first two words -> lengths of n-grams starting so
        for source, texts in eval_texts.items():
            for t in texts:
                tokens = text.words(t)
                if len(tokens) < max(min_words, 2):
                    self._whole.setdefault(" ".join(tokens), source)
                    continue
                n = min(ngram, len(tokens))
                for i in range(len(tokens) - n + 1):
                    self._grams.setdefault(" ".join(tokens[i : i + n]), source)
                    self._lengths.setdefault((tokens[i], tokens[i + 1]), set()).add(n)
        log.info("decontamination: %d evaluation n-grams and %d short texts from %d sets",
                 len(self._grams), len(self._whole), len(eval_texts))

    def match(self, doc: str) -> tuple[str, str] | None:
        """The first evaluation n-gram found in ``doc`` and its set, or None."""
        tokens = text.words(doc)
        if (whole := " ".join(tokens)) in self._whole:
            return whole, self._whole[whole]
        for i, pair in enumerate(zip(tokens, tokens[1:])):
            for n in self._lengths.get(pair, ()):
                if i + n <= len(tokens) and (gram := " ".join(tokens[i : i + n])) in self._grams:
                    return gram, self._grams[gram]
        return None

    def __call__(self, records: Iterable[Record], removed: Removed) -> Iterator[Record]:
        for rec in records:
            hit = self.match(self.kind.text(rec))
            if hit:
                removed(rec, "contaminated", ngram=hit[0], eval_set=hit[1])
            else:
                yield rec


_WORKER_STEPS: list[Step] = []  # set in the parent before forking; the workers inherit them


def _run_chunk(chunk: list[Record]) -> tuple[list[Record], list[tuple[Record, str, dict[str, Any]]]]:
    drops: list[tuple[Record, str, dict[str, Any]]] = []
    kept = list(chain(chunk, _WORKER_STEPS, lambda rec, reason, **details: drops.append((rec, reason, details))))
    return kept, drops


class InProcesses:
    """Run stateless steps (normalise, quality filters) on chunks of records in ``workers`` forked
    processes, while the parent runs the stateful ones; order and removal reports are preserved.
    ``workers=0`` runs them in this process."""

    def __init__(self, steps: list[Step], workers: int = 1, chunk: int = 256):
        self.steps, self.workers, self.chunk = steps, workers, chunk
        self.reasons = tuple(r for s in steps for r in s.reasons)

    def __call__(self, records: Iterable[Record], removed: Removed) -> Iterator[Record]:
        if self.workers <= 0 or "fork" not in multiprocessing.get_all_start_methods():  # Windows: no fork
            yield from chain(records, self.steps, removed)
            return
        _WORKER_STEPS[:] = self.steps
        with multiprocessing.get_context("fork").Pool(self.workers) as pool:
            pending: collections.deque = collections.deque()
            it = iter(records)
            for chunk in iter(lambda: list(itertools.islice(it, self.chunk)), []):
                pending.append(pool.apply_async(_run_chunk, (chunk,)))
                if len(pending) > 2 * self.workers:  # bounded read-ahead: the input streams
                    yield from self._collect(pending.popleft(), removed)
            while pending:
                yield from self._collect(pending.popleft(), removed)

    @staticmethod
    def _collect(result: multiprocessing.pool.AsyncResult, removed: Removed) -> Iterator[Record]:
        kept, drops = result.get()
        for rec, reason, details in drops:
            removed(rec, reason, **details)
        yield from kept


def chain(records: Iterable[Record], steps: list[Step], removed: Removed) -> Iterator[Record]:
    """Run ``steps`` lazily over ``records``."""
    for step in steps:
        records = step(records, removed)
    return iter(records)

