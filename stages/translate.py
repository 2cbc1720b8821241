"""Translate the English instruction records into the target language.

Reads data/raw/instructions.jsonl, writes data/translated/instructions.jsonl (records joined to their
English source by `source_id`), data/translated/rejected.jsonl (misses and dropped records with their
reasons) and metrics/translate.json. Segment translations are cached in `translate.cache`, so a
killed run resumes where it stopped.
"""

from __future__ import annotations

import click

from langlift import params as P
from langlift.cli import run_stage
from langlift.translate import translate_file

SOURCE = "data/raw/instructions.jsonl"
OUTPUT = "data/translated/instructions.jsonl"
REJECTED = "data/translated/rejected.jsonl"
METRICS = "metrics/translate.json"


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Params file.")
@run_stage
def main(params_path: str) -> str:
    params = P.load(params_path)
    m = translate_file(params, SOURCE, OUTPUT, REJECTED, METRICS)
    pairs = f" + {m['pair_records']} pair records" if "pair_records" in m else ""
    flagged = ", ".join(f"{reason} {n}" for reason, n in m["flagged"].items()) or "none"
    return (f"{m['records_out']} of {m['records_in']} records translated with {m['backend']}{pairs} -> {OUTPUT} "
            f"({m['dropped']} dropped, see {REJECTED}; flagged: {flagged})")


if __name__ == "__main__":
    main()
