"""The corpus half of the dedupe stage as a datatrove pipeline, for corpora too big for one machine.

langlift's own normalisation, quality checks and decontamination run as datatrove filters (same
functions, same params.yaml); near-duplicates are found by datatrove's four MinHash blocks, with the
LSH bands and rows derived from `dedupe.minhash` as in the local stage. Not in requirements.txt
(tried with datatrove 0.10.1; its MinHash needs xxhash < 4):

    pip install datatrove "xxhash<4"
    python configs/datatrove_corpus.py --input data/raw/corpus.jsonl --work /tmp/dt    # local processes
    python configs/datatrove_corpus.py --input s3://bucket/corpus/ --work s3://bucket/dt \\
        --executor slurm --tasks 512 --partition cpu                                   # a Slurm cluster

Outputs under --work: `clean/` (kept documents, JSONL shards), `removed/` (dropped documents with
their reason in `metadata.filter_reason`), datatrove's stats and logs per step. Differences from the
local stage: datatrove shingles words (5-grams of `langlift.text.words`) rather than characters and
does not verify LSH candidates, duplicate clusters are resolved transitively, exact duplicates fall
out of the MinHash step (their signatures are identical), and counts come from datatrove's stats.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from langlift import text  # noqa: E402
from langlift.dedupe.minhash import lsh_params  # noqa: E402
from langlift.dedupe.pipeline import eval_texts  # noqa: E402
from langlift.dedupe.steps import CORPUS, Decontaminate, QualityFilter  # noqa: E402
from langlift.params import DedupeQuality  # noqa: E402
from langlift.params import load as load_params  # noqa: E402


class Normalize(PipelineStep):
    """langlift's Unicode and whitespace normalisation of `doc.text`."""

    type = "✂️ - FORMAT"
    name = "langlift normalize"

    def __init__(self, form: str):
        super().__init__()
        self.form = form

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            doc.text = text.normalize(doc.text, self.form)
            yield doc


class Quality(BaseFilter):
    """langlift's corpus quality checks; the failing check is the drop reason."""

    name = "langlift quality"

    def __init__(self, lang: str, quality: DedupeQuality, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.check = QualityFilter(CORPUS, lang, quality).check

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if not doc.text:
            return False, "empty"
        failed = self.check(doc.text)
        return (False, failed[0]) if failed else True


class Decontam(BaseFilter):
    """langlift's n-gram decontamination against the evaluation sets in params."""

    name = "langlift decontaminate"

    def __init__(self, evals: dict[str, list[str]], ngram: int, min_words: int, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.match = Decontaminate(CORPUS, evals, ngram, min_words).match

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return (False, "contaminated") if self.match(doc.text) else True


class Words(WordTokenizer):
    """langlift's word tokens, for any language (datatrove's tokenizers are per language)."""

    def word_tokenize(self, text_: str) -> list[str]:
        return text.words(text_)

    def sent_tokenize(self, text_: str) -> list[str]:
        return text_.splitlines()

    def span_tokenize(self, text_: str) -> list[tuple[int, int]]:
        raise NotImplementedError


def executor(args, pipeline: list, name: str, tasks: int, depends=None):
    logs = f"{args.work}/logs/{name}"
    if args.executor == "slurm":
        return SlurmPipelineExecutor(pipeline=pipeline, tasks=tasks, time=args.time, partition=args.partition,
                                     job_name=f"langlift-{name}", logging_dir=logs, depends=depends)
    return LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=args.workers, logging_dir=logs,
                                 depends=depends)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--input", default="data/raw/corpus.jsonl", help="a JSONL file or a folder of them (local or s3://)")
    ap.add_argument("--work", default="data/datatrove", help="output and scratch folder (local or s3://)")
    ap.add_argument("--executor", choices=["local", "slurm"], default="local")
    ap.add_argument("--tasks", type=int, default=4, help="parallel tasks (input shards) for the per-document steps")
    ap.add_argument("--workers", type=int, default=2, help="local processes at a time")
    ap.add_argument("--partition", default="cpu", help="Slurm partition")
    ap.add_argument("--time", default="04:00:00", help="Slurm time limit per job")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg, lang = params.dedupe, params.language.code
    bands, rows = lsh_params(cfg.minhash.threshold, cfg.minhash.num_perm)
    minhash = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows, hash_config=HashConfig(precision=64))
    decon = cfg.decontaminate
    evals = eval_texts(decon.eval_sets)
    src = Path(args.input)
    reader = (JsonlReader(str(src.parent), glob_pattern=src.name) if src.suffix == ".jsonl"
              else JsonlReader(args.input))
    removed = lambda step: JsonlWriter(f"{args.work}/removed/{step}")  # noqa: E731

    filtered = executor(args, [
        reader,
        Normalize(cfg.normalize),
        Quality(lang, cfg.quality, exclusion_writer=removed("quality")),
        Decontam(evals, decon.ngram, decon.min_words, exclusion_writer=removed("contaminated")),
        JsonlWriter(f"{args.work}/filtered"),
        MinhashDedupSignature(output_folder=f"{args.work}/signatures", config=minhash, language=Words()),
    ], "1-filter-signatures", args.tasks)
    buckets = executor(args, [
        MinhashDedupBuckets(input_folder=f"{args.work}/signatures", output_folder=f"{args.work}/buckets", config=minhash),
    ], "2-buckets", bands, depends=filtered)
    clusters = executor(args, [
        MinhashDedupCluster(input_folder=f"{args.work}/buckets", output_folder=f"{args.work}/remove_ids", config=minhash),
    ], "3-clusters", 1, depends=buckets)
    final = executor(args, [
        JsonlReader(f"{args.work}/filtered"),
        MinhashDedupFilter(input_folder=f"{args.work}/remove_ids", exclusion_writer=removed("near_duplicate")),
        JsonlWriter(f"{args.work}/clean"),
    ], "4-filter-duplicates", args.tasks, depends=clusters)
    final.run()  # runs the chain: each executor starts the one it depends on first


if __name__ == "__main__":
    main()
