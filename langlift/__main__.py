"""langlift's commands beside the DVC stages.

``python -m langlift check`` validates params.yaml the way every stage does, before anything runs;
``python -m langlift new-language CODE --flores FLORES --name NAME`` scaffolds ``languages/<code>/``;
``python -m langlift recipe NAME [--smoke] [--queue]`` runs a reference pipeline as a named DVC experiment;
``python -m langlift report [--rev main] [--out reports]`` compares the working tree with a git revision.
"""

from __future__ import annotations

import click

from langlift import languages
from langlift import params as P
from langlift import recipes
from langlift import report as pr_report
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


@cli.command("new-language")
@click.argument("code")
@click.option("--flores", required=True, help="FLORES-200 code, e.g. tur_Latn (language_Script).")
@click.option("--name", required=True, help="The language's English name, e.g. Turkish.")
@run_stage
def new_language(code: str, flores: str, name: str) -> None:
    """Write languages/CODE/ for a new language, to fill in before `dvc exp run -S language=CODE`."""
    target, warnings = languages.scaffold(code, flores, name)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {target.parent}/: fill in what the comments at the top of {target} list, then "
               f"`python -m langlift check` and `dvc exp run -S language={code}`")


@cli.command()
@click.argument("name")
@click.option("--smoke", is_flag=True, help="The smoke size: tiny local models, offline, minutes on a CPU.")
@click.option("--queue", is_flag=True, help="Queue the experiment (`dvc queue start` runs it) instead of running it.")
@run_stage
def recipe(name: str, smoke: bool, queue: bool) -> None:
    """Run the reference pipeline recipes/NAME.yaml as the DVC experiment NAME (NAME-smoke with --smoke)."""
    experiment, seconds = recipes.run(name, smoke=smoke, queue=queue)
    done = "queued" if queue else f"done in {seconds // 60:.0f} min {seconds % 60:02.0f} s"
    click.echo(f"experiment {experiment}: {done}; see `dvc exp show`")


@cli.command()
@click.option("--rev", default="main", show_default=True, help="The git revision to compare the working tree with.")
@click.option("--out", default="reports", show_default=True, help="Folder for report.md and its PNG charts.")
@run_stage
def report(rev: str, out: str) -> None:
    """Write a Markdown report (metrics, params, data counts, charts, samples) of the working tree against REV."""
    click.echo(f"wrote {pr_report.write(rev, out)}")


if __name__ == "__main__":
    cli()
