"""Pretrain stage: train a tokenizer and a Llama from scratch on the split corpus (or continue
pretraining ``pretrain.init``) and write ``models/base/`` plus ``metrics/pretrain.json``.

    python stages/pretrain.py                      # what `dvc repro pretrain` runs
    python stages/pretrain.py --resume             # continue from the latest checkpoint
    accelerate launch --config_file configs/accelerate/ddp.yaml stages/pretrain.py
"""

from __future__ import annotations

import click

from langlift import params as P
from langlift.cli import run_stage
from langlift.pretrain import run


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in pretrain.checkpoint_dir.")
@run_stage
def main(params_path: str, resume: bool) -> None:
    """Pretrain (or continue pretraining) the base model."""
    run(P.load(params_path).model_dump(), resume=resume)  # TODO(lead): typed


if __name__ == "__main__":
    main()
