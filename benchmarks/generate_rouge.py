"""ROUGE-L near-duplicate filtering at self-instruct scale: langlift's RougeIndex against all-pairs baselines.

Synthetic instructions are random 5-25 word windows of real Azerbaijani sentences (the shipped NTREX-128
sample) with a few words swapped for random sample words, so the word frequencies are natural. A share
of them is followed later by a planted near-copy (1-3 words changed). Each item is kept unless its
ROUGE-L F1 with an already kept item is above the threshold, as in Stanford Alpaca.

Measured in the same run (full-size all-pairs times are estimated from their measured per-pair cost
times the exact number of pairs an all-pairs run would compare):
  - ``index``: langlift.generate.rouge.RougeIndex (prefix-filtered candidates + bit-parallel LCS);
  - ``brute``: every kept item compared with the same bit-parallel LCS (the same decisions, O(n²));
  - ``rouge_score``: rouge_score's RougeScorer against every kept item, as Alpaca does (on a smaller prefix,
    and with its ASCII-only tokenizer, so its decisions differ on Azerbaijani text).
The index and brute decisions are checked to be identical on the brute-force prefix. Times are CPU
seconds of this (single-threaded) process, so other work on the machine does not skew the ratios.

    python benchmarks/generate_rouge.py               # 50,000 items
    python benchmarks/generate_rouge.py --items 10000
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from langlift.generate.rouge import RougeIndex, lcs_length, tokens  # noqa: E402
from langlift.io import write_json  # noqa: E402


def synthetic(n: int, near_share: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = (REPO / "languages/az/data/ntrex128.az.txt").read_text(encoding="utf-8").split("\n")
    sents = [s.split() for s in lines if len(s.split()) >= 5]
    vocab = [w for s in sents for w in s]
    items: list[str] = []
    planted: list[tuple[int, str]] = []
    while len(items) < n:
        if planted and planted[0][0] <= len(items):
            items.append(planted.pop(0)[1])
            continue
        s = rng.choice(sents)
        k = rng.randint(5, min(25, len(s)))
        start = rng.randint(0, len(s) - k)
        words = s[start:start + k]
        for _ in range(rng.randint(1, 3)):
            words[rng.randrange(k)] = rng.choice(vocab)
        items.append(" ".join(words))
        if rng.random() < near_share:
            copy = list(words)
            for _ in range(rng.randint(1, 3)):
                copy[rng.randrange(k)] = rng.choice(vocab)
            planted.append((len(items) + rng.randint(1, 5000), " ".join(copy)))
            planted.sort(key=lambda p: p[0])
    return items[:n]


def run_index(items: list[str], threshold: float) -> tuple[list[bool], float, int]:
    index = RougeIndex(threshold)
    start = time.process_time()
    keep = [index.add_if_new(t)[0] for t in items]
    return keep, time.process_time() - start, index.comparisons


def run_brute(items: list[str], threshold: float) -> tuple[list[bool], float, int]:
    kept: list[list[str]] = []
    keep, pairs = [], 0
    start = time.process_time()
    for t in items:
        a = tokens(t)
        pairs += len(kept)
        dup = any(2 * lcs_length(a, b) / (len(a) + len(b)) > threshold for b in kept)
        keep.append(not dup)
        if not dup:
            kept.append(a)
    return keep, time.process_time() - start, pairs


def run_rouge_score(items: list[str], threshold: float) -> tuple[list[bool], float, int]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept: list[str] = []
    keep, pairs = [], 0
    start = time.process_time()
    for t in items:
        pairs += len(kept)
        dup = any(scorer.score(t, k)["rougeL"].fmeasure > threshold for k in kept)
        keep.append(not dup)
        if not dup:
            kept.append(t)
    return keep, time.process_time() - start, pairs


@click.command()
@click.option("--items", default=50_000, show_default=True)
@click.option("--brute", "n_brute", default=2_000, show_default=True, help="Items for the all-pairs baseline.")
@click.option("--rouge-score", "n_rs", default=400, show_default=True, help="Items for the rouge_score baseline.")
@click.option("--threshold", default=0.7, show_default=True)
@click.option("--near-share", default=0.1, show_default=True, help="Share of items given a planted near-copy.")
@click.option("--seed", default=0, show_default=True)
def main(items: int, n_brute: int, n_rs: int, threshold: float, near_share: float, seed: int) -> None:
    texts = synthetic(items, near_share, seed)
    rows = []

    def row(name: str, n: int, keep: list[bool], secs: float, compared: int) -> dict:
        r = {"method": name, "items": n, "kept": sum(keep), "seconds": round(secs, 3),
             "items_per_s": round(n / secs, 1), "lcs_computed": compared}
        rows.append(r)
        return r

    keep_b, t_b, p_b = run_brute(texts[:n_brute], threshold)
    row("brute (all kept, bit-parallel LCS)", n_brute, keep_b, t_b, p_b)
    keep_s, t_s, p_s = run_rouge_score(texts[:n_rs], threshold)
    row("rouge_score (all kept, as Alpaca)", n_rs, keep_s, t_s, p_s)
    keep_i, t_i, p_i = run_index(texts[:n_brute], threshold)
    row("index", n_brute, keep_i, t_i, p_i)
    if keep_i != keep_b:
        raise SystemExit("index and brute force disagree: a bug")
    _, t_irs, p_irs = run_index(texts[:n_rs], threshold)
    row("index", n_rs, _, t_irs, p_irs)
    keep_full, t_full, p_full = run_index(texts, threshold)
    full = row("index", items, keep_full, t_full, p_full)

    # all-pairs work at full size: each item against every item kept before it (exact count)
    pairs_full, kept_so_far = 0, 0
    for k in keep_full:
        pairs_full += kept_so_far
        kept_so_far += k
    brute_full_s = pairs_full * t_b / p_b
    rouge_score_full_s = pairs_full * t_s / p_s
    summary = {
        "threshold": threshold, "items": items,
        "speedup_vs_brute_same_items": round(t_b / t_i, 1),
        "speedup_vs_rouge_score_same_items": round(t_s / t_irs, 1),
        "all_pairs_full": pairs_full,
        "brute_seconds_estimated_full": round(brute_full_s, 1),
        "rouge_score_seconds_estimated_full": round(rouge_score_full_s, 1),
        "index_seconds_full": round(t_full, 2),
        "speedup_vs_brute_estimated_full": round(brute_full_s / t_full, 1),
        "speedup_vs_rouge_score_estimated_full": round(rouge_score_full_s / t_full, 1),
        "index_items_per_s_full": full["items_per_s"],
        "identical_decisions_on_brute_prefix": True,
    }
    print(f"{'method':38} {'items':>7} {'kept':>7} {'seconds':>9} {'items/s':>10} {'LCS computed':>13}")
    for r in rows:
        print(f"{r['method']:38} {r['items']:7d} {r['kept']:7d} {r['seconds']:9.2f} {r['items_per_s']:10.1f} "
              f"{r['lcs_computed']:13d}")
    for k, v in summary.items():
        print(f"{k}: {v}")
    out = REPO / "benchmarks/results/generate_rouge.json"
    write_json(out, {"rows": rows, "summary": summary})
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
