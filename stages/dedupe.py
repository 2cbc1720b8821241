"""dedupe: normalise, filter, deduplicate and decontaminate the instructions and the corpus.

Reads `dedupe.inputs.*` and the evaluation sets in `dedupe.decontaminate.eval_sets`; writes
data/clean/{instructions,corpus,removed}.jsonl and metrics/data.json.
"""

from __future__ import annotations

import click

from langlift import dedupe
from langlift import params as P
from langlift.cli import run_stage


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Params file.")
@run_stage
def main(params_path: str) -> None:
    """Clean the instruction data and the corpus; count every removal by reason."""
    params = P.load(params_path)
    m = dedupe.run(params.dedupe, params.language)
    click.echo(f"instructions={m['instructions.kept']}/{m['instructions.in']} corpus={m['corpus.kept']}/{m['corpus.in']}")


if __name__ == "__main__":
    main()
