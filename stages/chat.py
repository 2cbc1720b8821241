"""chat: talk to a fine-tuned model in the terminal, its answer streamed token by token.

`python stages/chat.py --model models/finetuned` loads base + adapter as langlift.json says and answers as
the model's generation_config.json says (written from params' `generation` by finetune). Typed in a
terminal, the conversation goes through the chat template, oldest turns dropped when it outgrows the model's
context; `/reset` starts afresh, `/exit` (or Ctrl-D) quits. Piped, each line is a prompt answered on its own,
as if typed after `/reset`: `printf 'Salam!\\nAzərbaycanın paytaxtı haradır?\\n' | python stages/chat.py`.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import click

from langlift import generation  # langlift first: it sets OpenMP's wait policy before torch loads
from langlift.cli import run_stage
from langlift.errors import LangliftError
from langlift.evaluate.models import load_finetuned, read_manifest

RESET, EXIT = "/reset", "/exit"


def fit(tokenizer: Any, history: list[dict[str, str]], prompt: str, limit: int | None) -> list[dict[str, str]]:
    """``history`` plus the user's ``prompt``, without its oldest turns while the templated conversation is
    longer than ``limit`` tokens (None: no limit). The prompt itself is always kept."""
    messages = [*history, {"role": "user", "content": prompt}]
    while limit is not None and len(messages) > 1 and _tokens(tokenizer, messages) > limit:
        messages = messages[2:]  # one user turn and its answer
    return messages


def _tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"])


def decoding(saved: Any, max_new_tokens: int | None, temperature: float | None) -> Any:
    """The model's saved GenerationConfig with the command line's overrides (temperature 0: greedy)."""
    config = copy.deepcopy(saved)
    if max_new_tokens is not None:
        config.max_new_tokens = max_new_tokens
    if temperature == 0:
        config.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    elif temperature is not None:
        config.update(do_sample=True, temperature=temperature)
    return config


@click.command()
@click.option("--model", "model_dir", default="models/finetuned", show_default=True, help="Fine-tuned model folder.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Longest answer, in tokens (default: the model's generation_config.json; always capped by "
                   "what the context leaves).")
@click.option("--temperature", type=click.FloatRange(min=0), default=None,
              help="0: greedy; above 0: sampling at this temperature (default: the model's generation_config.json).")
@click.option("--seed", type=int, default=None, help="Sampling seed, set at the start and at /reset "
              "(default: generation.seed when the model was fine-tuned).")
@click.option("--device", default=None, help="cpu | cuda (default: cuda when available).")
@run_stage
def main(model_dir: str, max_new_tokens: int | None, temperature: float | None, seed: int | None,
         device: str | None) -> None:
    """Chat with a fine-tuned model from the terminal or stdin."""
    import torch
    from transformers import TextStreamer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    seed = seed if seed is not None else int(read_manifest(model_dir).get("generation_seed") or 0)
    loaded = load_finetuned(model_dir, device, dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    config = decoding(loaded.generation, max_new_tokens, temperature)
    context = generation.context_length(model)
    # the conversation keeps at least this much of the context free for the answer
    limit = None if context is None else context - min(config.max_new_tokens or context // 2, context // 2)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"{loaded.info['method']} fine-tune of {loaded.info['base_model']}; {generation.describe(config)}."
                   f"\n{RESET} forgets the conversation, {EXIT} or Ctrl-D quits.", err=True)
    history: list[dict[str, str]] = []
    torch.manual_seed(seed)
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        prompt = line.strip()
        if not line or prompt == EXIT:
            break
        if prompt == RESET or not interactive:  # a script's prompts do not depend on each other
            history = []
            torch.manual_seed(seed)
        if prompt == RESET:
            click.echo("(conversation reset)", err=True)
        elif prompt:
            messages = fit(tokenizer, history, prompt, limit)
            try:
                ids = generation.generate(model, tokenizer, messages, config, streamer=streamer)
            except LangliftError as e:  # a prompt too long for the context: say so, keep chatting
                click.echo(f"error: {e}", err=True)
                continue
            answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
            history = [*messages, {"role": "assistant", "content": answer}]


if __name__ == "__main__":
    main()
