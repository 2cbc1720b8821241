"""CPU threads under load (issue 11): training throughput alone and with a second training beside it.

Each measurement starts training processes on the pretrain stage's `tiny` architecture (langlift's
model, optimizer and step: forward, backward, gradient clipping, AdamW; batch 16 x 256 random tokens, as
throughput does not depend on the token values), waits until every one has built its model and run a
warm-up step, then times `--seconds` of steps in all of them at once. A process that finishes its
window keeps training until the others have finished theirs, so the load stays on throughout.

Two policies:
  - old: one thread per core in the affinity mask, torch's default OpenMP wait policy (spinning);
  - new: `langlift.hardware` imported before torch (passive OpenMP waiting) and `hardware.choose`
         picking the threads from the free cores when the process starts.
Each is measured with one process alone, then with two processes started at once; each concurrent
process's steps/s is given as a ratio of the solo steps/s just before it (same policy, same round, so
under about the same background load). `--rounds` repeats everything and the round whose pair kept most
is shown, as the machine may be shared with other work: the numbers are noisy.

    python benchmarks/threads.py               # about 3 minutes on 2 idle cores
    python benchmarks/threads.py --seconds 8 --rounds 1

Writes benchmarks/results/threads.json.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "threads.json"
BATCH = 16  # the batch of the figures in docs/performance.md (params.yaml's pretrain.batch_size was 16 then; now 8)
POLICIES = ("old", "new")
TARGET_PAIR, TARGET_SOLO = 0.40, 0.95


# ---------------------------------------------------------------- the child: one training process


def _setup(policy: str) -> dict:
    """Import torch under ``policy`` and set its threads; what was chosen.

    The imports live here because their order is the point: OpenMP's wait policy is fixed when torch
    loads, and ``langlift.hardware`` sets it only when imported first.
    """
    if policy == "new":
        from langlift import hardware

        settings = hardware.choose({"device": "cpu", "precision": "fp32", "attn_implementation": "sdpa",
                                    "gradient_checkpointing": False})
        hardware.apply(settings)
        return {"threads": settings.num_threads, "openmp": settings.openmp_wait_policy,
                "load": settings.cpu_busy, "reason": settings.reasons["num_threads"]}
    import torch

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    return {"threads": threads, "openmp": os.environ.get("OMP_WAIT_POLICY", "default"), "load": None,
            "reason": "one per core in the affinity mask"}


def _stdin_closed() -> bool:
    """Whether the parent has closed our stdin (its signal to stop), without blocking."""
    ready, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(ready) and sys.stdin.readline() == ""


def child(policy: str, seconds: float) -> None:
    """Build the tiny model, warm up, report ready, time ``seconds`` of steps on "go", then train until stdin closes."""
    chosen = _setup(policy)
    import torch

    from langlift import model as llm
    from langlift.params import Pretrain
    from langlift.pretrain import make_optimizer

    arch = llm.resolve("tiny")
    model = llm.from_scratch(llm.build_config(arch, arch["vocab_size"], 1, 2, 0), seed=0)
    cfg = Pretrain(steps=1, batch_size=BATCH, lr=1e-4, warmup_steps=1)
    optimizer = make_optimizer(model, cfg, "cpu")
    x = torch.randint(3, arch["vocab_size"], (BATCH, arch["context"]), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: kernel selection and allocation stay out of the timing
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()  # "go"
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    elapsed = time.perf_counter() - start
    print(json.dumps({**chosen, "steps": n, "seconds": round(elapsed, 2), "steps_per_s": n / elapsed}), flush=True)
    while not _stdin_closed():
        step()


# ---------------------------------------------------------------- the parent


def measure(policy: str, processes: int, seconds: float) -> list[dict]:
    """Start ``processes`` children of ``policy`` at once; their timed windows run together."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    cmd = [sys.executable, __file__, "--child", policy, "--seconds", str(seconds)]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
             for _ in range(processes)]
    try:
        for p in procs:
            if not json.loads(p.stdout.readline() or "{}").get("ready"):
                raise click.ClickException(f"a {policy} training process failed to start (see its stderr above)")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait()
    return results


def summarise(rounds: list[dict[str, dict[int, list[dict]]]]) -> dict:
    """The table rows and the checks of issue 11.

    Each pair is compared with the solo run of the same policy and round (measured just before it, so
    under the same background load); of each policy the round whose pair kept most is shown.
    """
    rows = []
    for policy in POLICIES:
        best = max(rounds, key=lambda r: min(x["steps_per_s"] for x in r[policy][2]) / r[policy][1][0]["steps_per_s"])
        solo = best[policy][1][0]["steps_per_s"]
        for n in (1, 2):
            for i, r in enumerate(best[policy][n]):
                rows.append({"policy": policy, "processes": n, "process": i + 1, "threads": r["threads"],
                             "openmp": r["openmp"], "load_at_start": r["load"], "steps": r["steps"],
                             "steps_per_s": round(r["steps_per_s"], 3),
                             "vs_solo": round(r["steps_per_s"] / solo, 3), "reason": r["reason"]})
    pair_new = min(r["vs_solo"] for r in rows if r["policy"] == "new" and r["processes"] == 2)
    solo = {p: max(r[p][1][0]["steps_per_s"] for r in rounds) for p in POLICIES}
    checks = {
        f"new, 2 processes: each >= {TARGET_PAIR:.0%} of solo": [round(pair_new, 3), pair_new >= TARGET_PAIR],
        f"new vs old, 1 process (best solo): >= {TARGET_SOLO}": [round(solo["new"] / solo["old"], 3),
                                                                  solo["new"] / solo["old"] >= TARGET_SOLO],
    }
    return {"rows": rows, "checks": checks}


def report(summary: dict, seconds: float, rounds: int, load: float | None) -> None:
    """Print the table and the checks."""
    print(f"tiny preset, batch {BATCH}; {seconds:g} s timed per process, best of {rounds} rounds; "
          f"load average at start {load}")
    head = f"{'policy':6} {'procs':>5} {'#':>2} {'threads':>7} {'OpenMP':8} {'steps/s':>8} {'vs solo':>8}  reason"
    print(head)
    print("-" * len(head))
    for r in summary["rows"]:
        print(f"{r['policy']:6} {r['processes']:>5} {r['process']:>2} {r['threads']:>7} {r['openmp']:8} "
              f"{r['steps_per_s']:>8.3f} {r['vs_solo']:>8.2f}  {r['reason']}")
    print()
    for name, (value, ok) in summary["checks"].items():
        print(f"{name}: {value:.2f} {'ok' if ok else 'MISSED'}")


@click.command()
@click.option("--seconds", default=10.0, show_default=True, help="Timed seconds per process and measurement.")
@click.option("--rounds", default=2, show_default=True, help="Alternated repeats of all measurements (best kept).")
@click.option("--child", "child_policy", type=click.Choice(POLICIES), hidden=True)
def main(seconds: float, rounds: int, child_policy: str | None) -> None:
    if child_policy:
        child(child_policy, seconds)
        return
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    runs = [{policy: {n: measure(policy, n, seconds) for n in (1, 2)} for policy in POLICIES} for _ in range(rounds)]
    summary = summarise(runs)
    report(summary, seconds, rounds, load)
    from langlift.io import write_json

    write_json(RESULTS, {"seconds": seconds, "rounds": rounds, "batch": BATCH, "load_average_at_start": load,
                         "wall_seconds": round(time.perf_counter() - started, 1), **summary,
                         "all_rounds": runs})
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
