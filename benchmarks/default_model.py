"""The default model (issue 17, part 5): which pretrain preset and finetune settings do best in the same minutes.

Each candidate is a set of params overrides. For each, in a scratch copy of the project (langlift, stages,
configs, languages, data/samples, params.yaml; the split data copied from this checkout's data/split, or made
by the fetch..split stages when it has none), the pretrain and finetune stages run as `dvc repro` runs them
(`python stages/<name>.py`), one at a time, with `hardware.num_threads: 1` and one pinned precision, so that
process CPU time (getrusage of the children) measures the work whatever else the machine is doing. Then:

- `bits_per_byte`: the base model's summed next-token loss over every held-out document (data/split/
  corpus_val.jsonl, each scored alone after BOS), in bits, over its UTF-8 bytes: comparable across vocabularies.
  `val_ppl` is the pretrain stage's own validation perplexity (per token: comparable only at the same vocab).
- the fine-tuned model answers the review prompts (languages/<code>/prompts.jsonl) twice, greedy and with
  params' `generation:` settings (sampling, repetition penalty), 48 new tokens as the evaluate stage's
  samples: `run` is the longest run of one token id in an answer (the worst over the prompts, and the mean),
  `distinct2` the share of distinct word bigrams in an answer (mean over the prompts).
- `cpu_s`: CPU seconds of pretrain + finetune, and `cpu_ratio` against the first candidate (`before`, the
  default until issue 17) from the same results file: the budget was its +-15%.

    python benchmarks/default_model.py                        # every candidate (about 2-3 CPU minutes each)
    python benchmarks/default_model.py --only deep,wide     # those rows replaced, the others kept

Prints a table and writes benchmarks/results/default_model.json.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import yaml

from langlift.generation import longest_run

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "default_model.json"
COPY = ["langlift", "stages", "configs", "languages", "data/samples", "params.yaml", "dvc.yaml", ".dvc/config"]
EARLY = ["fetch", "translate", "generate", "dedupe", "split"]
MAX_NEW_TOKENS = 48  # params.yaml's evaluate.max_new_tokens: what the evaluate stage's samples generate
BUDGET = 0.15

# name -> params overrides (dotted keys), every setting that differs between candidates pinned, so that a row means
# the same whatever params.yaml and the presets say now; the first is the baseline every ratio is against
SHAPE_4x128 = {"pretrain.model.layers": 4, "pretrain.model.hidden": 128, "pretrain.model.intermediate": 384}
SHAPE_6x96 = {"pretrain.model.layers": 6, "pretrain.model.hidden": 96, "pretrain.model.intermediate": 288}
LOOP = {"pretrain.tokenizer.vocab_size": 4096, "pretrain.lr": 6.0e-3, "pretrain.batch_size": 8, "pretrain.steps": 300,
        "lr": 3.0e-3}
V2K = {**SHAPE_4x128, **LOOP, "pretrain.tokenizer.vocab_size": 2048, "pretrain.steps": 330, "lr": 2.0e-4}
CANDIDATES: dict[str, dict[str, Any]] = {
    "before": {**SHAPE_4x128, "pretrain.tokenizer.vocab_size": 4096, "pretrain.lr": 3.0e-3,   # the default until
               "pretrain.batch_size": 16, "pretrain.steps": 150, "lr": 2.0e-4},               # issue 17
    "v2k": V2K,                                           # half the vocab, 2x the updates, 2x the lr
    "v2k-ft1e-3": {**V2K, "lr": 1.0e-3},                  # the same base, LoRA at 5x the lr
    "v2k-ft3e-3": {**V2K, "lr": 3.0e-3},
    "v4k": {**SHAPE_4x128, **LOOP},                       # the vocab kept, the rest as v2k, LoRA 3e-3
    "v4k-lr1e-2": {**SHAPE_4x128, **LOOP, "pretrain.lr": 1.0e-2},
    "deep": {**SHAPE_6x96, **LOOP},                       # the default since issue 17
    "deep-ft1e-3": {**SHAPE_6x96, **LOOP, "lr": 1.0e-3},
    "deep8-80": {**LOOP, "pretrain.model.layers": 8, "pretrain.model.hidden": 80, "pretrain.model.intermediate": 240},
    "deep8": {**LOOP, "pretrain.model.layers": 8, "pretrain.model.hidden": 96, "pretrain.model.intermediate": 288,
              "pretrain.steps": 240},
    "deep-330": {**SHAPE_6x96, **LOOP, "pretrain.steps": 330},
    "wide": {**LOOP, "pretrain.model.layers": 2, "pretrain.model.hidden": 192, "pretrain.model.intermediate": 576,
             "pretrain.steps": 240},
}


# ---------------------------------------------------------------- the scratch project


def scratch(root: Path) -> None:
    """Copy what the stages need into ``root``; the split data from this checkout, else made by the early stages."""
    for rel in COPY:
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dst)
    split = REPO / "data" / "split"
    if (split / "corpus_train.jsonl").exists() and (REPO / "data" / "raw" / "manifest.json").exists():
        shutil.copytree(split, root / "data" / "split")
        (root / "data" / "raw").mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / "data" / "raw" / "manifest.json", root / "data" / "raw" / "manifest.json")
    else:
        for stage in EARLY:
            stage_cpu(root, stage)


def set_key(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``tree[a][b] = value`` for ``dotted`` ``a.b``."""
    *parents, last = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


def write_params(root: Path, overrides: dict[str, Any], precision: str) -> None:
    """This checkout's params.yaml with ``overrides``, one thread and ``precision``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for key, value in {**overrides, "hardware.num_threads": 1, "hardware.precision": precision}.items():
        set_key(params, key, value)
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")


def stage_cpu(root: Path, stage: str, *args: str) -> float:
    """Run ``python stages/<stage>.py`` in ``root``; its CPU seconds (user + system, children included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, f"stages/{stage}.py", *args], cwd=root, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{stage} failed in {root}:\n{done.stderr[-3000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# ---------------------------------------------------------------- what a candidate's models do


def bits_per_byte(folder: Path, docs: list[str]) -> float:
    """Summed next-token loss of every document (scored alone after BOS), in bits per UTF-8 byte."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    context = model.config.max_position_embeddings
    nats, nbytes = 0.0, 0
    with torch.inference_mode():
        for text in docs:
            ids = [start] + tok(text, add_special_tokens=False)["input_ids"]
            for i in range(0, len(ids) - 1, context - 1):  # windows of `context` positions, one token overlap
                x = torch.tensor([ids[i : i + context]])
                logits = model(input_ids=x).logits[0, :-1].float()
                nats += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            nbytes += len(text.encode("utf-8"))
    return nats / math.log(2) / nbytes


def distinct2(text: str) -> float:
    """Distinct word bigrams over word bigrams (1.0 for fewer than two words)."""
    words = text.split()
    pairs = list(zip(words, words[1:]))
    return len(set(pairs)) / len(pairs) if pairs else 1.0


def answers(root: Path, prompts: list[str], decoding: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuned model's answers to ``prompts`` with ``decoding``: runs, distinct-2, CPU seconds."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root / "models" / "finetuned")
    base = AutoModelForCausalLM.from_pretrained(root / "models" / "base", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, root / "models" / "finetuned").eval()
    texts, runs, started = [], [], time.process_time()
    torch.manual_seed(decoding.pop("seed", 0))
    with torch.inference_mode():
        for prompt in prompts:
            enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id, **decoding)
            new = [t for t in out[0, enc["input_ids"].shape[1]:].tolist() if t != tok.eos_token_id]
            runs.append(longest_run(new))
            texts.append(tok.decode(new, skip_special_tokens=True).strip())
    return {"run_max": max(runs), "run_mean": round(sum(runs) / len(runs), 2),
            "distinct2": round(sum(map(distinct2, texts)) / len(texts), 3),
            "cpu_s": round(time.process_time() - started, 1), "answers": texts[:3]}


def sampling(params_file: Path) -> dict[str, Any]:
    """params' ``generation:`` settings as ``generate`` keyword arguments (greedy when do_sample is false)."""
    from langlift import params as P

    g = P.load(params_file).generation
    kwargs: dict[str, Any] = {"do_sample": g.do_sample, "seed": g.seed,
                              "repetition_penalty": g.repetition_penalty}
    if g.do_sample:
        kwargs.update(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
    if g.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = g.no_repeat_ngram_size
    return kwargs


# ---------------------------------------------------------------- one candidate


def measure(root: Path, name: str, overrides: dict[str, Any], precision: str, base_cache: dict[str, Any]) -> dict:
    """Pretrain (or reuse an identical pretraining of an earlier candidate), finetune, score; one result row."""
    write_params(root, overrides, precision)
    pre_key = json.dumps({k: v for k, v in overrides.items() if k.startswith("pretrain.")}, sort_keys=True)
    for cache in (root / "checkpoints", root / ".cache" / "finetune"):
        shutil.rmtree(cache, ignore_errors=True)
    if pre_key in base_cache:
        shutil.rmtree(root / "models" / "base", ignore_errors=True)
        shutil.copytree(base_cache[pre_key]["folder"], root / "models" / "base")
        pre = base_cache[pre_key]["row"]
    else:
        pre_cpu = stage_cpu(root, "pretrain", "--fresh")
        m = json.loads((root / "metrics" / "pretrain.json").read_text())
        docs = [json.loads(line)["text"] for line in (root / "data/split/corpus_val.jsonl").open(encoding="utf-8")]
        pre = {"pretrain_cpu_s": round(pre_cpu, 1), "params_m": round(m["parameters"] / 1e6, 2),
               "vocab": m["vocab_size"], "val_ppl": round(m["val_perplexity"], 1),
               "bits_per_byte": round(bits_per_byte(root / "models" / "base", docs), 4),
               "pretrain_epochs": m["epochs"], "fertility": m["tokenizer_fertility"]}
        keep = root / "bases" / name
        shutil.copytree(root / "models" / "base", keep)
        base_cache[pre_key] = {"folder": keep, "row": pre}
    ft_cpu = stage_cpu(root, "finetune")
    ft = json.loads((root / "metrics" / "finetune.json").read_text())
    lang = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8")).get("language", "az")
    prompts = [json.loads(line)["prompt"] for line in (root / f"languages/{lang}/prompts.jsonl").open(encoding="utf-8")]
    greedy = answers(root, prompts[:20], {"do_sample": False})
    sampled = answers(root, prompts[:20], sampling(root / "params.yaml"))
    return {"name": name, "overrides": overrides, **pre, "finetune_cpu_s": round(ft_cpu, 1),
            "finetune_eval_loss": round(ft["eval_loss"], 4), "finetune_steps": ft["steps"],
            "cpu_s": round(pre["pretrain_cpu_s"] + ft_cpu, 1), "greedy": greedy, "sampled": sampled}


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the results."""
    head = ("| candidate | params (M) | vocab | val ppl | bits/byte | longest run greedy (max / mean) | distinct-2 "
            "greedy | longest run sampled (max / mean) | distinct-2 sampled | CPU s (pretrain + finetune) | "
            "CPU ratio |\n|" + "---|" * 11)
    lines = [head]
    for r in rows:
        g, s = r["greedy"], r["sampled"]
        lines.append(f"| {r['name']} | {r['params_m']} | {r['vocab']} | {r['val_ppl']} | {r['bits_per_byte']} | "
                     f"{g['run_max']} / {g['run_mean']} | {g['distinct2']} | {s['run_max']} / {s['run_mean']} | "
                     f"{s['distinct2']} | {r['pretrain_cpu_s']} + {r['finetune_cpu_s']} | {r['cpu_ratio']} |")
    return "\n".join(lines)


@click.command()
@click.option("--only", default="", help="Comma-separated candidate names; their rows replace those of the same "
              "names in the results file, the others are kept (ratios are against the baseline's row there).")
@click.option("--keep", is_flag=True, help="Keep the scratch project (its path is printed).")
def main(only: str, keep: bool) -> None:
    """Run the candidates one after another and compare them with the current default."""
    from langlift import hardware

    precision = hardware.choose({"device": "cpu", "num_threads": 1}).precision
    names = [n for n in CANDIDATES if not only or n in only.split(",")]
    unknown = set(filter(None, only.split(","))) - set(CANDIDATES)
    if unknown:
        raise click.UsageError(f"--only: unknown candidates {sorted(unknown)}; known: {list(CANDIDATES)}")
    earlier = json.loads(RESULTS.read_text())["rows"] if only and RESULTS.exists() else []
    rows = [r for r in earlier if r["name"] not in names]
    baseline = next(iter(CANDIDATES))
    root = Path(tempfile.mkdtemp(prefix="langlift-default-model-"))
    base_cache: dict[str, Any] = {}
    try:
        scratch(root)
        for name in names:
            started = time.perf_counter()
            row = measure(root, name, CANDIDATES[name], precision, base_cache)
            row["wall_s"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            ref = next((r for r in rows if r["name"] == baseline), None)
            row["cpu_ratio"] = round(row["cpu_s"] / ref["cpu_s"], 2) if ref else None
            print(json.dumps(row, ensure_ascii=False), flush=True)
    finally:
        if keep:
            print(f"scratch project: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    rows.sort(key=lambda r: list(CANDIDATES).index(r["name"]) if r["name"] in CANDIDATES else len(CANDIDATES))
    print(table(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"precision": precision, "threads": 1, "budget": BUDGET, "rows": rows},
                                  indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
