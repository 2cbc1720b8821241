"""Translate English instruction records into the target language (the ``translate`` stage).

Backends (``memory``, ``seq2seq``, ``llm``, ``api``) form an ordered chain from params; see
:mod:`langlift.translate.pipeline` for how records flow through it.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from langlift import modelref
from langlift.errors import LangliftError
from langlift.io import write_json, write_jsonl
from langlift.records import make
from langlift.records import read as read_records
from langlift.translate.base import Backend
from langlift.translate.cache import SegmentCache
from langlift.translate.pipeline import Translator
from langlift.translate.quality import QualityChecker, QualityConfig
from langlift.translate.segment import Segmenter

log = logging.getLogger(__name__)

BACKENDS = ("memory", "seq2seq", "llm", "api")


def _kwargs(fn: Any, cfg: dict[str, Any], where: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``cfg`` as keyword arguments of ``fn``, rejecting keys it does not take."""
    accepted = set(inspect.signature(fn).parameters) - {"self", *skip}
    unknown = sorted(set(cfg) - accepted)
    if unknown:
        raise LangliftError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(accepted)}")
    return dict(cfg)


def prompt_for(tcfg: dict[str, Any], language: dict[str, str]) -> str:
    """The translation prompt for the target language (``prompts.<code>``, else ``prompts.default``)."""
    prompts = tcfg.get("prompts") or {}
    template = prompts.get(language["code"]) or prompts.get("default")
    if not template:
        raise LangliftError(f"translate.prompts: no prompt for '{language['code']}' and no 'default'")
    return template


def build_backend(name: str, tcfg: dict[str, Any], language: dict[str, str]) -> Backend:
    """One backend from its params block ``translate.<name>``."""
    cfg = dict(tcfg.get(name) or {})
    where = f"translate.{name}"
    for key in ("model", "ctranslate2") if name in ("seq2seq", "llm") else ():
        if cfg.get(key):
            modelref.check_declared(str(cfg[key]), f"{where}.{key}")
    if name == "memory":
        from langlift.translate.memory import MemoryBackend

        cfg.setdefault("target_key", language["code"])
        return MemoryBackend(**_kwargs(MemoryBackend.__init__, cfg, where))
    if name == "seq2seq":
        from langlift.translate.seq2seq import Seq2SeqBackend

        return Seq2SeqBackend(language=language, **_kwargs(Seq2SeqBackend.__init__, cfg, where, ("language",)))
    if name == "llm":
        from langlift.translate.llm import LLMBackend

        return LLMBackend(template=prompt_for(tcfg, language), language=language,
                          **_kwargs(LLMBackend.__init__, cfg, where, ("template", "language")))
    if name == "api":
        from langlift.translate.api import ApiBackend

        return ApiBackend(template=prompt_for(tcfg, language), language=language,
                          **_kwargs(ApiBackend.__init__, cfg, where, ("template", "language")))
    raise LangliftError(f"translate.backend: unknown backend {name!r}; expected one of {list(BACKENDS)}")


def chain_names(tcfg: dict[str, Any]) -> list[str]:
    """``backend`` followed by ``fallback``, without repeats."""
    fallback = tcfg.get("fallback") or []
    if isinstance(fallback, str):
        fallback = [fallback]
    names = []
    for name in [tcfg.get("backend"), *fallback]:
        if name not in BACKENDS:
            raise LangliftError(f"translate.backend/fallback: unknown backend {name!r}; expected one of {list(BACKENDS)}")
        if name not in names:
            names.append(name)
    return names


def pair_records(en: dict[str, Any], xx: dict[str, Any], cfg: dict[str, Any], language: dict[str, str]) -> list[dict]:
    """Translation-task records (en->xx and xx->en) from one translated record's fields."""
    out = []
    for f in cfg.get("fields", ["output"]):
        src, tgt = en.get(f) or "", xx.get(f) or ""
        if not src.strip() or len(src) > cfg.get("max_chars", 1000):
            continue
        common = {"source": en["source"], "source_id": en["id"], "task": "translate", "field": f}
        out.append(make("instructions", instruction=cfg["to_target"].replace("{name}", language["name"]),
                        input=src, output=tgt, lang=language["code"], **common))
        out.append(make("instructions", instruction=cfg["to_english"].replace("{name}", language["name"]),
                        input=tgt, output=src, lang="en", **common))
    return out


def load_english(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Validated English instruction records (other languages are skipped with a log line)."""
    records, skipped = [], 0
    for _, rec in read_records(path, "instructions"):
        if rec["lang"] != "en":
            skipped += 1
            continue
        records.append(rec)
        if limit is not None and len(records) >= limit:
            break
    if skipped:
        log.info("%s: skipped %d record(s) not in English", path, skipped)
    if not records:
        raise LangliftError(f"{path}: no English instruction records to translate")
    return records


def translate_file(params: dict[str, Any], src: str | Path, out: str | Path, rejected_path: str | Path,
                   metrics_path: str | Path, progress: bool = True) -> dict[str, Any]:
    """The whole stage: read ``src``, translate, write ``out``, ``rejected_path`` and ``metrics_path``."""
    language, tcfg = params["language"], params["translate"]
    records = load_english(src, tcfg.get("limit"))
    scfg = tcfg.get("segment") or {}
    segmenter = Segmenter(**_kwargs(Segmenter.__init__, scfg, "translate.segment"))
    qcfg = dict(tcfg.get("quality") or {})
    action, retry = qcfg.pop("action", "drop"), qcfg.pop("retry", None)
    if action not in ("drop", "keep"):
        raise LangliftError(f"translate.quality.action: expected drop or keep, got {action!r}")
    qcfg = _kwargs(QualityConfig, qcfg, "translate.quality")
    if "length_ratio" in qcfg:
        qcfg["length_ratio"] = tuple(qcfg["length_ratio"])
    checker = QualityChecker(QualityConfig(**qcfg), language["code"], segmenter.masker)
    names = chain_names(tcfg)
    log.info("translating %d records into %s with %s", len(records), language["name"], " -> ".join(names))
    chain = [build_backend(n, tcfg, language) for n in names]
    try:
        with SegmentCache(tcfg["cache"]) as cache:
            translator = Translator(chain, segmenter, checker, cache, language["code"], action=action, retry=retry,
                                    progress=progress)
            kept, rejected, metrics = translator.run(records)
        for b in chain:
            if b.usage() is not None:
                metrics[f"{b.name}_usage"] = b.usage()
        models = {f"{b.name}.{key}": ref.to_dict() for b in chain for key, ref in b.refs.items()}
        if models:
            metrics["models"] = models   # what each model path or hub id was: content hash or commit sha
    finally:
        for b in chain:
            b.close()
    pairs_cfg = tcfg.get("pairs") or {}
    if pairs_cfg.get("enabled"):
        by_id = {r["id"]: r for r in records}
        pairs = [p for x in kept for p in pair_records(by_id[x["source_id"]], x, pairs_cfg, language)]
        kept += pairs
        metrics["pair_records"] = len(pairs)
    metrics = {"backend": " -> ".join(names), **metrics}
    write_jsonl(out, kept)
    write_jsonl(rejected_path, rejected)
    write_json(metrics_path, metrics)
    log.info("wrote %d records to %s (%d rejected: %s)", len(kept), out, len(rejected), metrics["flagged"])
    return metrics
