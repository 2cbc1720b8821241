"""export: publish a fine-tuned model — to the Hugging Face hub, or as GGUF for llama.cpp / Ollama.

Not a DVC stage: it publishes what the pipeline built. Run it after `dvc repro` (the model card carries the
evaluate stage's metrics and the dvc.lock hashes):

    HF_TOKEN=hf_... python stages/export.py --to hub --repo-id ORG/NAME --merge [--dataset-repo-id ORG/NAME-data]
    python stages/export.py --to gguf --out models/gguf --quant f16 --quant q8_0

`--to hub` uploads the adapter (a hub base model only) or, with `--merge`, the model merged into its base, the
tokenizer with an inference chat template, the generation config and the model card; `--dataset-repo-id` also
uploads the split instruction data with a dataset card. The token is read from HF_TOKEN only; HF_ENDPOINT
chooses another hub. `--dry-run --out DIR` writes the folders without uploading.
"""

from __future__ import annotations

from pathlib import Path

import click

from langlift import params as P
from langlift.cli import run_stage
from langlift.errors import LangliftError


@click.command()
@click.option("--to", "target", type=click.Choice(["hub", "gguf"]), required=True, help="Where to export.")
@click.option("--model", "model_dir", default="models/finetuned", show_default=True,
              help="Fine-tuned model folder (finetune's output, or models/matrix/NAME).")
@click.option("--repo-id", default=None, help="hub: the model repository, ORG/NAME.")
@click.option("--merge", is_flag=True, help="hub: merge the adapter into its base (peft merge_and_unload) and upload "
              "the standalone model; needed when the base was trained here (models/base).")
@click.option("--dataset-repo-id", default=None, help="hub: also upload the split instruction data, with a dataset "
              "card, to this dataset repository.")
@click.option("--private", is_flag=True, help="hub: create the repositories private.")
@click.option("--dry-run", is_flag=True, help="hub: build the folders (into --out) and upload nothing.")
@click.option("--out", default=None, help="gguf: output folder (default models/gguf); hub: keep the staged folders here.")
@click.option("--quant", "quants", multiple=True, default=("f16",), show_default=True,
              help="gguf: f16, q8_0 or f32; repeat for several files.")
@click.option("--evaluate-metrics", default="metrics/evaluate.json", show_default=True,
              help="hub: the evaluate stage's metrics for the card (metrics/matrix/... for a matrix entry).")
@click.option("--finetune-metrics", default="metrics/finetune.json", show_default=True,
              help="hub: the finetune stage's metrics for the card.")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Params file.")
@run_stage
def main(target: str, model_dir: str, repo_id: str | None, merge: bool, dataset_repo_id: str | None, private: bool,
         dry_run: bool, out: str | None, quants: tuple[str, ...], evaluate_metrics: str, finetune_metrics: str,
         params_path: str) -> None:
    """Export the fine-tuned model to the hub or to GGUF."""
    if not Path(model_dir).is_dir():
        raise LangliftError(f"{model_dir}: no such model folder (run `dvc repro` first)")
    if target == "gguf":
        from langlift.export import gguf

        for path in gguf.export(model_dir, Path(out or "models/gguf"), quants):
            click.echo(path)
        return
    if not repo_id:
        raise LangliftError("--to hub needs --repo-id ORG/NAME")
    if dry_run and not out:
        raise LangliftError("--dry-run needs --out DIR to write the folders into")
    from langlift.export import card, hub

    project = card.Project(evaluate=Path(evaluate_metrics), finetune=Path(finetune_metrics))
    staged = hub.export(model_dir, P.load(params_path), repo_id=repo_id, merge=merge, dataset_repo_id=dataset_repo_id,
                        private=private, out=Path(out) if out else None, dry_run=dry_run, project=project)
    if dry_run:
        click.echo(staged.model)
        if staged.dataset:
            click.echo(staged.dataset)


if __name__ == "__main__":
    main()
