"""review: native speakers judge base against fine-tuned answers in a local web page (`serve`), and the
judgements are folded into metrics/human.json and data/review/corrections.jsonl (`fold`, the dvc stage).

    python stages/review.py serve --reviewer NAME [--port 8765]
    python stages/review.py fold
"""

from __future__ import annotations

from pathlib import Path

import click

from langlift import params as P
from langlift.cli import run_stage
from langlift.errors import LangliftError
from langlift.review.fold import fold_files
from langlift.review.pairs import load_pairs, output_dirs
from langlift.review.store import REVIEW_DIR, log_path

PARAMS = click.option("--params", "params_path", default="params.yaml", show_default=True, help="Params file.")
REVIEWS = click.option("--reviews", default=str(REVIEW_DIR), show_default=True, type=click.Path(path_type=Path),
                       help="Folder of the reviewers' files.")
METRICS = click.option("--metrics", "metrics_dir", default="metrics", show_default=True,
                       type=click.Path(path_type=Path), help="Folder of the evaluate outputs and human.json.")


@click.group()
def main() -> None:
    """Native-speaker review of the evaluate stage's answers."""


@main.command()
@click.option("--reviewer", required=True, help="Your name: your judgements go to data/review/NAME.jsonl.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port on 127.0.0.1.")
@PARAMS
@REVIEWS
@METRICS
@run_stage
def serve(reviewer: str, port: int, params_path: str, reviews: Path, metrics_dir: Path) -> None:
    """Start the review page on http://127.0.0.1:PORT/ (Ctrl-C stops it; every click is already saved)."""
    from werkzeug.serving import make_server

    from langlift.review.app import create_app
    from langlift.review.store import ReviewLog

    params = P.load(params_path)
    path = log_path(reviewer, reviews)
    pairs = load_pairs(output_dirs(metrics_dir, [e.name for e in params.finetune.matrix]))
    if not pairs:
        raise LangliftError(f"no review pairs: {metrics_dir}/evaluate_outputs/{{base,finetuned}}/review.jsonl "
                            "not found (run the evaluate stage first)")
    app = create_app(pairs, ReviewLog(path), reviewer, params.seed, params.language)
    server = make_server("127.0.0.1", port, app, threaded=True)  # a port in use: werkzeug says so and exits
    click.echo(f"reviewing {len(pairs)} pairs as {reviewer}: open http://127.0.0.1:{server.server_port}/ "
               f"(saved to {path}; Ctrl-C stops)")
    server.serve_forever()


@main.command()
@PARAMS
@REVIEWS
@METRICS
@run_stage
def fold(params_path: str, reviews: Path, metrics_dir: Path) -> str:
    """Write metrics/human.json (win rate, agreement) and data/review/corrections.jsonl."""
    params = P.load(params_path)
    metrics = fold_files(reviews, metrics_dir, [e.name for e in params.finetune.matrix], params.language.code,
                         metrics_dir / "human.json", reviews / "corrections.jsonl")
    rate = f", win rate {metrics['win_rate']:.3f}" if "win_rate" in metrics else ""
    return f"{metrics['judgements']} judgements by {metrics['reviewers']} reviewers ({metrics['stale']} stale){rate}"


if __name__ == "__main__":
    main()
