"""The dedupe stage: normalise, filter, deduplicate and decontaminate instructions and corpus.

Instructions: normalise -> exact dedupe -> MinHash LSH near-dedupe -> decontaminate, per language.
Corpus: normalise -> quality filters -> exact dedupe -> near-dedupe -> decontaminate (in this process, or on
datatrove's executors with the same result: :mod:`langlift.dedupe.datatrove`).
Every removal is counted by reason in the metrics; the first ``removed_sample`` records of each
reason go to ``removed.jsonl`` with the reason and its details (``duplicate_of``, ``value``, ...).
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from langlift import records
from langlift.dedupe.steps import (
    CORPUS, INSTRUCTIONS, Collector, Decontaminate, ExactDedupe, InProcesses, Kind, NearDedupe, Normalize, QualityFilter, Record,
    Step, chain,
)
from langlift.errors import DataError, LangliftError
from langlift.io import load_jsonl, read_jsonl, write_json, write_jsonl
from langlift.params import Dedupe, EvalSet, Language

if TYPE_CHECKING:
    from langlift.dedupe.datatrove import Options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outputs:
    instructions: Path = Path("data/clean/instructions.jsonl")
    corpus: Path = Path("data/clean/corpus.jsonl")
    removed: Path = Path("data/clean/removed.jsonl")
    metrics: Path = Path("metrics/data.json")


def check_inputs(cfg: Dedupe, kinds: tuple[Kind, ...] = (INSTRUCTIONS, CORPUS)) -> None:
    """Fail before any work when an input file of ``kinds`` is missing."""
    for kind in kinds:
        for path in map(Path, getattr(cfg.inputs, kind.name)):
            if not path.exists():
                raise LangliftError(
                    f"dedupe.inputs.{kind.name}: {path} not found; run the stage that writes it (dvc repro) "
                    "or remove it from params.yaml"
                )


def read_records(paths: list[str], kind: Kind) -> Iterator[Record]:
    """Validated records from every input file, in order."""
    for path in map(Path, paths):
        for line, rec in records.read(path, kind.name):
            if not isinstance(rec.get("id"), str):
                raise DataError(path, line, "id", "missing")
            yield rec


def eval_files(pattern: str) -> list[Path]:
    """The files of one ``eval_sets`` path: the file itself (an error if missing), or the files a glob
    matches (a glob matching none is logged and skipped: a language without SIB-200 data)."""
    if not any(c in pattern for c in "*?["):
        if not Path(pattern).exists():
            raise LangliftError(f"dedupe.decontaminate.eval_sets: {pattern} not found")
        return [Path(pattern)]
    files = sorted(map(Path, glob.glob(pattern)))
    if not files:
        log.warning("dedupe.decontaminate.eval_sets: %s matches no file: skipped", pattern)
    return files


def read_tsv(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) of a tab-separated file whose first line names the columns (quotes are plain text)."""
    with path.open(encoding="utf-8", newline="") as f:
        for line, row in enumerate(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 2):
            yield line, row


def eval_texts(sets: list[EvalSet]) -> dict[str, list[str]]:
    """Texts of the evaluation sets named in ``dedupe.decontaminate.eval_sets`` (JSONL records, or TSV
    rows with named columns), keyed by file."""
    out: dict[str, list[str]] = {}
    for spec in sets:
        for path in eval_files(spec.path):
            _read_eval_set(path, spec.fields, out.setdefault(str(path), []))
    return out


def _read_eval_set(path: Path, fields: list[str], texts: list[str]) -> None:
    """Append the ``fields`` of every record of ``path`` to ``texts``."""
    rows = read_tsv(path) if path.suffix == ".tsv" else read_jsonl(path)
    for line, rec in rows:
        for f in fields:
            value = rec.get(f)
            if not isinstance(value, str):
                got = "missing" if value is None else f"expected a string, got {type(value).__name__}"
                raise DataError(path, line, f, got)
            texts.append(value)


def build_steps(kind: Kind, cfg: Dedupe, language: Language, evals: dict[str, list[str]]) -> list[Step]:
    """The configured steps for ``kind``, in pipeline order."""
    per_doc: list[Step] = [Normalize(kind, cfg.normalize, language.code, language.script, language.text_options(),
                                     language.normalize.other_script == "drop")]
    if kind is CORPUS:
        per_doc.append(QualityFilter(kind, language.code, cfg.quality))
    steps: list[Step] = [InProcesses(per_doc, cfg.workers)]
    if cfg.exact:
        steps.append(ExactDedupe(kind))
    steps.append(NearDedupe(kind, **cfg.minhash.model_dump()))
    if evals:
        steps.append(Decontaminate(kind, evals, cfg.decontaminate.ngram, cfg.decontaminate.min_words))
    return steps


def clean(kind: Kind, cfg: Dedupe, language: Language, evals: dict[str, list[str]],
          target: Path) -> tuple[dict[str, Any], list[Record]]:
    """Clean one dataset in this process: write ``target``; return its metrics and removed sample."""
    steps = build_steps(kind, cfg, language, evals)
    collector = Collector(kind.name, [r for s in steps for r in s.reasons], cfg.removed_sample)
    seen, kept_langs = 0, Counter()

    def source() -> Iterator[Record]:
        nonlocal seen
        for rec in read_records(getattr(cfg.inputs, kind.name), kind):
            seen += 1
            yield rec

    def kept(recs: Iterator[Record]) -> Iterator[Record]:
        for rec in recs:
            kept_langs[rec["lang"]] += 1
            yield rec

    bar = tqdm(chain(source(), steps, collector), desc=f"dedupe {kind.name}", unit=" kept", mininterval=2)
    n_kept = write_jsonl(target, kept(bar))
    bar.close()
    assert seen == n_kept + sum(collector.counts.values()), "every record is either kept or removed once"
    metrics = {f"{kind.name}.in": seen, f"{kind.name}.kept": n_kept,
               **{f"{kind.name}.removed.{r}": n for r, n in collector.counts.items()},
               **{f"{kind.name}.kept_{code}": n for code, n in sorted(kept_langs.items())}}
    order = {r: i for i, r in enumerate(collector.counts)}  # grouped by reason: the same for any `workers`
    return metrics, sorted(collector.samples, key=lambda r: order[r["reason"]])


def clean_on_datatrove(cfg: Dedupe, language: Language, target: Path,
                       opts: Options) -> tuple[dict[str, Any], list[Record]]:
    """The corpus on datatrove's local executor (:mod:`langlift.dedupe.datatrove`): the same result."""
    from langlift.dedupe import datatrove  # datatrove only when asked for

    scratch = Path(opts.work)
    targets = datatrove.Targets(str(target), str(scratch / "removed.jsonl"), str(scratch / "data.json"))
    datatrove.run_corpus(cfg, language, opts, targets)
    return json.loads(Path(targets.metrics).read_text(encoding="utf-8")), load_jsonl(targets.removed)


def run(cfg: Dedupe, language: Language, out: Outputs = Outputs(), datatrove: Options | None = None) -> dict[str, Any]:
    """Clean both datasets (the corpus on datatrove when ``datatrove`` is given), write the outputs
    atomically and return the flat metrics."""
    check_inputs(cfg)
    evals = eval_texts(cfg.decontaminate.eval_sets)
    metrics: dict[str, Any] = {}
    removed: list[Record] = []
    for kind, target in ((INSTRUCTIONS, out.instructions), (CORPUS, out.corpus)):
        start = time.perf_counter()
        if kind is CORPUS and datatrove is not None:
            m, samples = clean_on_datatrove(cfg, language, target, datatrove)
        else:
            m, samples = clean(kind, cfg, language, evals, target)
        metrics.update(m)
        removed += samples
        counts = {k.rsplit(".", 1)[1]: n for k, n in m.items() if k.startswith(f"{kind.name}.removed.") and n}
        log.info("%s: kept %d of %d in %.1fs; removed %s", kind.name, m[f"{kind.name}.kept"], m[f"{kind.name}.in"],
                 time.perf_counter() - start, counts or "none")
    write_jsonl(out.removed, removed)
    write_json(out.metrics, metrics)
    return metrics
