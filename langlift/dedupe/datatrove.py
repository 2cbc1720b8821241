"""The corpus half of the dedupe stage on datatrove executors: the same steps, the same documents kept.

Two executor stages, the second depending on the first:

1. ``filter`` (``tasks`` tasks, ``workers`` at a time): each task reads its byte range of every input
   file, then normalises, runs the quality checks and *marks* documents that share an n-gram with an
   evaluation set (the search runs here, in parallel); kept documents go to ``<work>/filtered/``.
2. ``dedupe`` (1 task): merges the shards back into input order, removes exact and near duplicates
   with langlift's own index (deduplication must see every document), drops the marked documents as
   ``contaminated`` (after deduplication, as the stage does) and writes the outputs and metrics.

Every step is one of langlift's record steps (:mod:`langlift.dedupe.steps`, built by
:func:`langlift.dedupe.pipeline.build_steps` from params), so the kept ids, the removal counts by
reason and the removed samples equal the stage's. Removed documents go to ``<work>/removed/<step>/``.

    python stages/dedupe.py --engine datatrove --tasks 4 --workers 2          # local processes, same outputs
    python -m langlift.dedupe.datatrove --executor slurm --tasks 64 \\
        --partition cpu --work /shared/dt --out /shared/clean                  # a Slurm cluster
"""

from __future__ import annotations

import contextlib
import heapq
import json
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click
import fsspec
from datatrove.data import Document, DocumentsPipeline
from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.executor.base import PipelineExecutor
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.typeshelper import StatHints

from langlift import params as P
from langlift import records
from langlift.cli import run_stage
from langlift.dedupe.pipeline import build_steps, check_inputs, eval_texts
from langlift.dedupe.steps import CORPUS, Decontaminate, InProcesses, Record, Step
from langlift.errors import DataError, LangliftError
from langlift.io import write_json, write_jsonl
from langlift.params import Dedupe, Language

POS, MARK = "_pos", "_contaminated"  # internal fields: input position, the evaluation n-gram found


@dataclass(frozen=True)
class Options:
    """How to run the corpus path on datatrove (the flags of ``stages/dedupe.py --engine datatrove``)."""

    tasks: int = 2
    workers: int = 2
    work: str = ".cache/datatrove/dedupe"   # scratch: shards, removed documents, logs (outside DVC outs)
    executor: str = "local"                 # local | slurm
    partition: str = "cpu"                  # Slurm only
    time: str = "04:00:00"                  # Slurm time limit per job
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2


def to_document(rec: Record) -> Document:
    """A langlift corpus record as a datatrove Document (every field but id and text in metadata)."""
    return Document(text=rec["text"], id=rec["id"], metadata={k: v for k, v in rec.items() if k not in ("id", "text")})


def to_record(doc: Document) -> Record:
    return {"id": doc.id, "text": doc.text, **doc.metadata}


def public(rec: Record) -> Record:
    """The record without the internal fields."""
    return {k: v for k, v in rec.items() if k not in (POS, MARK)}


def line_range(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The bytes ``[start, end)`` of a file of ``size`` bytes whose lines task ``rank`` reads (a line
    belongs to the range holding its first byte)."""
    return size * rank // world_size, size * (rank + 1) // world_size


class CorpusReader(PipelineStep):
    """Validated corpus records from the input files; task ``rank`` of ``world_size`` reads its byte
    range of every file, so one big file splits into shards too. Local paths or any fsspec URL."""

    type = "📖 - READER"
    name = "langlift corpus reader"

    def __init__(self, paths: list[str]):
        super().__init__()
        self.paths = paths

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for i, path in enumerate(self.paths):
            for pos, rec in self._records(path, rank, world_size):
                self.stat_update(StatHints.total)
                yield to_document({**rec, POS: [i, pos]})

    @staticmethod
    def _records(path: str, rank: int, world_size: int) -> Iterator[tuple[int, Record]]:
        fs, local = fsspec.core.url_to_fs(path)
        start, end = line_range(fs.size(local), rank, world_size)
        with fs.open(local, "rb") as f:
            if start > 0:
                f.seek(start - 1)
                f.readline()  # to the first line starting at or after `start`
            pos = f.tell()
            while pos < end and (raw := f.readline()):
                if raw.strip():
                    yield pos, _parse(path, pos, raw)
                pos += len(raw)


def _parse(path: str, pos: int, raw: bytes) -> Record:
    """One validated corpus record; errors name the file and byte offset (line numbers are unknown to
    a task that starts mid-file) as a plain LangliftError, which survives the trip between processes."""
    where = f"{path} (byte {pos})"
    try:
        rec = json.loads(raw.decode("utf-8-sig" if pos == 0 else "utf-8"))
        if not isinstance(rec, dict):
            raise DataError(where, None, None, f"expected a JSON object, got {type(rec).__name__}")
        records.validate("corpus", rec, where, None)
        if not isinstance(rec.get("id"), str):
            raise DataError(where, None, "id", "missing")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LangliftError(f"{where}: malformed JSON or UTF-8: {e}") from None
    except DataError as e:
        raise LangliftError(str(e)) from None
    return rec


class LangliftStep(PipelineStep):
    """One of langlift's record steps (normalise, quality, exact/near dedupe, ...) as a datatrove step.
    Removed documents go to ``<removed>/<step>/<rank>.jsonl`` with their reason and its details."""

    type = "🔻 - FILTER"

    def __init__(self, step: Step, removed: str):
        self.name = f"langlift {type(step).__name__}"  # before the stats, which take it
        super().__init__()
        self.step, self.removed = step, removed

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        folder = get_datafolder(self.removed)
        with folder.open(f"{type(self.step).__name__}/{rank:05d}.jsonl", "wt", encoding="utf-8") as out:
            def removed(rec: Record, reason: str, **details: Any) -> None:
                self.stat_update(StatHints.dropped, f"dropped_{reason}")
                out.write(json.dumps({"reason": reason, **details, **rec}, ensure_ascii=False) + "\n")

            for rec in self.step((to_record(d) for d in data), removed):
                self.stat_update(StatHints.forwarded)
                yield to_document(rec)


@dataclass
class MarkContaminated:
    """Record the evaluation n-gram a record shares (stage 1, in parallel); removes nothing."""

    decontaminate: Decontaminate
    reasons: tuple[str, ...] = ()

    def __call__(self, recs: Iterable[Record], removed: Any) -> Iterator[Record]:
        for rec in recs:
            if hit := self.decontaminate.match(CORPUS.text(rec)):
                rec[MARK] = list(hit)
            yield rec


@dataclass
class DropContaminated:
    """Drop the records marked by :class:`MarkContaminated` (stage 2, after deduplication, as the stage)."""

    reasons: tuple[str, ...] = ("contaminated",)

    def __call__(self, recs: Iterable[Record], removed: Any) -> Iterator[Record]:
        for rec in recs:
            if MARK in rec:
                ngram, eval_set = rec.pop(MARK)
                removed(rec, "contaminated", ngram=ngram, eval_set=eval_set)
            else:
                yield rec


class ShardWriter(PipelineStep):
    """Write records (internal fields included) to ``<folder>/<rank>.jsonl``."""

    type = "💽 - WRITER"
    name = "langlift shard writer"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with get_datafolder(self.folder).open(f"{rank:05d}.jsonl", "wt", encoding="utf-8") as out:
            for doc in data:
                out.write(json.dumps(to_record(doc), ensure_ascii=False) + "\n")
        return
        yield  # a generator: the executor drains it


def _files(folder: str) -> list[str]:
    """The JSONL files under ``folder``, in name order."""
    return sorted(get_datafolder(folder).list_files(glob_pattern="**/*.jsonl"))


def _lines(f: IO[str]) -> Iterator[Record]:
    return (json.loads(line) for line in f)


class MergedReader(PipelineStep):
    """The shards of stage 1 merged back into input order (each shard is already in that order)."""

    type = "📖 - READER"
    name = "langlift shard merger"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        df = get_datafolder(self.folder)
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(df.open(name, "rt", encoding="utf-8")) for name in _files(self.folder)]
            shards = map(_lines, files)
            for rec in heapq.merge(*shards, key=lambda r: r[POS]):
                self.stat_update(StatHints.total)
                yield to_document(rec)


@dataclass(frozen=True)
class Targets:
    corpus: str
    removed: str
    metrics: str


class Finish(PipelineStep):
    """Write the kept corpus and, from every removed document, the stage's metrics and removed sample."""

    type = "💽 - WRITER"
    name = "langlift outputs"

    def __init__(self, targets: Targets, removed: str, reasons: list[str], sample: int):
        super().__init__()
        self.targets, self.removed, self.reasons, self.sample = targets, removed, reasons, sample

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        langs: Counter[str] = Counter()

        def kept(docs: Iterable[Document]) -> Iterator[Record]:
            for doc in docs:
                rec = public(to_record(doc))
                langs[rec["lang"]] += 1
                yield rec

        n_kept = write_jsonl(self.targets.corpus, kept(data))  # upstream steps close their files first
        counts, samples = self._removed()
        metrics = {"corpus.in": n_kept + sum(counts.values()), "corpus.kept": n_kept,
                   **{f"corpus.removed.{r}": n for r, n in counts.items()},
                   **{f"corpus.kept_{code}": n for code, n in sorted(langs.items())}}
        write_jsonl(self.targets.removed, samples)
        write_json(self.targets.metrics, metrics)
        return
        yield  # a generator: the executor drains it

    def _removed(self) -> tuple[dict[str, int], list[Record]]:
        """Counts by reason and the first ``sample`` of each, in input order, grouped by reason as the stage."""
        counts = dict.fromkeys(self.reasons, 0)
        by_reason: dict[str, list[Record]] = {r: [] for r in self.reasons}
        df = get_datafolder(self.removed)
        for name in _files(self.removed):  # one step's removals of one task, in input order
            in_file: Counter[str] = Counter()
            with df.open(name, "rt", encoding="utf-8") as f:
                for rec in _lines(f):
                    counts[rec["reason"]] += 1
                    in_file[rec["reason"]] += 1
                    if in_file[rec["reason"]] <= self.sample:  # later ones of this file come after these
                        by_reason[rec["reason"]].append(rec)
            for r, recs in by_reason.items():  # the earliest `sample` so far
                by_reason[r] = sorted(recs, key=lambda x: x[POS])[: self.sample]
        samples = [{"dataset": CORPUS.name, **public(rec)} for r in self.reasons for rec in by_reason[r]]
        return counts, samples


def pipelines(cfg: Dedupe, language: Language, work: str, targets: Targets) -> tuple[list, list]:
    """The two pipelines: the sharded filter and the single dedupe task."""
    steps = build_steps(CORPUS, cfg, language, eval_texts(cfg.decontaminate.eval_sets))
    per_doc = steps[0].steps if isinstance(steps[0], InProcesses) else [steps[0]]
    *dedupe, last = steps[1:]
    decon = last if isinstance(last, Decontaminate) else None
    if decon is None:
        dedupe.append(last)
    removed = f"{work}/removed"
    wrap = lambda step: LangliftStep(step, removed)  # noqa: E731
    filter_ = [CorpusReader(list(cfg.inputs.corpus)), *map(wrap, per_doc),
               *([wrap(MarkContaminated(decon))] if decon else []), ShardWriter(f"{work}/filtered")]
    reasons = [r for s in steps for r in s.reasons]  # the stage's order
    dedupe_ = [MergedReader(f"{work}/filtered"), *map(wrap, dedupe), *([wrap(DropContaminated())] if decon else []),
               Finish(targets, removed, reasons, cfg.removed_sample)]
    return filter_, dedupe_


def absolute(path: str) -> str:
    """A local path made absolute (fsspec caches a folder by the name it was given; tasks on other
    machines start elsewhere); URLs as they are."""
    return path if "://" in path else os.path.abspath(path)


def executors(cfg: Dedupe, language: Language, opts: Options, targets: Targets) -> PipelineExecutor:
    """The dedupe executor, depending on the filter executor (``run()`` on it runs both)."""
    inputs = cfg.inputs.model_copy(update={"corpus": list(map(absolute, cfg.inputs.corpus))})
    cfg = cfg.model_copy(update={"inputs": inputs})
    work = absolute(opts.work)
    targets = Targets(*map(absolute, (targets.corpus, targets.removed, targets.metrics)))
    filter_, dedupe_ = pipelines(cfg, language, work, targets)
    logs = f"{work}/logs"
    if opts.executor == "slurm":
        common = dict(time=opts.time, partition=opts.partition, cpus_per_task=opts.cpus_per_task,
                      mem_per_cpu_gb=opts.mem_per_cpu_gb)
        first = SlurmPipelineExecutor(filter_, tasks=opts.tasks, workers=opts.workers, job_name="langlift-filter",
                                      logging_dir=f"{logs}/filter", **common)
        return SlurmPipelineExecutor(dedupe_, tasks=1, job_name="langlift-dedupe", logging_dir=f"{logs}/dedupe",
                                     depends=first, **common)
    if opts.executor != "local":
        raise LangliftError(f"datatrove executor: expected local or slurm, got {opts.executor!r}")
    # fork: the workers inherit langlift, torch and the evaluation n-grams instead of importing them anew
    start = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    first = LocalPipelineExecutor(filter_, tasks=opts.tasks, workers=opts.workers, logging_dir=f"{logs}/filter",
                                  start_method=start)
    return LocalPipelineExecutor(dedupe_, tasks=1, workers=1, logging_dir=f"{logs}/dedupe", depends=first,
                                 start_method=start)


def run_corpus(cfg: Dedupe, language: Language, opts: Options, targets: Targets, resume: bool = False) -> None:
    """Run (local) or submit (Slurm) both executors; a fresh ``work`` folder unless ``resume``
    (datatrove skips the tasks it finished, which would reuse results of other params)."""
    check_inputs(cfg, (CORPUS,))
    if not resume and "://" not in opts.work:
        shutil.rmtree(opts.work, ignore_errors=True)
    executors(cfg, language, opts, targets).run()


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Params file.")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True)
@click.option("--tasks", type=click.IntRange(1), default=Options.tasks, show_default=True,
              help="Tasks (input shards) of the filter step.")
@click.option("--workers", type=int, default=Options.workers, show_default=True,
              help="Tasks running at once (Slurm: -1 for no limit).")
@click.option("--work", default=Options.work, show_default=True, help="Scratch folder (local or fsspec URL).")
@click.option("--out", default="data/datatrove", show_default=True,
              help="Folder for corpus.jsonl, removed.jsonl and data.json.")
@click.option("--partition", default=Options.partition, show_default=True, help="Slurm partition.")
@click.option("--time", "time_", default=Options.time, show_default=True, help="Slurm time limit per job.")
@click.option("--resume", is_flag=True, help="Keep --work: datatrove skips the tasks already finished.")
@run_stage
def main(params_path: str, executor: str, tasks: int, workers: int, work: str, out: str, partition: str,
         time_: str, resume: bool) -> None:
    """Clean the corpus (dedupe.inputs.corpus) on datatrove: the stage's corpus path, kept ids equal."""
    params = P.load(params_path)
    targets = Targets(f"{out}/corpus.jsonl", f"{out}/removed.jsonl", f"{out}/data.json")
    opts = Options(tasks=tasks, workers=workers, work=work, executor=executor, partition=partition, time=time_)
    run_corpus(params.dedupe, params.language, opts, targets, resume)
    if executor == "slurm":
        click.echo(f"submitted; the last job writes {out}/ (logs in {work}/logs)")
    else:
        m = json.loads(Path(targets.metrics).read_text(encoding="utf-8"))
        click.echo(f"corpus={m['corpus.kept']}/{m['corpus.in']} -> {out}/")


if __name__ == "__main__":
    from langlift.dedupe import datatrove  # the importable module: pickled steps must not name __main__

    datatrove.main()
