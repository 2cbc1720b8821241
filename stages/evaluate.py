"""Evaluate stage: base against fine-tuned on perplexity, translation, instruction answers, SIB-200 topic
classification and speed.

Writes metrics/evaluate.json (flat keys: base.*, finetuned.*, delta.*, and n.* / reliable.* per set),
metrics/evaluate_details.json (sacrebleu signatures, models, counts), metrics/evaluate_outputs/ (every
scored example, line-aligned for sacrebleu, and each model's answers to the review prompts in
<model>/review.jsonl), metrics/evaluate_plots/ and metrics/samples.md; with ``evaluate.judge.enabled``, an LLM
judge's judge.* metrics and metrics/evaluate_outputs/judge/ (docs/judge.md); with ``--entry NAME``, the same
for one ``finetune.matrix`` entry under metrics/matrix/NAME_*.
"""

from __future__ import annotations

import click

from langlift.cli import run_stage
from langlift.evaluate.runner import Outputs, evaluate, matrix_entry, summary
from langlift.params import load


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameters file.")
@click.option("--entry", default=None, help="Evaluate one finetune.matrix entry (models/matrix/NAME) instead.")
@run_stage
def main(params_path: str, entry: str | None) -> str:
    params = load(params_path)
    if entry is None:
        finetuned, base = params.evaluate.finetuned, params.base_model
    else:
        finetuned, base = f"models/matrix/{entry}", matrix_entry(params, entry).base_model
    outputs = Outputs.for_entry("metrics", entry)
    flat = evaluate(params, finetuned, outputs, expected_base=base)
    return summary(flat, params.language.code, outputs.metrics)


if __name__ == "__main__":
    main()
