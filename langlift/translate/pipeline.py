"""The record-level translation pipeline: fields -> pieces -> backend chain (with cache) -> checked records.

1. Each field (instruction, input, output) is looked up whole in the translation memory, if the
   chain has one; otherwise it is split into pieces (:mod:`langlift.translate.segment`).
2. Unique pieces go through the backend chain in order: cache first, then the backend in chunks,
   each chunk committed to the cache as soon as it is back; misses pass to the next backend.
3. Records are rebuilt by id, checked (:mod:`langlift.translate.quality`), flagged ones retried
   once with the retry settings, and kept or dropped; a record with an untranslated piece is never
   written (it is reported as a miss, not passed through as English).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from langlift.records import content_fields, make
from langlift.translate.base import Backend
from langlift.translate.cache import SegmentCache, segment_key
from langlift.translate.memory import MemoryBackend
from langlift.translate.quality import QualityChecker
from langlift.translate.segment import Layout, Piece, Segmenter, normalize

log = logging.getLogger(__name__)

FIELDS = content_fields("instructions")


@dataclass
class Resolved:
    """A piece's translation (unmasked), the backend that made it, and whether its mask tokens survived."""

    text: str
    backend: Backend
    intact: bool = True


@dataclass
class Stats:
    segments: int = 0                                  # pieces over all fields (with repeats)
    unique: int = 0                                    # distinct pieces sent down the chain
    memory_fields: int = 0                             # whole fields found in the translation memory
    cache_hits: Counter = field(default_factory=Counter)       # by backend
    translated: Counter = field(default_factory=Counter)       # texts the backend produced this run
    backend_seconds: Counter = field(default_factory=Counter)
    missed: int = 0


class Translator:
    """Translate instruction records with a backend chain, a segment cache and quality checks."""

    def __init__(self, chain: list[Backend], segmenter: Segmenter, checker: QualityChecker, cache: SegmentCache,
                 lang: str, *, action: str = "drop", retry: dict[str, Any] | None = None, progress: bool = True):
        if action not in ("drop", "keep"):
            raise ValueError(f"action must be 'drop' or 'keep', got {action!r}")
        self.chain, self.segmenter, self.checker, self.cache = chain, segmenter, checker, cache
        self.lang, self.action, self.progress = lang, action, progress
        self.memory = next((b for b in chain if isinstance(b, MemoryBackend)), None)
        model_backends = [b for b in chain if not isinstance(b, MemoryBackend)]
        self.retry_backend = model_backends[0].variant(retry) if retry and model_backends else None
        if retry and not model_backends:
            log.warning("translate.quality.retry is set but the chain has no model backend to retry with")
        self.stats = Stats()

    # -- pieces through the chain ------------------------------------------------------------------
    def resolve(self, pieces: Iterable[Piece], chain: list[Backend]) -> dict[str, Resolved]:
        """Translations of ``pieces`` keyed by normalised original text; misses are absent."""
        pending: dict[str, Piece] = {}
        for p in pieces:
            pending.setdefault(normalize(p.text), p)
        done: dict[str, Resolved] = {}
        for backend in chain:
            if not pending:
                break
            by_input: dict[str, list[str]] = {}
            for key, p in pending.items():
                by_input.setdefault(normalize(p.masked if backend.masked else p.text), []).append(key)
            outputs = self._run_backend(backend, list(by_input))
            for text, translated in outputs.items():
                for key in by_input[text]:
                    piece = pending.pop(key)
                    if backend.masked:
                        restored, intact = self.segmenter.masker.unmask(piece, translated)
                        done[key] = Resolved(restored, backend, intact)
                    else:
                        done[key] = Resolved(translated, backend)
        return done

    def _run_backend(self, backend: Backend, texts: list[str]) -> dict[str, str]:
        """Cached translations of ``texts`` plus fresh ones, committed to the cache chunk by chunk."""
        found: dict[str, str] = {}
        self.stats.translated[backend.name] += 0  # every backend asked shows up in the metrics
        keys = {t: segment_key(backend.name, backend.identity, self.lang, backend.fingerprint, t) for t in texts}
        if backend.cached:
            hits = self.cache.get_many(keys.values())
            found = {t: hits[k] for t, k in keys.items() if k in hits}
            self.stats.cache_hits[backend.name] += len(found)
        todo = sorted((t for t in texts if t not in found), key=len)  # similar lengths batch with little padding
        if not todo:
            return found
        start = time.perf_counter()
        bar = tqdm(total=len(todo), desc=f"translate [{backend.name}]", unit="seg", disable=not self.progress,
                   leave=False)
        try:
            for i in range(0, len(todo), backend.chunk_size):
                chunk = todo[i:i + backend.chunk_size]
                rows = []
                for text, out in zip(chunk, backend.translate(chunk)):
                    if out is None:
                        continue
                    found[text] = out
                    rows.append((keys[text], backend.name, backend.model, self.lang, backend.fingerprint, text, out))
                if backend.cached and rows:
                    self.cache.put_many(rows)
                self.stats.translated[backend.name] += len(rows)
                bar.update(len(chunk))
        finally:
            bar.close()
            self.stats.backend_seconds[backend.name] += time.perf_counter() - start
        return found

    # -- records -------------------------------------------------------------------------------------
    def _plan(self, rec: dict[str, Any], whole: bool) -> dict[str, str | Layout]:
        """Per field: the memory's whole-field translation, or the field's layout."""
        plan: dict[str, str | Layout] = {}
        for f in FIELDS:
            src = rec.get(f) or ""
            hit = self.memory.lookup(src) if whole and self.memory and src.strip() else None
            plan[f] = hit if hit is not None else self.segmenter.split(src)
        return plan

    def _assemble(self, rec: dict[str, Any], plan: dict[str, str | Layout], done: dict[str, Resolved]
                  ) -> tuple[dict[str, str] | None, list[str], list[Backend], str]:
        """The translated fields (``None`` on a miss), extra flags (or the missed pieces), backends used,
        and the translated text language ID should judge."""
        out, flags, used, pieces_text, missing = {}, [], [], [], []
        for f, p in plan.items():
            if isinstance(p, str):
                out[f] = p
                pieces_text.append(p)
                used.append(self.memory)
                continue
            parts = []
            for piece in p.pieces:
                r = done.get(normalize(piece.text))
                if r is None:
                    missing.append(piece.text)
                    continue
                parts.append(r.text)
                used.append(r.backend)
                if not r.intact:
                    flags.append("placeholders")
            if not missing:
                out[f] = p.join(parts)
                pieces_text.extend(parts)
        if missing:
            return None, missing, [], ""
        return out, flags, used, " ".join(pieces_text)

    def _check(self, rec: dict[str, Any], out: dict[str, str], flags: list[str], lang_text: str) -> list[str]:
        reasons = set(flags) | set(self.checker.check({f: rec.get(f) or "" for f in FIELDS}, out, lang_text))
        return sorted(reasons)

    def run(self, records: list[dict[str, Any]]) -> tuple[list[dict], list[dict], dict[str, Any]]:
        """Translate English instruction records; returns (kept records, rejected records, metrics)."""
        t0 = time.perf_counter()
        plans = [self._plan(r, whole=True) for r in records]
        self.stats.memory_fields = sum(isinstance(p, str) for plan in plans for p in plan.values())
        pieces = [piece for plan in plans for p in plan.values() if isinstance(p, Layout) for piece in p.pieces]
        self.stats.segments = len(pieces)
        self.stats.unique = len({normalize(p.text) for p in pieces})
        done = self.resolve(pieces, self.chain)

        kept, rejected, missed_examples = [], [], []
        flagged, after_retry = Counter(), Counter()
        results: list[tuple[dict, dict, list[Backend], list[str]]] = []  # (english, fields, backends, reasons)
        for rec, plan in zip(records, plans):
            out, flags, used, lang_text = self._assemble(rec, plan, done)
            if out is None:
                self.stats.missed += 1
                missed_examples.extend(flags[:1])
                rejected.append({"source_id": rec["id"], "reasons": ["miss"], "missing": flags})
                continue
            reasons = self._check(rec, out, flags, lang_text)
            flagged.update(reasons)
            results.append((rec, out, used, reasons))

        retried, fixed, adopted = self._retry(results)
        for i, (rec, out, used, reasons) in enumerate(results):
            after_retry.update(reasons)
            translated = self._record(rec, out, used, retried=i in adopted)
            if reasons and self.action == "drop":
                rejected.append({"source_id": rec["id"], "reasons": reasons, "translation": translated})
                continue
            if reasons:
                translated["quality_flags"] = reasons
            kept.append(translated)

        if self.stats.missed:
            log.warning("%d record(s) have pieces no backend translated (misses), e.g. %s; they are left out "
                        "and listed in the rejected file", self.stats.missed, [m[:60] for m in missed_examples[:3]])
        seconds = time.perf_counter() - t0
        made = sum(self.stats.translated.values())
        backend_s = sum(self.stats.backend_seconds.values())
        metrics = {
            "records_in": len(records),
            "records_out": len(kept),
            "dropped": len(rejected),
            "missed_records": self.stats.missed,
            "flagged": dict(sorted(flagged.items())),
            "flagged_after_retry": dict(sorted(after_retry.items())),
            "action": self.action,
            "retried": retried,
            "retry_fixed": fixed,
            "fields_from_memory": self.stats.memory_fields,
            "segments": self.stats.segments,
            "segments_unique": self.stats.unique,
            "segments_cached": dict(self.stats.cache_hits),
            "segments_translated": dict(self.stats.translated),
            "segments_per_s": round(made / backend_s, 2) if backend_s > 0 else None,
            "seconds": round(seconds, 2),
        }
        return kept, rejected, metrics

    def _retry(self, results: list[tuple[dict, dict, list[Backend], list[str]]]) -> tuple[int, int, set[int]]:
        """Re-translate flagged records once with the retry settings (all in one pass through the backend),
        adopting a retry that has fewer flags; returns (retried, fixed, indices adopted)."""
        flagged = [i for i, r in enumerate(results) if r[3]]
        if self.retry_backend is None or not flagged:
            return 0, 0, set()
        plans = {i: self._plan(results[i][0], whole=False) for i in flagged}
        done = self.resolve((pc for plan in plans.values() for p in plan.values() for pc in p.pieces),
                            [self.retry_backend])
        fixed, adopted = 0, set()
        for i in flagged:
            rec, _, _, reasons = results[i]
            out, flags, used, lang_text = self._assemble(rec, plans[i], done)
            if out is None:
                continue
            reasons2 = self._check(rec, out, flags, lang_text)
            fixed += not reasons2
            if len(reasons2) < len(reasons):
                results[i] = (rec, out, used, reasons2)
                adopted.add(i)
        return len(flagged), fixed, adopted

    def _record(self, rec: dict[str, Any], out: dict[str, str], used: list[Backend], retried: bool) -> dict:
        names, models, prompts = [], [], []
        for b in used:
            if b.name not in names:
                names.append(b.name)
                models.append(b.model)
                if b.prompt_version:
                    prompts.append(b.prompt_version)
        provenance = {"backend": "+".join(names), "model": "+".join(models),
                      "prompt_version": "+".join(prompts) or None}
        if retried:
            provenance["retried"] = True
        return make("instructions", source=rec["source"], lang=self.lang, source_id=rec["id"],
                    translation=provenance, **out)
