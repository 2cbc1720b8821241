"""fetch: read the sources declared in params.yaml and write them as normalised JSONL with a manifest."""

from __future__ import annotations

import click

from langlift import params as P
from langlift.cli import run_stage
from langlift.errors import LangliftError
from langlift.fetch import Source, fetch_all
from langlift.io import write_json, write_jsonl

OUTPUTS = {"instructions": "data/raw/instructions.jsonl", "corpus": "data/raw/corpus.jsonl",
           "parallel": "data/raw/parallel.jsonl"}
MANIFEST = "data/raw/manifest.json"


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Params file.")
@run_stage
def main(params_path: str) -> None:
    """Fetch every source in `fetch.sources` and normalise it to the record schemas."""
    params = P.load(params_path).model_dump()  # TODO(lead): typed
    cfg = params["fetch"]
    lang = params["language"]["code"]
    sources = [Source.from_params({k: v for k, v in spec.items() if v != Source.__dataclass_fields__[k].default}, lang)
               for spec in cfg["sources"]]
    if not sources:
        raise LangliftError(f"{params_path}: fetch.sources is empty")
    by_kind, manifest = fetch_all(sources, strict=bool(cfg.get("strict", True)))
    for kind, path in OUTPUTS.items():
        write_jsonl(path, by_kind[kind])
    write_json(MANIFEST, {"language": lang, "sources": manifest,
                          "totals": {kind: len(recs) for kind, recs in by_kind.items()}})
    click.echo(" ".join(f"{kind}={len(recs)}" for kind, recs in by_kind.items()))


if __name__ == "__main__":
    main()
