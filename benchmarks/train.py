"""Training speed (issue 8): the project's pretrain and finetune paths against plain PyTorch loops.

Runs `benchmarks/pretrain.py` (tiny and az150m: langlift's loop vs a plain loop on the same packed
batches, packed vs padded, achieved FLOP/s vs the measured matmul peak) and `benchmarks/finetune.py`
(LoRA, QLoRA and full fine-tuning of the tiny model, each with and without packing, TRL's path vs a plain
loop over the same collated batches, peak memory), each in its own process, then prints one table
and the checks of issue 8 and writes `benchmarks/results/train.json`.

Tokens are non-pad tokens only. Fine-tuning FLOP/s are estimated as 6·N per token for full
fine-tuning and 4·N for adapters (the frozen weights need no weight gradients); N is the model's
parameter count from the pretrain benchmark's `tiny` row.

    python benchmarks/train.py                # CPU, a few minutes on 2 cores
    python benchmarks/train.py --quick        # tiny only, fewer cases (a smoke run)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET_VS_PLAIN = 0.8


def run(script: str, *args: str) -> dict:
    """Run one benchmark script in its own process and return the JSON it wrote."""
    subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), *args], check=True, cwd=REPO)
    return json.loads((RESULTS / f"{script}.json").read_text())


@click.command()
@click.option("--quick", is_flag=True, help="tiny pretrain only and LoRA/QLoRA/full without packing variants.")
@click.option("--rounds", default=2, show_default=True, help="Interleaved repeats per measurement (best kept).")
def main(quick: bool, rounds: int) -> None:
    """Print the issue-8 table: langlift vs plain tokens/s, FLOP/s vs peak, packing, memory."""
    pre = run("pretrain", "--presets", "tiny" if quick else "tiny,az150m", "--rounds", str(rounds))
    cases = "lora,qlora,full" if quick else "lora,lora+packing,qlora,qlora+packing,full,full+packing"
    fin = run("finetune", "--cases", cases, "--rounds", str(rounds))

    peak = pre["peak_gflops"]["fp32"]
    tiny_params = next(r["params"] for r in pre["rows"] if r["preset"] == "tiny")
    rows = []
    for r in pre["rows"]:
        if r["loop"].startswith("langlift"):
            plain = next(p for p in pre["rows"] if (p["preset"], p["precision"], p["loop"]) ==
                         (r["preset"], r["precision"], "plain, packed"))
            rows.append({"path": f"pretrain {r['preset']}", "precision": r["precision"], "tokens_per_s":
                         r["tokens_per_s"], "plain_tokens_per_s": plain["tokens_per_s"],
                         "vs_plain": round(r["tokens_per_s"] / plain["tokens_per_s"], 3),
                         "gflops": r["gflops"], "fraction_of_fp32_peak": r["fraction_of_fp32_peak"],
                         "peak_mib": None})
    for r in fin["results"]:
        flops_per_token = (6 if r["case"].startswith("full") else 4) * tiny_params
        gflops = r["langlift_tokens_per_s"] * flops_per_token / 1e9
        rows.append({"path": f"finetune {r['case']}", "precision": r["precision"],
                     "tokens_per_s": r["langlift_tokens_per_s"], "plain_tokens_per_s": r["plain_tokens_per_s"],
                     "vs_plain": r["langlift_vs_plain"], "gflops": round(gflops, 1),
                     "fraction_of_fp32_peak": round(gflops / peak, 3), "peak_mib": r["peak_mib"]})

    checks = {f"{r['path']} ({r['precision']}) >= {TARGET_VS_PLAIN:.0%} of plain loop": r["vs_plain"] >= TARGET_VS_PLAIN
              for r in rows}
    finetune_tps = {r["case"]: r["langlift_tokens_per_s"] for r in fin["results"]}
    for method in ("lora", "qlora", "full"):
        if f"{method}+packing" in finetune_tps:
            checks[f"finetune {method}: packing raises non-pad tokens/s"] = (
                finetune_tps[f"{method}+packing"] > finetune_tps[method])
    for key, ratio in pre["ratios"].items():
        if "packed vs padded" in key:
            checks[f"pretrain {key} > 1"] = ratio > 1

    head = f"{'path':26} {'prec':5} {'tokens/s':>9} {'plain':>9} {'vs plain':>8} {'GFLOP/s':>8} {'/fp32 peak':>10} {'peak MiB':>9}"
    print(f"\nmeasured fp32 matmul peak {peak:.0f} GFLOP/s (bf16 {pre['peak_gflops']['bf16']:.0f}); "
          f"pretrain on {pre['threads']} threads, finetune on {fin['args']['threads']}")
    print(head)
    print("-" * len(head))
    for r in rows:
        mem = f"{r['peak_mib']:.0f}" if r["peak_mib"] else "-"
        print(f"{r['path']:26} {r['precision']:5} {r['tokens_per_s']:>9.0f} {r['plain_tokens_per_s']:>9.0f} "
              f"{r['vs_plain']:>8.2f} {r['gflops']:>8.1f} {r['fraction_of_fp32_peak']:>10.1%} {mem:>9}")
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    out = {"peak_gflops": pre["peak_gflops"], "rows": rows, "checks": checks,
           "pretrain": pre, "finetune": fin}
    (RESULTS / "train.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {(RESULTS / 'train.json').relative_to(REPO)}")


if __name__ == "__main__":
    main()
