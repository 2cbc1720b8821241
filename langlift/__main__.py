"""``python -m langlift check``: validate params.yaml the way every stage does, before anything runs."""

from __future__ import annotations

import click

from langlift import params as P
from langlift.cli import run_stage


@click.group()
def cli() -> None:
    """langlift's commands beside the DVC stages."""


@cli.command()
@click.option("--params", "params_path", default=str(P.DEFAULT_PATH), show_default=True, help="Params file.")
@run_stage
def check(params_path: str) -> None:
    """Validate the params file: unknown keys, types and ranges; exit 1 with one line on the first problem."""
    params = P.load(params_path)
    click.echo(f"{params_path}: ok ({params.language.name}, base model {params.base_model}, "
               f"finetune {params.finetune.method})")


if __name__ == "__main__":
    cli()
