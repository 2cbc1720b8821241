"""Generation of the fixed review prompts, timed: tokens per second, time to first token, peak memory."""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers.generation.streamers import BaseStreamer

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
    loaded: LoadedModel, prompts: list[dict[str, Any]], max_new_tokens: int, timed_prompts: int
) -> tuple[list[str], dict[str, float]]:
    """Greedy answers to ``prompts`` (one at a time, through the chat template), then their timing.

    The answering pass and one full-length generation warm up first: on CPU, kernels are prepared per
    tensor shape on first use, so whichever model ran first would otherwise look slower. The timed
    pass runs the first ``timed_prompts`` prompts again, each for exactly ``max_new_tokens`` tokens
    (EOS suppressed), so models that stop at different points are timed on the same work.
    ``gen_tokens_per_s``: new tokens over the wall time of those ``generate`` calls (prefill included);
    ``ttft_s``: median time from calling ``generate`` to its first new token."""
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    encoded = [  # tokenised as training did: the template carries any special tokens
        tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], add_generation_prompt=True,
                                return_tensors="pt", return_dict=True).to(device)
        for p in prompts
    ]
    kwargs = {"do_sample": False, "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
              "max_new_tokens": max_new_tokens}
    answers, ttfts, new_tokens, seconds = [], [], 0, 0.0
    with torch.inference_mode():
        for enc in tqdm(encoded, desc="review prompts", unit="prompt"):
            out = model.generate(**enc, **kwargs)
            answers.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
        model.generate(**encoded[0], min_new_tokens=max_new_tokens, **kwargs)  # full-length warm-up
        for enc in tqdm(encoded[:timed_prompts], desc="timing", unit="prompt"):
            timer = FirstTokenTimer()
            start = time.perf_counter()
            out = model.generate(**enc, min_new_tokens=max_new_tokens, streamer=timer, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            new_tokens += out.shape[1] - enc["input_ids"].shape[1]
            ttfts.append(timer.first_token_at - start)
    timing = {"gen_tokens_per_s": new_tokens / seconds, "ttft_s": statistics.median(ttfts)}
    return answers, timing
