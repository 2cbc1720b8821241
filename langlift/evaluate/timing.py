"""Generation of the fixed review prompts, timed: tokens per second, time to first token, peak memory, and
the longest run of one token in an answer."""

from __future__ import annotations

import copy
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers.generation.streamers import BaseStreamer

from langlift import generation
from langlift.evaluate.models import LoadedModel


class FirstTokenTimer(BaseStreamer):
    """Records when ``generate`` hands over its first new token (its first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.calls, self.first_token_at = 0, None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            if value.is_cuda:
                torch.cuda.synchronize()
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def reset_peak_memory(device: str) -> None:
    """Start a new peak: CUDA allocator statistics, or the process RSS high-water mark on Linux."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # "5" resets VmHWM (Documentation/filesystems/proc.rst); elsewhere the peak is since process start
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb(device: str) -> float:
    """MiB: peak CUDA memory allocated by tensors, or on CPU the process's peak resident set size."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def generate_timed(
    loaded: LoadedModel, prompts: list[dict[str, Any]], max_new_tokens: int, timed_prompts: int, seed: int
) -> tuple[list[str], dict[str, float]]:
    """Answers to ``prompts`` (one at a time, through the chat template) decoded as the model's saved generation
    config says (sampling seeded once with ``seed``: reproducible), at most ``max_new_tokens`` each; then
    their timing and the longest run of one token in any answer (``max_token_run``; per answer in
    ``loaded.info["longest_token_runs"]``, with the decoding in ``loaded.info["decoding"]``).

    The answering pass and one full-length generation warm up first: on CPU, kernels are prepared per
    tensor shape on first use, so whichever model ran first would otherwise look slower. The timed
    pass runs the first ``timed_prompts`` prompts again, each for exactly ``max_new_tokens`` tokens
    (EOS suppressed), so models that stop at different points are timed on the same work.
    ``gen_tokens_per_s``: new tokens over the wall time of those ``generate`` calls (prefill included);
    ``ttft_s``: median time from calling ``generate`` to its first new token."""
    model, tok = loaded.model, loaded.tokenizer
    config = copy.deepcopy(loaded.generation)
    config.max_new_tokens = min(max_new_tokens, config.max_new_tokens or max_new_tokens)
    messages = [[{"role": "user", "content": p["prompt"]}] for p in prompts]
    answers, runs, ttfts, new_tokens, seconds = [], [], [], 0, 0.0
    torch.manual_seed(seed)
    for turn in tqdm(messages, desc="review prompts", unit="prompt"):
        ids = generation.generate(model, tok, turn, config)
        runs.append(generation.longest_run(ids))
        answers.append(tok.decode(ids, skip_special_tokens=True).strip())
    full = config.max_new_tokens
    generation.generate(model, tok, messages[0], config, min_new_tokens=full)  # full-length warm-up
    for turn in tqdm(messages[:timed_prompts], desc="timing", unit="prompt"):
        timer = FirstTokenTimer()
        start = time.perf_counter()
        ids = generation.generate(model, tok, turn, config, streamer=timer, min_new_tokens=full)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        new_tokens += len(ids)
        ttfts.append(timer.first_token_at - start)
    loaded.info.update(decoding=generation.describe(config), longest_token_runs=runs)
    timing = {"gen_tokens_per_s": new_tokens / seconds, "ttft_s": statistics.median(ttfts),
              "max_token_run": max(runs, default=0)}
    return answers, timing
