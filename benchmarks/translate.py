"""Translate-stage throughput: segments/s of the seq2seq and api backends, each against its own baseline.

- seq2seq: batched generation over length-sorted segments vs one segment at a time, on a small randomly
  initialised NLLB-style model (M2M-100 architecture) built here, CPU by default;
- api: concurrency N vs concurrency 1 against a local OpenAI-compatible server with a fixed latency.

Prints a table and writes benchmarks/results/translate.json. Ratios compare runs made in this process.

    python benchmarks/translate.py [--segments 64] [--batch-size 32] [--latency 0.05] [--concurrency 8]
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
import zlib
from pathlib import Path

import click
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the local OpenAI-compatible test server

LANG = {"code": "az", "flores": "azj_Latn", "name": "Azerbaijani", "script": "Latn"}


def sentences(lang: str, n: int) -> list[str]:
    path = REPO / "languages" / "az" / "data" / f"ntrex128.{lang}.txt"
    return [s for s in path.read_text(encoding="utf-8").splitlines() if s.strip()][:n]


def build_nllb(path: Path, d_model: int, layers: int) -> None:
    """A random NLLB-style model (tokenizer trained on the samples) saved at ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator(sentences("en", 1500) + sentences("az", 1500), trainers.BpeTrainer(
        vocab_size=4000, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False))
    spec = json.loads(bpe.to_str())["model"]
    tok = NllbTokenizer(vocab=spec["vocab"], merges=[tuple(m) if not isinstance(m, str) else tuple(m.split(" "))
                                                     for m in spec["merges"]],
                        extra_special_tokens=["eng_Latn", "azj_Latn"], src_lang="eng_Latn")
    torch.manual_seed(0)
    config = M2M100Config(vocab_size=len(tok), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=4 * d_model,
                          decoder_ffn_dim=4 * d_model, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          decoder_start_token_id=tok.eos_token_id)
    M2M100ForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)


def rate(fn, n: int) -> tuple[float, float]:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    return n / seconds, seconds


def bench_seq2seq(n: int, batch_size: int, max_new_tokens: int, d_model: int, layers: int) -> list[dict]:
    from langlift.translate.seq2seq import Seq2SeqBackend

    texts = sentences("en", n)
    with tempfile.TemporaryDirectory() as tmp:
        build_nllb(Path(tmp), d_model, layers)
        single = Seq2SeqBackend(tmp, LANG, batch_size=1, max_new_tokens=max_new_tokens)
        batched = Seq2SeqBackend(tmp, LANG, batch_size=batch_size, max_new_tokens=max_new_tokens)
        batched.translate(texts[:batch_size])  # warm-up
        one, t1 = rate(lambda: [single.translate([t]) for t in texts], n)
        many, t2 = rate(lambda: batched.translate(texts), n)
    base = {"backend": "seq2seq", "segments": n, "max_new_tokens": max_new_tokens, "device": single.device}
    return [{**base, "mode": "one at a time", "batch_size": 1, "seconds": round(t1, 2),
             "segments_per_s": round(one, 2), "speedup": 1.0},
            {**base, "mode": "batched, length-sorted", "batch_size": batch_size, "seconds": round(t2, 2),
             "segments_per_s": round(many, 2), "speedup": round(many / one, 2)}]


def bench_api(n: int, latency: float, concurrency: int) -> list[dict]:
    from langlift.translate.api import ApiBackend
    from openai_server import OpenAIServer

    texts = [f"{s} ({i})" for i, s in enumerate(sentences("en", n))]

    def handler(body: dict, _: int) -> str:
        time.sleep(latency)
        return f"az-{zlib.crc32(body['messages'][-1]['content'].encode())}"

    rows = []
    with OpenAIServer(handler) as server:
        for c in (1, concurrency):
            b = ApiBackend("Translate into {name}:\n\n{text}", LANG, base_url=server.url, model="bench",
                           api_key_env=None, concurrency=c, timeout=10)
            r, t = rate(lambda: [b.translate(texts[i:i + b.chunk_size]) for i in range(0, n, b.chunk_size)], n)
            rows.append({"backend": "api", "mode": f"concurrency {c}", "segments": n, "latency_s": latency,
                         "seconds": round(t, 2), "segments_per_s": round(r, 2)})
    for row in rows:
        row["speedup"] = round(row["segments_per_s"] / rows[0]["segments_per_s"], 2)
    return rows


@click.command()
@click.option("--segments", default=64, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--max-new-tokens", default=16, show_default=True)
@click.option("--d-model", default=256, show_default=True)
@click.option("--layers", default=2, show_default=True)
@click.option("--latency", default=0.05, show_default=True, help="Seconds the local server takes per request.")
@click.option("--concurrency", default=8, show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch CPU threads.")
def main(segments: int, batch_size: int, max_new_tokens: int, d_model: int, layers: int, latency: float,
         concurrency: int, threads: int) -> None:
    torch.set_num_threads(threads)
    rows = bench_seq2seq(segments, batch_size, max_new_tokens, d_model, layers) + bench_api(
        segments, latency, concurrency)
    print(f"{'backend':<9} {'mode':<24} {'segments':>8} {'seconds':>8} {'seg/s':>8} {'speedup':>8}")
    for r in rows:
        print(f"{r['backend']:<9} {r['mode']:<24} {r['segments']:>8} {r['seconds']:>8} {r['segments_per_s']:>8} "
              f"{r['speedup']:>7}x")
    out = REPO / "benchmarks" / "results" / "translate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": threads,
           "cpu": platform.processor() or platform.machine(), "cuda": torch.cuda.is_available()}
    out.write_text(json.dumps({"env": env, "d_model": d_model, "layers": layers, "rows": rows}, indent=2) + "\n",
                   encoding="utf-8")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
