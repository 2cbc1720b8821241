"""generate: self-instruct instruction data in the target language from an OpenAI-compatible endpoint.

Off by default (``generate.enabled: false``): the stage then writes empty outputs and says so, so the
default pipeline never needs an endpoint or a key and downstream stages see no generated records.
"""

from __future__ import annotations

import logging

import click

from langlift import params as P
from langlift.cli import run_stage
from langlift.generate import from_params, generate
from langlift.io import write_json, write_jsonl

OUT = "data/generated/instructions.jsonl"
REMOVED = "data/generated/removed.jsonl"
METRICS = "metrics/generate.json"

log = logging.getLogger("langlift.generate")


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Params file.")
@run_stage
def main(params_path: str) -> str:
    """Generate, filter and deduplicate instruction tasks until `generate.target` are kept."""
    params = P.load(params_path)
    if not params.generate.enabled:
        log.info("generation is disabled (generate.enabled: false): writing an empty %s. "
                 "To generate, set generate.enabled: true and generate.base_url in %s", OUT, params_path)
        write_jsonl(OUT, [])
        write_jsonl(REMOVED, [])
        write_json(METRICS, {"enabled": False, "kept": 0})
        return "disabled (generate.enabled: false): 0 records"
    config, client, seeds, filters = from_params(params)
    log.info("generating %d tasks in %s with %s at %s (%d seed tasks)",
             config.target, config.language, config.model, client.base_url, len(seeds))
    result = generate(config, client, seeds, filters)
    write_jsonl(OUT, result.records)
    write_jsonl(REMOVED, result.removed)
    write_json(METRICS, result.metrics)
    m = result.metrics
    log.info("kept %d of %d parsed tasks; removed %s; %d requests sent, %d cached; tokens %s; cost $%.4f "
             "(this run $%.4f)", m["kept"], m["parsed"], m["removed"], m["http"]["requests"],
             m["http"]["cache_hits"], m["tokens"], m["cost_usd"], m["cost_usd_this_run"])
    return f"{m['kept']} records -> {OUT} (cost ${m['cost_usd_this_run']:.4f} this run)"


if __name__ == "__main__":
    main()
