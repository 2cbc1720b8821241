"""Benchmark the corpus half of dedupe: the stage's own path against datatrove's LocalPipelineExecutor.

The corpus is the shipped Azerbaijani corpus (through the fetch library) grown to a few MB: documents
of 1-4 of its lines drawn at random (new texts, so the dedupe index has real work), plus one exact copy
in every 50 documents. Both paths run in this process on the same params (the repository's dedupe
section, eval sets from the shipped parallel data) and must keep the same ids; we report seconds,
documents/s and the ratio. Results: benchmarks/results/datatrove.{json,md}.

    python benchmarks/dedupe_datatrove.py              # ~4 MB, 2 tasks x 2 workers
    python benchmarks/dedupe_datatrove.py --mb 1 --tasks 4 --workers 2
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import click
import yaml

REPO = Path(__file__).resolve().parents[1]

from langlift import params as P
from langlift import records
from langlift.dedupe.datatrove import Options, Targets, executors
from langlift.dedupe.pipeline import clean, eval_texts
from langlift.dedupe.steps import CORPUS
from langlift.fetch import fetch_all, with_default_lang
from langlift.io import load_jsonl, write_json, write_jsonl, write_text

RESULTS = REPO / "benchmarks" / "results"


def build_project(root: Path, mb: float, seed: int) -> P.Params:
    """A scratch project under ``root``: the grown corpus, the parallel eval set and params naming them."""
    (root / "languages").symlink_to(REPO / "languages", target_is_directory=True)
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["fetch"]["sources"] = []
    (root / "params.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    os.chdir(root)
    by_kind, _ = fetch_all(with_default_lang(P.load("params.yaml").fetch.sources, "az"), strict=True)
    lines = [r["text"] for r in by_kind["corpus"]]
    rng, docs, size = random.Random(seed), [], 0
    while size < mb * 1e6:
        text = " ".join(rng.sample(lines, rng.randint(1, 4)))
        docs.append(records.make("corpus", "bench", text=text, lang="az"))
        if len(docs) % 50 == 0:
            docs.append(dict(docs[rng.randrange(len(docs))], id=f"copy-{len(docs)}"))
        size += len(text.encode("utf-8")) + 60
    write_jsonl("data/raw/corpus.jsonl", docs)
    write_jsonl("data/raw/parallel.jsonl", by_kind["parallel"])
    raw["dedupe"]["decontaminate"]["eval_sets"] = [{"path": "data/raw/parallel.jsonl", "fields": ["src", "tgt"]}]
    (root / "params.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return P.load("params.yaml")


def cpu() -> float:
    """CPU seconds of this process and its finished children (the workers of both paths)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def stage(params: P.Params) -> None:
    """The stage's corpus path, evaluation sets included (datatrove's run reads them too)."""
    clean(CORPUS, params.dedupe, params.language, eval_texts(params.dedupe.decontaminate.eval_sets),
          Path("stage/corpus.jsonl"))


def markdown(r: dict) -> str:
    return "\n".join([
        f"# datatrove vs the dedupe stage (corpus path), {r['docs']:,} documents, {r['mb']:.1f} MB, {r['cpus']} CPUs",
        "",
        "| path | seconds | documents/s | CPU seconds | kept |",
        "|---|---|---|---|---|",
        f"| stage (`dedupe.workers: {r['stage_workers']}`) | {r['stage_s']:.1f} | {r['docs'] / r['stage_s']:,.0f} "
        f"| {r['stage_cpu_s']:.1f} | {r['kept']:,} |",
        f"| datatrove, {r['tasks']} tasks x {r['workers']} workers | {r['datatrove_s']:.1f} "
        f"| {r['docs'] / r['datatrove_s']:,.0f} | {r['datatrove_cpu_s']:.1f} | {r['kept']:,} |",
        f"| — of which the sharded filter step | {r['datatrove_filter_s']:.1f} | | | |",
        f"| — of which the single dedupe task | {r['datatrove_dedupe_s']:.1f} | | | |",
        "",
        f"datatrove / stage throughput: **{r['ratio']:.2f}x**; kept ids identical: {r['same_ids']}; "
        f"load average at the end {r['load_avg_1min']:.1f} (other work on the machine slows the parallel path most).",
        "",
    ])


@click.command()
@click.option("--mb", default=4.0, show_default=True, help="Corpus size in MB.")
@click.option("--tasks", default=2, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(mb: float, tasks: int, workers: int, seed: int) -> None:
    """Time both paths on the same corpus; print the ratio and write the results."""
    with tempfile.TemporaryDirectory() as tmp:
        params = build_project(Path(tmp), mb, seed)
        docs = sum(1 for _ in open("data/raw/corpus.jsonl", encoding="utf-8"))
        cpu0 = cpu()
        stage_s = timed(stage, params)
        cpu1 = cpu()
        opts = Options(tasks=tasks, workers=workers, work="work")
        targets = Targets("dt/corpus.jsonl", "dt/removed.jsonl", "dt/data.json")
        start = time.perf_counter()
        last = executors(params.dedupe, params.language, opts, targets)
        filter_s = timed(last.depends.run)
        dedupe_s = timed(last.run)
        dt_s = time.perf_counter() - start
        cpu2 = cpu()
        kept = [r["id"] for r in load_jsonl("stage/corpus.jsonl")]
        same = kept == [r["id"] for r in load_jsonl("dt/corpus.jsonl")]
        os.chdir(REPO)
    result = {"docs": docs, "mb": mb, "cpus": os.cpu_count(), "stage_workers": params.dedupe.workers,
              "tasks": tasks, "workers": workers, "stage_s": round(stage_s, 2), "datatrove_s": round(dt_s, 2),
              "datatrove_filter_s": round(filter_s, 2), "datatrove_dedupe_s": round(dedupe_s, 2),
              "ratio": round(stage_s / dt_s, 3),
              "stage_cpu_s": round(cpu1 - cpu0, 2), "datatrove_cpu_s": round(cpu2 - cpu1, 2),
              "load_avg_1min": os.getloadavg()[0], "kept": len(kept), "same_ids": same}
    write_json(RESULTS / "datatrove.json", result)
    write_text(RESULTS / "datatrove.md", markdown(result))
    click.echo(markdown(result))
    if not same:
        sys.exit("the kept ids differ")


if __name__ == "__main__":
    main()
