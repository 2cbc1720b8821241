"""DDP on CPU (issue 16): the pretrain stage in 1 process vs N processes, tokens/s per process and in total.

Each run is the real stage script (`python stages/pretrain.py`, so N > 1 goes through `hardware.processes`
and `accelerate launch`) in a scratch project over the repository's data/split corpus, params.yaml's
pretrain settings with `--steps` steps and no evaluation or checkpoint inside the timed window. The global
batch is the same in every run (N processes x batch_size / N), so each run does the same work and trains the
same curve; the threads are fixed, not `auto` (which would give the lone process only the cores that other
work leaves free): 1 process takes every core, N processes split them; the precision is fp32. Tokens/s is
the stage's own metric (steps after the first, evaluation and checkpoints left out), summed over the
processes; per process is that divided by N. `--rounds` repeats the pair and keeps the best run of each, as
the machine may be shared.

    python benchmarks/distributed.py                   # about 4 minutes on 2 cores
    python benchmarks/distributed.py --steps 20 --rounds 1

Writes benchmarks/results/distributed.json and distributed.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def project(root: Path, processes: int, batch: int, steps: int) -> Path:
    """A scratch project in ``root`` training ``steps`` steps in ``processes`` processes of ``batch`` rows."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["pretrain"].update(steps=steps, batch_size=batch, eval_every=10 * steps, checkpoint_every=10 * steps,
                              log_every=steps, warmup_steps=min(params["pretrain"]["warmup_steps"], steps))
    cores = len(os.sched_getaffinity(0))
    params["hardware"].update(processes=processes, precision="fp32", device="cpu",
                              num_threads=max(1, cores // processes))
    root.mkdir(parents=True)
    for name in ("languages", "configs"):
        (root / name).symlink_to(REPO / name, target_is_directory=True)
    (root / "data").mkdir()
    (root / "data" / "split").symlink_to(REPO / "data" / "split", target_is_directory=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return root


def measure(root: Path, processes: int, global_batch: int, steps: int) -> dict:
    """Run the stage in ``processes`` processes; its metrics, with wall time and per-process tokens/s."""
    project(root, processes, global_batch // processes, steps)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "stages" / "pretrain.py")], cwd=root, capture_output=True,
                          text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - start
    if done.returncode:
        raise click.ClickException(f"{processes} processes failed:\n{done.stderr[-3000:]}")
    m = json.loads((root / "metrics" / "pretrain.json").read_text())
    total = m["tokens_per_second"]
    return {"processes": processes, "batch_per_process": global_batch // processes, "global_batch": global_batch,
            "threads_per_process": m["hardware.num_threads"], "tokens_per_second": total,
            "tokens_per_second_per_process": round(total / processes, 1), "train_loss": m["train_loss"],
            "stage_wall_seconds": round(wall, 1)}


def table(rows: list[dict]) -> str:
    """A markdown table of the runs, the ratio to 1 process last."""
    base = rows[0]["tokens_per_second"]
    out = ["| processes | batch/process | threads/process | tokens/s total | tokens/s per process | vs 1 process "
           "| train loss | stage wall s |", "|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['processes']} | {r['batch_per_process']} | {r['threads_per_process']} "
            f"| {r['tokens_per_second']:,.0f} | {r['tokens_per_second_per_process']:,.0f} "
            f"| {r['tokens_per_second'] / base:.2f} | {r['train_loss']:.4f} | {r['stage_wall_seconds']} |"
            for r in rows]
    return "\n".join(out)


@click.command()
@click.option("--processes", default=2, show_default=True, help="Processes of the DDP run.")
@click.option("--steps", default=40, show_default=True, help="Optimizer steps per run.")
@click.option("--batch", "global_batch", default=16, show_default=True, help="Global batch (rows per step).")
@click.option("--rounds", default=2, show_default=True, help="Repeat the pair; the best run of each is kept.")
def main(processes: int, steps: int, global_batch: int, rounds: int) -> None:
    """Time the pretrain stage in 1 and in PROCESSES processes on CPU."""
    if global_batch % processes:
        raise click.BadParameter(f"--batch {global_batch} is not divisible by --processes {processes}")
    best: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for n in (1, processes):
                run = measure(Path(tmp) / f"{r}-{n}", n, global_batch, steps)
                click.echo(f"round {r + 1}: {n} process(es): {run['tokens_per_second']:,.0f} tokens/s", err=True)
                if n not in best or run["tokens_per_second"] > best[n]["tokens_per_second"]:
                    best[n] = run
    rows = [best[1], best[processes]]
    ratio = rows[1]["tokens_per_second"] / rows[0]["tokens_per_second"]
    result = {"cores": len(os.sched_getaffinity(0)), "steps": steps, "rounds": rounds, "runs": rows,
              "ratio_total": round(ratio, 3), "ratio_per_process": round(ratio / processes, 3),
              "load_average_after": os.getloadavg()[0]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "distributed.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = table(rows)
    (RESULTS / "distributed.md").write_text(text + "\n", encoding="utf-8")
    click.echo(text)
    click.echo(f"{processes} processes vs 1: total tokens/s x{ratio:.2f}, per process x{ratio / processes:.2f}")


if __name__ == "__main__":
    main()
