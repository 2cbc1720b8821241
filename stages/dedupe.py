"""dedupe: normalise, filter, deduplicate and decontaminate the instructions and the corpus.

Reads `dedupe.inputs.*` and the evaluation sets in `dedupe.decontaminate.eval_sets`; writes
data/clean/{instructions,corpus,removed}.jsonl and metrics/data.json. `--engine datatrove` cleans the
corpus on datatrove's LocalPipelineExecutor (`--tasks` shards, `--workers` processes): the same outputs.
"""

from __future__ import annotations

import click

from langlift import dedupe
from langlift import params as P
from langlift.cli import run_stage


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Params file.")
@click.option("--engine", type=click.Choice(["local", "datatrove"]), default="local", show_default=True,
              help="Where the corpus is cleaned: this process, or datatrove's executor (same result).")
@click.option("--tasks", type=click.IntRange(1), default=2, show_default=True, help="datatrove: filter tasks (shards).")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="datatrove: tasks at once.")
@run_stage
def main(params_path: str, engine: str, tasks: int, workers: int) -> str:
    """Clean the instruction data and the corpus; count every removal by reason."""
    params = P.load(params_path)
    options = None
    if engine == "datatrove":
        from langlift.dedupe.datatrove import Options

        options = Options(tasks=tasks, workers=workers)
    m = dedupe.run(params.dedupe, params.language, datatrove=options)
    return (f"kept {m['instructions.kept']} of {m['instructions.in']} instruction records and {m['corpus.kept']} of "
            f"{m['corpus.in']} corpus documents")


if __name__ == "__main__":
    main()
