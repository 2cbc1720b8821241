"""finetune: supervised fine-tuning of a base model on the split instructions (full, LoRA, QLoRA, 8-bit).

`python stages/finetune.py` trains params' base_model into models/finetuned/; a matrix entry
(`--name N --base-model M`) trains into models/matrix/N/ with metrics/matrix/N.json. With
`hardware.processes: N` (N > 1) the script reruns itself under `accelerate launch` with N processes (DDP, see
docs/scaling.md); by hand: `accelerate launch --config_file configs/accelerate/<ddp|fsdp|deepspeed_zero2>.yaml
stages/finetune.py`.
An interrupted run resumes from its newest checkpoint when rerun (`dvc repro`); `--fresh` starts over.
"""

from __future__ import annotations

import sys

import click

from langlift import hardware
from langlift import params as P
from langlift.cli import run_stage


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Params file.")
@click.option("--name", default=None, help="Matrix entry name: write models/matrix/NAME and metrics/matrix/NAME.json.")
@click.option("--base-model", default=None, help="Base model (local folder or hub id); default: params' base_model.")
@click.option("--fresh", is_flag=True, help="Start from step 0 and remove this run's checkpoints (by default an "
              "interrupted run resumes from its newest checkpoint when params, data, base model and code match).")
@run_stage
def main(params_path: str, name: str | None, base_model: str | None, fresh: bool) -> str:
    """Fine-tune the base model on data/split/{train,val}.jsonl."""
    params = P.load(params_path)
    hardware.relaunch(params.hardware, __file__, sys.argv[1:])
    from langlift import finetune as F  # after the relaunch: the launcher process needs no transformers

    metrics, _ = F.run(params, base_model=base_model, name=name, fresh=fresh)
    return F.summary(metrics, F.Paths.for_run(name).model)


if __name__ == "__main__":
    main()
