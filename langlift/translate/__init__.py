"""Translate English instruction records into the target language (the ``translate`` stage).

Backends (``memory``, ``seq2seq``, ``llm``, ``api``) form an ordered chain from params; see
:mod:`langlift.translate.pipeline` for how records flow through it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from langlift import modelref
from langlift.errors import LangliftError
from langlift.io import write_json, write_jsonl
from langlift.params import Language, Pairs, Params, Quality, Translate
from langlift.records import make
from langlift.records import read as read_records
from langlift.translate.base import Backend
from langlift.translate.cache import SegmentCache
from langlift.translate.pipeline import Translator
from langlift.translate.quality import QualityChecker
from langlift.translate.segment import Segmenter

log = logging.getLogger(__name__)

BACKENDS = ("memory", "seq2seq", "llm", "api")


def prompt_for(tcfg: Translate, language: Language) -> str:
    """The translation prompt for the target language (``prompts.<code>``, else ``prompts.default``)."""
    template = tcfg.prompts.get(language.code) or tcfg.prompts.get("default")
    if not template:
        raise LangliftError(f"translate.prompts: no prompt for '{language.code}' and no 'default'")
    return template


def build_backend(name: str, tcfg: Translate, language: Language) -> Backend:
    """One backend from its params block ``translate.<name>``."""
    cfg = getattr(tcfg, name).model_dump()
    for key in ("model", "ctranslate2") if name in ("seq2seq", "llm") else ():
        if cfg.get(key):
            modelref.check_declared(str(cfg[key]), f"translate.{name}.{key}")
    lang = language.model_dump()
    if name == "memory":
        from langlift.translate.memory import MemoryBackend

        return MemoryBackend(target_key=language.code, **cfg)
    if name == "seq2seq":
        from langlift.translate.seq2seq import Seq2SeqBackend

        return Seq2SeqBackend(language=lang, **cfg)
    if name == "llm":
        from langlift.translate.llm import LLMBackend

        return LLMBackend(template=prompt_for(tcfg, language), language=lang, **cfg)
    from langlift.translate.api import ApiBackend

    return ApiBackend(template=prompt_for(tcfg, language), language=lang, **cfg)


def chain_names(tcfg: Translate) -> list[str]:
    """``backend`` followed by ``fallback``, without repeats."""
    return list(dict.fromkeys([tcfg.backend, *tcfg.fallback]))


def pair_records(en: dict[str, Any], xx: dict[str, Any], cfg: Pairs, language: Language) -> list[dict]:
    """Translation-task records (en->xx and xx->en) from one translated record's fields."""
    out = []
    for f in cfg.fields:
        src, tgt = en.get(f) or "", xx.get(f) or ""
        if not src.strip() or len(src) > cfg.max_chars:
            continue
        common = {"source": en["source"], "source_id": en["id"], "task": "translate", "field": f}
        out.append(make("instructions", instruction=cfg.to_target.replace("{name}", language.name),
                        input=src, output=tgt, lang=language.code, **common))
        out.append(make("instructions", instruction=cfg.to_english.replace("{name}", language.name),
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


def translate_file(params: Params, src: str | Path, out: str | Path, rejected_path: str | Path,
                   metrics_path: str | Path, progress: bool = True) -> dict[str, Any]:
    """The whole stage: read ``src``, translate, write ``out``, ``rejected_path`` and ``metrics_path``."""
    language, tcfg = params.language, params.translate
    records = load_english(src, tcfg.limit)
    segmenter = Segmenter(**tcfg.segment.model_dump())
    qcfg = tcfg.quality
    checker = QualityChecker(Quality(**qcfg.model_dump(exclude={"action", "retry"})), language.code, segmenter.masker)
    names = chain_names(tcfg)
    log.info("translating %d records into %s with %s", len(records), language.name, " -> ".join(names))
    chain = [build_backend(n, tcfg, language) for n in names]
    try:
        with SegmentCache(tcfg.cache) as cache:
            translator = Translator(chain, segmenter, checker, cache, language.code, action=qcfg.action, retry=qcfg.retry,
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
    if tcfg.pairs.enabled:
        by_id = {r["id"]: r for r in records}
        pairs = [p for x in kept for p in pair_records(by_id[x["source_id"]], x, tcfg.pairs, language)]
        kept += pairs
        metrics["pair_records"] = len(pairs)
    metrics = {"backend": " -> ".join(names), **metrics}
    write_jsonl(out, kept)
    write_jsonl(rejected_path, rejected)
    write_json(metrics_path, metrics)
    return metrics
