"""fetch: read the sources declared in params.yaml and write them as normalised JSONL with a manifest."""

from __future__ import annotations

import click

from langlift import params as P
from langlift.cli import run_stage
from langlift.errors import LangliftError
from langlift.fetch import fetch_all, summary, with_default_lang
from langlift.io import write_json, write_jsonl

OUTPUTS = {"instructions": "data/raw/instructions.jsonl", "corpus": "data/raw/corpus.jsonl",
           "parallel": "data/raw/parallel.jsonl"}
MANIFEST = "data/raw/manifest.json"


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Params file.")
@run_stage
def main(params_path: str) -> str:
    """Fetch every source in `fetch.sources` and normalise it to the record schemas."""
    params = P.load(params_path)
    if not params.fetch.sources:
        raise LangliftError(f"{params_path}: fetch.sources is empty")
    lang = params.language.code
    by_kind, manifest = fetch_all(with_default_lang(params.fetch.sources, lang), strict=params.fetch.strict)
    for kind, path in OUTPUTS.items():
        write_jsonl(path, by_kind[kind])
    write_json(MANIFEST, {"language": lang, "sources": manifest,
                          "totals": {kind: len(recs) for kind, recs in by_kind.items()}})
    return summary(by_kind, manifest)


if __name__ == "__main__":
    main()
