"""Fine-tuning throughput and memory: LoRA, QLoRA (4-bit) and full fine-tuning, unpacked and packed.

Every case runs in its own processes (one for speed, one for peak memory) on the pretrain stage's `tiny`
architecture (random weights, its tokenizer and chat template) and real Azerbaijani sentences as
instruction data. Each case, alternated `--rounds` times (best kept, as the CPU is shared):
  - `langlift`: the project's path (`langlift.finetune.prepare` -> TRL SFTTrainer.train);
  - `plain`:    a plain PyTorch loop (forward, backward, AdamW) over the *same* collated batches, same
                model and adapter; the baseline the project's path is compared with (issue 8: >= 0.8x).
Tokens/s count non-pad tokens only, over the steps after `--warmup`; peak memory is the process's
peak RSS (CPU) or peak allocated CUDA memory. `vs ref` divides a case's langlift tokens/s by a plain
fp32 LoRA loop measured in the same process, alternated with it, so cases compare across the table.
Cases run in `--precision` (fp32 on CPU, bf16 on a GPU by default); LoRA also runs in bf16 (what bf16
does on this CPU) and with TRL's fused chunked LM head (`finetune.fused_lm_head: true`, TRL's default).

    python benchmarks/finetune.py                 # CPU, tiny model, 12 timed steps per case
    python benchmarks/finetune.py --steps 20 --threads 2
    python benchmarks/finetune.py --preset 0.5b   # GPU: a ~0.5B Llama config in bf16

Writes benchmarks/results/finetune.json.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "finetune.json"
ARCH = {  # "tiny": the pretrain stage's preset; "0.5b": a Qwen2.5-0.5B-sized Llama for a lent GPU
    "tiny": None,
    "0.5b": {"layers": 24, "hidden": 896, "heads": 14, "kv_heads": 2, "intermediate": 4864, "context": 2048,
             "tie_embeddings": True, "rope_theta": 1e6, "vocab_size": 4096},
}
CASES = [  # (name, method, packing, precision (None: --precision), fused_lm_head)
    ("lora", "lora", False, None, False),
    ("lora+packing", "lora", True, None, False),
    ("qlora", "qlora", False, None, False),
    ("qlora+packing", "qlora", True, None, False),
    ("full", "full", False, None, False),
    ("full+packing", "full", True, None, False),
    ("lora bf16", "lora", False, "bf16", False),
    ("lora fusedhead", "lora", False, None, True),  # TRL's default chunked LM head
]


def build_model(workdir: Path, preset: str) -> Path:
    """The pretrain stage's model layout (tokenizer with chat template + Llama) with random weights."""
    from langlift import model as llm
    from langlift import tokenizer as tk

    texts = [ln for ln in (REPO / "languages/az/data/ntrex128.az.txt").read_text(encoding="utf-8").splitlines() if ln]
    arch = llm.resolve("tiny", ARCH[preset])
    tok = tk.finalize(tk.train(texts, arch["vocab_size"]), tk.chat_template("### Təlimat:", "### Cavab:"),
                      arch["context"])
    config = llm.build_config(arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    llm.from_scratch(config, seed=0).save_pretrained(workdir / "model")
    tok.save_pretrained(workdir / "model")
    return workdir / "model"


def write_data(workdir: Path, n: int) -> Path:
    """Instruction records from the shipped NTREX-128 pairs (translate en -> az), varied lengths."""
    en = (REPO / "languages/az/data/ntrex128.en.txt").read_text(encoding="utf-8").splitlines()
    az = (REPO / "languages/az/data/ntrex128.az.txt").read_text(encoding="utf-8").splitlines()
    path = workdir / "train.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            rec = {"id": str(i), "instruction": "Azərbaycan dilinə tərcümə et:", "input": en[i], "output": az[i],
                   "lang": "az", "source": "ntrex128"}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def params_for(base: Path, method: str, packing: bool, precision: str | None, fused: bool, args: dict) -> dict:
    return {
        "seed": 0, "lr": 2e-4, "epochs": 1, "base_model": str(base), "language": {"code": "az"},
        "hardware": {"precision": precision or args["precision"], "num_threads": args["threads"], "gradient_checkpointing": False},
        "finetune": {
            "method": method, "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
            "batch_size": args["batch"], "gradient_accumulation": 1, "max_seq_length": args["seq"],
            "packing": packing, "fused_lm_head": fused, "max_steps": args["warmup"] + args["steps"],
            "logging_steps": 10**6,
            "checkpoint_steps": 10**6, "lr_scheduler": "constant", "warmup_ratio": 0.0, "resume": False,
            "template": "model",
        },
    }


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def batch_tokens(batch: dict) -> int:
    """Non-pad tokens of a collated batch (padding-free rows have no padding)."""
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()


def langlift_path(prep, warmup: int) -> float:
    """Non-pad tokens/s of SFTTrainer.train() over the steps after ``warmup`` (batch i feeds step i)."""
    from transformers import TrainerCallback

    marks: dict[int, float] = {}
    tokens: list[int] = []
    collate = prep.trainer.data_collator

    def counting(examples):
        batch = collate(examples)
        tokens.append(batch_tokens(batch))
        return batch

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sync()
            marks[state.global_step] = time.perf_counter()

    prep.trainer.data_collator = counting
    prep.trainer.add_callback(Clock())
    prep.trainer.train()
    last = max(marks)
    return sum(tokens[warmup:last]) / (marks[last] - marks[warmup])


def plain_loop(model, batches: list[dict], warmup: int, lr: float, autocast: torch.dtype | None) -> float:
    """Non-pad tokens/s of forward + backward + AdamW over the same batches."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    device = next(model.parameters()).device
    model.train()
    tokens, start = 0, 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            sync()
            start, tokens = time.perf_counter(), 0
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += batch_tokens(batch)
    sync()
    return tokens / (time.perf_counter() - start)


def peak_memory_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_case(base: Path, train: Path, case: tuple, args: dict) -> dict:
    """Peak memory of the langlift path alone for one case (its own process, nothing else run in it)."""
    from langlift import finetune as F

    name, method, packing, precision, fused = case
    with tempfile.TemporaryDirectory() as tmp:
        paths = F.Paths(Path(tmp) / "m", Path(tmp) / "m.json", Path(tmp) / "live", Path(tmp) / "ckpt")
        prep = F.prepare(params_for(base, method, packing, precision, fused, args), paths=paths, train_path=train,
                         val_path=Path(tmp) / "none.jsonl")
        before = peak_memory_mib()
        langlift_path(prep, args["warmup"])
    return {"peak_mib": peak_memory_mib(), "peak_before_train_mib": before}


def run_case(base: Path, train: Path, case: tuple, args: dict) -> dict:
    """One case in this process: its plain loop, its langlift path and the reference (plain LoRA fp32 loop),
    alternated ``rounds`` times, best of each kept: load from other processes hurts all three alike, so
    ratios within a case hold even when absolute numbers drift between cases."""
    from langlift import finetune as F

    name, method, packing, precision, fused = case
    params = params_for(base, method, packing, precision, fused, args)
    reference = params_for(base, "lora", False, None, False, args)
    best = {"plain": 0.0, "langlift": 0.0, "reference": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        paths = F.Paths(Path(tmp) / "m", Path(tmp) / "m.json", Path(tmp) / "live", Path(tmp) / "ckpt")
        for _ in range(args["rounds"]):
            for which, p in (("reference", reference), ("plain", params), ("langlift", params)):
                prep = F.prepare(p, paths=paths, train_path=train, val_path=Path(tmp) / "none.jsonl")
                if which == "langlift":
                    tps = langlift_path(prep, args["warmup"])
                else:
                    loader = prep.trainer.get_train_dataloader()
                    batches = [b for _, b in zip(range(args["warmup"] + args["steps"]), loader)]
                    autocast = prep.settings.dtype if prep.settings.precision != "fp32" else None
                    tps = plain_loop(prep.trainer.model, batches, args["warmup"], p["lr"], autocast)
                best[which] = max(best[which], tps)
    return {"case": name, **best, "precision": prep.settings.precision,
            "trainable_params": F.count_params(prep.trainer.model)[0]}


@click.command()
@click.option("--preset", type=click.Choice(sorted(ARCH)), default="tiny", show_default=True)
@click.option("--steps", default=12, show_default=True, help="Timed optimizer steps per case.")
@click.option("--warmup", default=3, show_default=True, help="Untimed steps first.")
@click.option("--batch", default=4, show_default=True)
@click.option("--seq", default=256, show_default=True, help="max_seq_length (packed row length).")
@click.option("--threads", default=1, show_default=True, help="CPU threads per case.")
@click.option("--rounds", default=2, show_default=True, help="Alternated plain/langlift rounds per case (best kept).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]),
              default="bf16" if torch.cuda.is_available() else "fp32", show_default=True)
@click.option("--cases", default=None, help="Comma-separated case names (default: all).")
@click.option("--one", default=None, hidden=True, help="Internal: run one case, print its JSON.")
def main(preset: str, steps: int, warmup: int, batch: int, seq: int, threads: int, rounds: int, precision: str,
         cases: str | None, one: str | None) -> None:
    """Tokens/s and peak memory of each fine-tuning method, against a plain PyTorch loop."""
    args = {"steps": steps, "warmup": warmup, "batch": batch, "seq": seq, "threads": threads, "rounds": rounds,
            "precision": precision}
    if one:
        job = json.loads(one)
        case = next(c for c in CASES if c[0] == job["case"])
        run = peak_case if job["mode"] == "memory" else run_case
        print(json.dumps(run(Path(job["base"]), Path(job["train"]), case, args)))
        return
    import logging

    logging.disable(logging.WARNING)
    chosen = [c for c in CASES if cases is None or c[0] in cases.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = build_model(Path(tmp), preset)
        train = write_data(Path(tmp), n=batch * (warmup + steps) * 2)
        for case in chosen:
            row = {}
            for mode in ("speed", "memory"):
                job = json.dumps({"case": case[0], "mode": mode, "base": str(base), "train": str(train)})
                cmd = [sys.executable, __file__, "--one", job, "--steps", str(steps), "--warmup", str(warmup),
                       "--batch", str(batch), "--seq", str(seq), "--threads", str(threads), "--rounds", str(rounds),
                       "--preset", preset, "--precision", precision]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                row.update(json.loads(out.strip().splitlines()[-1]))
            rows.append(row)
            click.echo(f"  {case[0]:<15} plain {row['plain']:>7.0f} tok/s, langlift {row['langlift']:>7.0f} tok/s, "
                       f"reference {row['reference']:>7.0f} tok/s", err=True)

    by = {r["case"]: r for r in rows}
    table = [{
        "case": r["case"], "precision": r["precision"], "trainable_params": r["trainable_params"],
        "plain_tokens_per_s": round(r["plain"], 1), "langlift_tokens_per_s": round(r["langlift"], 1),
        "langlift_vs_plain": round(r["langlift"] / r["plain"], 3),
        "vs_reference": round(r["langlift"] / r["reference"], 3),
        "peak_mib": round(r["peak_mib"], 1), "peak_mib_before_train": round(r["peak_before_train_mib"], 1),
    } for r in rows]
    header = (f"{'case':<15} {'prec':<5} {'trainable':>10} {'plain tok/s':>12} {'langlift tok/s':>15} {'ratio':>6} "
              f"{'vs ref':>8} {'peak MiB':>9}")
    click.echo(header)
    for t in table:
        click.echo(f"{t['case']:<15} {t['precision']:<5} {t['trainable_params']:>10} {t['plain_tokens_per_s']:>12.0f} "
                   f"{t['langlift_tokens_per_s']:>15.0f} {t['langlift_vs_plain']:>6.2f} {t['vs_reference']:>8.2f} "
                   f"{t['peak_mib']:>9.0f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    RESULTS.write_text(json.dumps({"preset": preset, "device": device, "args": args, "results": table}, indent=2) + "\n")
    click.echo(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
