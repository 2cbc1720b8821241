"""How the models answer: params' ``generation`` section as a transformers ``GenerationConfig``.

Pretrain and finetune write it into the saved model's ``generation_config.json`` (EOS and padding from the
tokenizer, ``use_cache`` on), so the chat, evaluate's review-prompt samples and every export decode the same
way. Loading a model keeps these settings apart (:func:`split_off`): evaluation metrics decode as each metric
documents (greedy), not as a person chatting would. ``max_new_tokens`` is capped by the model's context minus
the prompt on every call, so generation never runs past the positions the model was trained on.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from langlift.errors import LangliftError
from langlift.io import write_text
from langlift.params import Generation

FILE = "generation_config.json"
SAMPLING = ("temperature", "top_p", "top_k")  # used by sampling only: left out of a greedy config
DECODING = ("do_sample", *SAMPLING, "repetition_penalty", "no_repeat_ngram_size", "max_new_tokens")


def build(settings: Generation, tokenizer: Any, context: int | None = None) -> GenerationConfig:
    """The decoding ``settings`` with the tokenizer's special tokens and the KV cache on; ``max_new_tokens``
    no larger than ``context`` (the model's positions) when given. Unused or neutral flags are left unset,
    so transformers has nothing to warn about."""
    fields: dict[str, Any] = {"do_sample": settings.do_sample, "max_new_tokens": settings.max_new_tokens}
    if context:
        fields["max_new_tokens"] = min(settings.max_new_tokens, context)
    if settings.do_sample:
        fields.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    if settings.repetition_penalty != 1.0:
        fields["repetition_penalty"] = settings.repetition_penalty
    if settings.no_repeat_ngram_size:
        fields["no_repeat_ngram_size"] = settings.no_repeat_ngram_size
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(**fields, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=pad, use_cache=True)


def context_length(model: Any) -> int | None:
    """The positions the model was built for (``max_position_embeddings``), None when it does not say."""
    return getattr(model.config, "max_position_embeddings", None)


def save(folder: str | Path, settings: Generation, tokenizer: Any, context: int | None) -> GenerationConfig:
    """Write ``generation_config.json`` into a saved model ``folder`` (atomically) and return it."""
    config = build(settings, tokenizer, context)
    write_text(Path(folder) / FILE, config.to_json_string(use_diff=True))
    return config


def load(folder: str | Path) -> GenerationConfig | None:
    """The ``generation_config.json`` of a model folder, None when it has none."""
    file = Path(folder) / FILE
    if not file.is_file():
        return None
    try:
        return GenerationConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise LangliftError(f"{file}: not a valid generation config ({str(e).splitlines()[0]})") from None


def split_off(model: Any) -> GenerationConfig:
    """The model's decoding settings, removed from ``model.generation_config``: what remains (special tokens,
    suppressed tokens, the KV cache) applies to every ``generate`` call, metrics included."""
    answers = copy.deepcopy(model.generation_config)
    for key in DECODING:
        setattr(model.generation_config, key, None)
    model.generation_config.use_cache = True
    return answers


def budget(config: GenerationConfig, prompt_tokens: int, context: int | None) -> int:
    """New tokens allowed after a prompt of ``prompt_tokens``: ``max_new_tokens``, capped by the context."""
    wanted = config.max_new_tokens or 256  # a hub model's generation config may not set it
    return wanted if context is None else min(wanted, context - prompt_tokens)


def generate(model: Any, tokenizer: Any, messages: list[dict[str, str]], config: GenerationConfig, *,
             seed: int | None = None, streamer: Any = None, **overrides: Any) -> list[int]:
    """The new token ids answering ``messages`` (through the chat template) as ``config`` decodes, at most
    what the context leaves; ``seed`` makes sampling reproducible; ``overrides`` are GenerationConfig
    fields for this call (``min_new_tokens``…). Tokens go to ``streamer`` as they come."""
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True).to(model.device)
    prompt = enc["input_ids"].shape[1]
    context = context_length(model)
    allowed = budget(config, prompt, context)
    if allowed < 1:
        raise LangliftError(f"the prompt is {prompt} tokens and the model's context {context}: no room for an answer")
    call = copy.deepcopy(config)
    call.update(**overrides, max_new_tokens=allowed)
    if call.min_new_tokens:
        call.min_new_tokens = min(call.min_new_tokens, allowed)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**enc, generation_config=call, streamer=streamer)
    return out[0, prompt:].tolist()


def describe(config: GenerationConfig) -> str:
    """The decoding of ``config`` in a few words, for reports."""
    parts = [f"sampling (temperature {config.temperature}, top_p {config.top_p}, top_k {config.top_k})"
             if config.do_sample else "greedy"]
    if config.repetition_penalty not in (None, 1.0):
        parts.append(f"repetition penalty {config.repetition_penalty}")
    if config.no_repeat_ngram_size:
        parts.append(f"no repeated {config.no_repeat_ngram_size}-grams")
    return ", ".join(parts) + f", at most {config.max_new_tokens} new tokens"


def longest_run(ids: list[int]) -> int:
    """The most times one token follows itself in ``ids`` (1: no repeats; 0: empty)."""
    best = run = 0
    for i, token in enumerate(ids):
        run = run + 1 if i and token == ids[i - 1] else 1
        best = max(best, run)
    return best
