"""Benchmark the dedupe stage on a synthetic corpus with planted near-duplicates.

Documents are random sentences of real Azerbaijani words (drawn with their frequencies in the shipped
samples). A share of them gets a planted copy: words substituted at a random rate (a spread of true
Jaccard similarities around and above the threshold) or only invisible/space noise (an exact duplicate
after normalisation). The real stage (`stages/dedupe.py`) runs on them in a subprocess; we report its
documents/s and peak RSS, recall on planted pairs whose true similarity is >= the threshold, the share
of flagged pairs whose true similarity is >= the threshold (precision), recall by similarity bucket,
and the MinHash speed of datasketch's own `MinHash.update_batch` (the baseline) against ours.

    python benchmarks/dedupe.py                 # 100,000 documents
    python benchmarks/dedupe.py --docs 20000    # quicker
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import click
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from langlift import records, text  # noqa: E402
from langlift.dedupe.minhash import MinHasher, jaccard, shingle_hashes, shingles  # noqa: E402
from langlift.io import load_jsonl, write_json  # noqa: E402

AZ_DATA = REPO / "languages" / "az" / "data"
# Runs the stage script and reports its own peak RSS (VmHWM: ru_maxrss would include the benchmark's
# memory, which a forked child holds until exec) and the peak of its worker processes (ru_maxrss,
# which counts the pages they share with the stage).
PEAK_RSS = """import resource, runpy, sys
sys.argv, code = sys.argv[1:], 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code
hwm = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print("PEAK_RSS_KB", hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""
NOISE = ["\u00a0", "\u200b", "  ", "\ufeff", " \u2009"]


def vocabulary() -> tuple[list[str], list[int]]:
    """Azerbaijani words and their cumulative counts in the shipped samples."""
    raw = "\n".join((AZ_DATA / f).read_text(encoding="utf-8")
                    for f in ("ntrex128.az.txt", "tatoeba.aze-eng.az.txt", "xwmt.az-en.az.txt"))
    counts = Counter(re.findall(r"[^\W\d_]+", raw))
    return list(counts), list(itertools.accumulate(counts.values()))


def make_doc(rng: random.Random, vocab: list[str], weights: list[int], n_words: int) -> str:
    words, sentences = rng.choices(vocab, cum_weights=weights, k=n_words), []
    while words:
        k = rng.randint(6, 18)
        sent, words = words[:k], words[k:]
        sentences.append(" ".join([sent[0].capitalize(), *sent[1:]]) + rng.choice(".....?!"))
    return " ".join(sentences)


def perturb(rng: random.Random, doc: str, vocab: list[str], weights: list[int], rate: float) -> str:
    """Substitute each word with probability ``rate``; rate 0 adds only invisible/space noise."""
    if rate == 0:
        parts = doc.split(" ")
        for _ in range(3):
            i = rng.randrange(len(parts))
            parts[i] += rng.choice(NOISE)
        return " ".join(parts)
    return " ".join(rng.choices(vocab, cum_weights=weights)[0] if rng.random() < rate else w for w in doc.split(" "))


def build(n_docs: int, dup_share: float, seed: int) -> tuple[list[dict], list[tuple[str, str]]]:
    """The corpus records (planted copies placed after their originals) and the planted id pairs."""
    rng = random.Random(seed)
    vocab, weights = vocabulary()
    n_planted = int(n_docs * dup_share)
    docs = [make_doc(rng, vocab, weights, rng.randint(30, 200)) for _ in range(n_docs - n_planted)]
    order: list[tuple[str, int | None]] = [(d, None) for d in docs]
    for _ in range(n_planted):
        src = rng.randrange(len(docs))
        rate = 0.0 if rng.random() < 0.1 else rng.uniform(0.0, 0.12)
        pos = rng.randint(src + 1, len(order))  # somewhere after the original
        order.insert(pos, (perturb(rng, docs[src], vocab, weights, rate), src))
    recs = [records.make("corpus", "synthetic", text=d, lang="az") for d, _ in order]
    first = {}
    for rec, (_, src) in zip(recs, order):
        if src is None:
            first[len(first)] = rec["id"]
    pairs = [(first[src], rec["id"]) for rec, (_, src) in zip(recs, order) if src is not None]
    return recs, pairs


def minhash_speed(docs: list[str], num_perm: int, k: int) -> dict[str, float]:
    """Documents/s of datasketch's MinHash (per-shingle SHA-1, update_batch) and of ours."""
    from datasketch import MinHash

    t = time.perf_counter()
    for d in docs:
        m = MinHash(num_perm=num_perm)
        m.update_batch([s.encode("utf-8") for s in (d[i : i + k] for i in range(max(1, len(d) - k + 1)))])
    base = len(docs) / (time.perf_counter() - t)
    ours_fn = MinHasher(num_perm)
    import torch

    torch.set_num_threads(1)
    t = time.perf_counter()
    for d in docs:
        ours_fn(shingle_hashes(d, k))
    return {"datasketch_docs_per_s": base, "langlift_docs_per_s": len(docs) / (time.perf_counter() - t)}


@click.command()
@click.option("--docs", "n_docs", default=100_000, show_default=True, help="Documents in the synthetic corpus.")
@click.option("--dup-share", default=0.1, show_default=True, help="Share of documents that are planted copies.")
@click.option("--seed", default=0, show_default=True)
@click.option("--baseline-docs", default=2000, show_default=True, help="Documents for the MinHash speed baseline.")
def main(n_docs: int, dup_share: float, seed: int, baseline_docs: int) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    cfg = params["dedupe"]
    threshold, k = cfg["minhash"]["threshold"], cfg["minhash"]["shingle"]
    t = time.perf_counter()
    recs, pairs = build(n_docs, dup_share, seed)
    print(f"built {len(recs)} documents ({len(pairs)} planted copies) in {time.perf_counter() - t:.1f}s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
        cfg["inputs"] = {"instructions": [], "corpus": [str(corpus)]}
        for spec in cfg["decontaminate"]["eval_sets"]:  # the real evaluation sets when fetch has run
            spec["path"] = str(REPO / spec["path"])
        cfg["decontaminate"]["eval_sets"] = [s for s in cfg["decontaminate"]["eval_sets"] if Path(s["path"]).exists()]
        cfg["removed_sample"] = len(recs)  # keep every removed record, to score every flagged pair
        params["dedupe"] = cfg
        (tmp / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", PEAK_RSS, str(REPO / "stages" / "dedupe.py"), "--params",
                               "params.yaml"], cwd=tmp, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if proc.returncode:
            sys.exit(f"stage failed:\n{proc.stderr[-3000:]}")
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = usage.ru_utime + usage.ru_stime  # the stage and its worker processes
        peak_mb, worker_peak_mb = (int(x) / 1024 for x in re.search(r"PEAK_RSS_KB (\d+) (\d+)", proc.stderr).groups())
        metrics = json.loads((tmp / "metrics" / "data.json").read_text())
        removed = {(r["id"], r["duplicate_of"]) for r in load_jsonl(tmp / "data" / "clean" / "removed.jsonl")
                   if "duplicate_of" in r}

    by_id = {r["id"]: text.normalize(r["text"]) for r in recs}

    def sim(a: str, b: str) -> float:  # the true similarity, as the stage defines it
        return jaccard(shingles(by_id[a], k), shingles(by_id[b], k))

    planted = [(a, b, sim(a, b)) for a, b in pairs]
    found = {(a, b) for a, b, _ in planted if (b, a) in removed or (a, b) in removed}  # (copy, original)
    positives = [(a, b) for a, b, s in planted if s >= threshold]
    recall = sum((a, b) in found for a, b in positives) / max(1, len(positives))
    flagged_ok = sum(sim(a, b) >= threshold for a, b in removed)
    precision = flagged_ok / max(1, len(removed))
    buckets: dict[str, list[int]] = {}
    for a, b, s in planted:
        lo = min(int(s * 20) / 20, 0.95)
        buckets.setdefault(f"{lo:.2f}-{lo + 0.05:.2f}", []).append((a, b) in found)
    speed = minhash_speed([by_id[r["id"]] for r in recs[:baseline_docs]], cfg["minhash"]["num_perm"], k)

    result = {
        "docs": len(recs), "planted_pairs": len(pairs), "pairs_at_or_above_threshold": len(positives),
        "threshold": threshold, "seconds": round(seconds, 2), "docs_per_s": round(len(recs) / seconds, 1),
        "cpu_seconds": round(cpu, 2), "docs_per_cpu_s": round(len(recs) / cpu, 1), "load_average": os.getloadavg(),
        "peak_rss_mb": round(peak_mb, 1), "worker_peak_rss_mb": round(worker_peak_mb, 1), "recall": round(recall, 4), "precision": round(precision, 4),
        "flagged_pairs": len(removed), "recall_by_similarity": {b: [round(sum(v) / len(v), 3), len(v)]
                                                              for b, v in sorted(buckets.items())},
        "minhash": {k_: round(v, 1) for k_, v in speed.items()}
        | {"speedup_vs_datasketch": round(speed["langlift_docs_per_s"] / speed["datasketch_docs_per_s"], 1)},
        "metrics": metrics,
    }
    rows = [("documents", len(recs)), ("planted pairs (>= threshold)", f"{len(pairs)} ({len(positives)})"),
            ("stage wall time (s)", f"{seconds:.1f}"), ("documents/s (wall)", f"{len(recs) / seconds:,.0f}"),
            ("stage CPU time (s)", f"{cpu:.1f}"), ("documents per CPU-second", f"{len(recs) / cpu:,.0f}"),
            ("load average (1, 5, 15 min)", " ".join(f"{x:.1f}" for x in os.getloadavg())),
            ("peak RSS (MB): stage, worker", f"{peak_mb:,.0f}, {worker_peak_mb:,.0f}"), (f"recall, pairs with J >= {threshold}", f"{recall:.4f}"),
            ("precision, flagged pairs with J >= threshold", f"{precision:.4f}"),
            ("MinHash docs/s: datasketch (baseline)", f"{speed['datasketch_docs_per_s']:,.0f}"),
            ("MinHash docs/s: langlift", f"{speed['langlift_docs_per_s']:,.0f} "
             f"({result['minhash']['speedup_vs_datasketch']}x)")]
    rows += [(f"  recall, planted J in {b}", f"{r:.3f} of {n}") for b, (r, n) in result["recall_by_similarity"].items()]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    out = REPO / "benchmarks" / "results" / "dedupe.json"
    write_json(out, result)
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
