"""Pretrain stage: train a tokenizer and a Llama from scratch on the split corpus (or continue
pretraining ``pretrain.init``) and write ``models/base/`` plus ``metrics/pretrain.json``.

    python stages/pretrain.py                      # what `dvc repro pretrain` runs; resumes an interrupted run
    python stages/pretrain.py --fresh              # start from step 0 even if a checkpoint of this run exists

With ``hardware.processes: N`` (N > 1) the script reruns itself under ``accelerate launch`` with N processes
(DDP; see docs/scaling.md); by hand: ``accelerate launch --config_file configs/accelerate/ddp.yaml stages/pretrain.py``.
"""

from __future__ import annotations

import sys

import click

from langlift import hardware
from langlift import params as P
from langlift.cli import run_stage


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--fresh", is_flag=True, help="Start from step 0 and remove the checkpoints in pretrain.checkpoint_dir "
              "(by default the newest is resumed when this same run made it).")
@run_stage
def main(params_path: str, fresh: bool) -> str | None:
    """Pretrain (or continue pretraining) the base model."""
    params = P.load(params_path)
    hardware.relaunch(params.hardware, __file__, sys.argv[1:])
    from langlift import pretrain  # after the relaunch: the launcher process needs no transformers

    metrics = pretrain.run(params, fresh=fresh)
    return pretrain.summary(metrics) if metrics else None  # only the main process has metrics


if __name__ == "__main__":
    main()
