"""chat: talk to a fine-tuned model in the terminal, its answer streamed token by token.

`python stages/chat.py --model models/finetuned` loads base + adapter as langlift.json says. From a
terminal it prompts interactively (empty line or Ctrl-D quits); otherwise each stdin line is a prompt:
`echo "Azərbaycanın paytaxtı haradır?" | python stages/chat.py`.
"""

from __future__ import annotations

import sys

import click

from langlift import finetune as F  # langlift first: it sets OpenMP's wait policy before torch loads
from langlift.cli import run_stage
from langlift.evaluate.models import load_finetuned


@click.command()
@click.option("--model", "model_dir", default="models/finetuned", show_default=True, help="Fine-tuned model folder.")
@click.option("--max-new-tokens", default=256, show_default=True, help="Longest answer, in tokens.")
@click.option("--temperature", default=0.0, show_default=True, help="0: greedy; above 0: sampling.")
@click.option("--device", default=None, help="cpu | cuda (default: cuda when available).")
@run_stage
def main(model_dir: str, max_new_tokens: int, temperature: float, device: str | None) -> None:
    """Answer prompts from the terminal or stdin with a fine-tuned model."""
    import torch
    from transformers import TextStreamer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    loaded = load_finetuned(model_dir, device, dtype)
    model, tokenizer, info = loaded.model, loaded.tokenizer, loaded.info
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"{info['method']} fine-tune of {info['base_model']}; empty line or Ctrl-D quits.", err=True)
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line or (interactive and not line.strip()):
            break
        if line.strip():
            F.respond(model, tokenizer, line.strip(), max_new_tokens=max_new_tokens, temperature=temperature,
                      streamer=streamer)


if __name__ == "__main__":
    main()
