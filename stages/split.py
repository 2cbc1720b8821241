"""split: hash-based train/val/test for instructions, train/val for the corpus, and the parallel test set."""

from __future__ import annotations

import click

from langlift import params as P
from langlift import split as S
from langlift.cli import run_stage
from langlift.errors import LangliftError
from langlift.io import write_json, write_jsonl


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Params file.")
@run_stage
def main(params_path: str) -> str:
    """Split the cleaned data; no id or translation group lands in two splits."""
    params = P.load(params_path)
    cfg, lang, seed = params.split, params.language.code, params.seed

    instructions = S.split_instructions(
        S.read_records("data/clean/instructions.jsonl", "instructions"), lang, seed, cfg)
    S.check_disjoint(instructions)
    if not instructions["train"]:
        raise LangliftError(
            f"data/clean/instructions.jsonl has no '{lang}' instruction records for training: "
            "the translate (or generate) stage must produce target-language records"
        )
    corpus = S.split_corpus(S.read_records("data/clean/corpus.jsonl", "corpus"), seed, cfg.corpus_val)
    pairs, other_script = S.parallel_test(S.read_records("data/raw/parallel.jsonl", "parallel"), params.language,
                                          seed, cfg.parallel_test_max)

    for name, recs in instructions.items():
        write_jsonl(f"data/split/{name}.jsonl", recs)
    for name, recs in corpus.items():
        write_jsonl(f"data/split/corpus_{name}.jsonl", recs)
    write_jsonl("data/split/parallel_test.jsonl", pairs)
    metrics = {"instructions": S.summary(instructions, lang),
               "corpus": {name: len(recs) for name, recs in corpus.items()},
               "parallel_test": len(pairs), "parallel_other_script": other_script}
    write_json("metrics/split.json", metrics)
    i, c = metrics["instructions"], metrics["corpus"]
    return (f"instructions train {i['train']} ({i['train_english_share']:.0%} English) / val {i['val']} / test "
            f"{i['test']}; corpus train {c['train']} / val {c['val']}; {len(pairs)} parallel test pairs")


if __name__ == "__main__":
    main()
