"""The self-instruct loop: seed tasks → prompt → N new tasks as JSON → parse, filter, dedupe → repeat.

Each round sends ``batch_size`` requests at once. Request ``j`` of round ``r`` samples its examples with
``Random(f"{seed}:{r}:{j}")`` from the seeds and the most recently kept tasks, and replies are processed
in request order, so a run is a deterministic function of the params and the model's replies. As every
reply is cached, a rerun after a crash or a budget stop rebuilds the same prompts, reads the same replies
from disk for free, and continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from langlift import records
from langlift.errors import DataError, LangliftError
from langlift.generate.filters import Filters
from langlift.generate.parse import extract
from langlift.generate.rouge import RougeIndex
from langlift.io import read_jsonl
from langlift.openai_client import ApiError, BudgetExceeded, ChatClient, cache_key

log = logging.getLogger(__name__)

RECENT_POOL = 100   # generated examples are sampled from the last this-many kept tasks
STALL_ROUNDS = 5    # stop when this many rounds in a row keep nothing
TASKS_SCHEMA = {
    "type": "object",
    "properties": {"tasks": {"type": "array", "items": {
        "type": "object",
        "properties": {k: {"type": "string"} for k in ("instruction", "input", "output")},
        "required": ["instruction", "input", "output"], "additionalProperties": False}}},
    "required": ["tasks"], "additionalProperties": False,
}


def load_seeds(path: str | Path) -> list[dict[str, str]]:
    """Seed tasks as ``{id, instruction, input, output}``.

    Accepts Alpaca's ``seed_tasks.jsonl`` format (``{id, name, instruction, instances: [{input, output}],
    is_classification}``; the first instance is used, as Alpaca does) and the shared instruction schema.
    """
    path = Path(path)
    if not path.exists():
        raise LangliftError(f"{path}: seed tasks not found (set generate.seeds)")
    seeds = []
    for line, rec in read_jsonl(path):
        if "instances" in rec:
            inst = rec["instances"]
            if not isinstance(inst, list) or not inst or not isinstance(inst[0], dict):
                raise DataError(path, line, "instances", "expected a non-empty list of {input, output} objects")
            io = inst[0]
        else:
            io = rec
        task = {"instruction": rec.get("instruction"), "input": io.get("input") or "", "output": io.get("output")}
        for key, value in task.items():
            where = key if key == "instruction" or "instances" not in rec else f"instances[0].{key}"
            if not isinstance(value, str):
                raise DataError(path, line, where, "missing" if value is None else "expected a string")
            if key != "input" and not value.strip():
                raise DataError(path, line, where, "empty")
        sid = rec.get("id")
        if sid is not None and not isinstance(sid, (str, int)):
            raise DataError(path, line, "id", "expected a string")
        seeds.append({"id": str(sid) if sid is not None else records.record_id("instructions", task), **task})
    if not seeds:
        raise LangliftError(f"{path}: no seed tasks")
    return seeds


@dataclass
class Config:
    """The ``generate`` params a run needs, resolved for one language (validated by :mod:`langlift.params`)."""

    model: str
    lang: str
    language: str
    system: str
    user: str
    prompt_version: str
    target: int
    per_request: int
    seeds_per_prompt: int
    generated_per_prompt: int
    batch_size: int
    temperature: float
    top_p: float
    max_tokens: int
    response_format: str
    rouge_threshold: float
    seed: int
    removed_sample: int
    prices: dict[str, float]

    def request_params(self, response_format: str) -> dict[str, Any]:
        params: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        if response_format == "json_object":
            params["response_format"] = {"type": "json_object"}
        elif response_format == "json_schema":
            params["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": "tasks", "strict": True, "schema": TASKS_SCHEMA}}
        return params

    def messages(self, examples: list[dict[str, str]]) -> list[dict[str, str]]:
        """The chat messages of one request, showing ``examples``."""
        shown = "\n".join(json.dumps({k: ex[k] for k in ("instruction", "input", "output")}, ensure_ascii=False)
                          for ex in examples)
        values = {"{n}": str(self.per_request), "{language}": self.language, "{code}": self.lang,
                  "{examples}": shown}
        def fill(template: str) -> str:
            return re.sub("|".join(map(re.escape, values)), lambda m: values[m.group(0)], template)
        msgs = [{"role": "user", "content": fill(self.user)}]
        return ([{"role": "system", "content": fill(self.system)}] if self.system.strip() else []) + msgs


@dataclass
class Result:
    records: list[dict[str, Any]]
    removed: list[dict[str, Any]]    # a sample per reason, for inspection
    metrics: dict[str, Any]


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


class _Run:
    """State of one generation run (kept tasks, indexes, counters)."""

    def __init__(self, cfg: Config, client: ChatClient, seeds: list[dict[str, str]], filters: Filters):
        self.cfg, self.client, self.seeds, self.filters = cfg, client, seeds, filters
        self.kept: list[dict[str, Any]] = []
        self.index = RougeIndex(cfg.rouge_threshold)
        self.indexed: list[str] = []      # instruction texts by index position, for removal notes
        self.exact: set[str] = set()
        for s in seeds:                   # as in self-instruct: new tasks must differ from the seeds too
            self.index.add(s["instruction"])
            self.indexed.append(s["instruction"])
            self.exact.add(_norm(s["instruction"]))
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.removed: list[dict[str, Any]] = []
        self.sampled: Counter[str] = Counter()
        self.tokens = Counter()           # all replies used, cached or not
        self.format = cfg.response_format

    def _reject(self, reason: str, item: Any, **detail: Any) -> None:
        self.reasons[reason] += 1
        self._sample(reason, item, **detail)

    def _sample(self, reason: str, item: Any, **detail: Any) -> None:
        self.sampled[reason] += 1
        if self.sampled[reason] <= self.cfg.removed_sample:
            self.removed.append({"reason": reason, "item": item, **detail})

    def _requests(self, rnd: int, n: int) -> list[tuple[list[dict], dict, list[str]]]:
        cfg, out = self.cfg, []
        recent = self.kept[-RECENT_POOL:]
        for j in range(n):
            rng = random.Random(f"{cfg.seed}:{rnd}:{j}")
            # a sampling seed per request: reproducible where the server honours it, and two requests
            # that happen to show the same examples still get their own replies (and cache entries)
            params = {**cfg.request_params(self.format), "seed": rng.getrandbits(31)}
            seeds = rng.sample(self.seeds, min(cfg.seeds_per_prompt, len(self.seeds)))
            generated = rng.sample(recent, min(cfg.generated_per_prompt, len(recent)))
            out.append((cfg.messages(seeds + generated), params, [s["id"] for s in seeds]))
        return out

    def _take(self, text: str, seed_ids: list[str], key: str) -> int:
        """Parse, filter and dedupe one reply; returns how many tasks were kept."""
        cfg, parsed = self.cfg, extract(text)
        if not parsed.items:
            self.counts["unparseable_responses"] += 1
            self._sample("unparseable_response", text[:1000])
        self.reasons["malformed"] += parsed.malformed
        kept = 0
        for item in parsed.items:
            self.counts["parsed"] += 1
            task, reason = self.filters.check(item)
            if reason:
                self._reject(reason, item)
                continue
            norm = _norm(task["instruction"])
            if norm in self.exact:
                self._reject("duplicate", task)
                continue
            added, match, score = self.index.add_if_new(task["instruction"])
            if not added:
                self._reject("near_duplicate", task, similar_to=self.indexed[match], rouge_l=round(score, 4))
                continue
            self.indexed.append(task["instruction"])
            self.exact.add(norm)
            self.kept.append(records.make("instructions", "generate", **task, lang=cfg.lang, model=cfg.model,
                                          prompt_version=cfg.prompt_version, seed_ids=seed_ids,
                                          request_key=key))
            kept += 1
        return kept

    def _round(self, rnd: int) -> int:
        cfg = self.cfg
        need = cfg.target - len(self.kept)
        reqs = self._requests(rnd, min(cfg.batch_size, math.ceil(need / cfg.per_request)))
        try:
            replies = dict(self.client.complete_many((m, p) for m, p, _ in reqs))
        except ApiError as e:
            if self.format == "none" or e.status not in (400, 422) or self.counts["responses"]:
                raise
            log.warning("the endpoint rejected response_format=%s (%s); retrying without it, "
                        "parsing JSON from plain text", self.format, e)
            self.format = "none"
            return self._round(rnd)
        kept = 0
        for j, (messages, params, seed_ids) in enumerate(reqs):
            res = replies[j]
            self.counts["responses"] += 1
            self.counts["cached_responses"] += res.cached
            if (res.raw.get("choices") or [{}])[0].get("finish_reason") == "length":
                self.counts["truncated_responses"] += 1
            self.tokens["prompt"] += res.prompt_tokens
            self.tokens["completion"] += res.completion_tokens
            key = cache_key(self.client.base_url, self.client.model, messages, params)
            kept += self._take(res.text, seed_ids, key)
        return kept

    def run(self) -> Result:
        cfg, rnd, stalled = self.cfg, 0, 0
        bar = tqdm(total=cfg.target, desc="generate", unit="task")
        try:
            while len(self.kept) < cfg.target:
                try:
                    kept = self._round(rnd)
                except BudgetExceeded as e:
                    raise BudgetExceeded(f"{e}; {len(self.kept)}/{cfg.target} tasks kept so far") from None
                rnd += 1
                bar.update(min(kept, cfg.target - bar.n))
                usage = self.client.usage
                bar.set_postfix(requests=usage.requests, cached=usage.cache_hits,
                                cost=f"${self._cost(usage.prompt_tokens, usage.completion_tokens):.2f}")
                stalled = 0 if kept else stalled + 1
                if stalled >= STALL_ROUNDS:
                    raise LangliftError(
                        f"generate: {STALL_ROUNDS} rounds in a row kept no new task "
                        f"({len(self.kept)}/{cfg.target} kept; removals so far: {dict(self.reasons)}); "
                        "check the prompt, the model and the filters")
        finally:
            bar.close()
        over = len(self.kept) - cfg.target
        if over > 0:
            self.reasons["over_target"] += over
        return Result(self.kept[: cfg.target], self.removed, self._metrics(rnd))

    def _cost(self, prompt: int, completion: int) -> float:
        prices = self.cfg.prices
        return (prompt * float(prices.get("input_per_1m", 0))
                + completion * float(prices.get("output_per_1m", 0))) / 1e6

    def _metrics(self, rounds: int) -> dict[str, Any]:
        usage, kept = self.client.usage, min(len(self.kept), self.cfg.target)
        total_cost = self._cost(self.tokens["prompt"], self.tokens["completion"])
        return {
            "enabled": True,
            "kept": kept,
            "target": self.cfg.target,
            "parsed": self.counts["parsed"],
            "keep_rate": round(kept / self.counts["parsed"], 4) if self.counts["parsed"] else 0.0,
            "removed": dict(sorted(self.reasons.items())),
            "rounds": rounds,
            "responses": {k: self.counts[k] for k in
                          ("responses", "cached_responses", "truncated_responses", "unparseable_responses")},
            "http": usage.as_dict(),
            "tokens": {"prompt": self.tokens["prompt"], "completion": self.tokens["completion"]},
            "cost_usd": round(total_cost, 4),
            "cost_usd_this_run": round(self._cost(usage.prompt_tokens, usage.completion_tokens), 4),
            "cost_usd_per_1k_kept": round(1000 * total_cost / kept, 4) if kept else 0.0,
            "response_format": self.format,
            "model": self.cfg.model,
            "prompt_version": self.cfg.prompt_version,
        }


def generate(cfg: Config, client: ChatClient, seeds: list[dict[str, str]], filters: Filters) -> Result:
    """Run self-instruct until ``cfg.target`` tasks pass the filters and the ROUGE-L dedupe."""
    return _Run(cfg, client, seeds, filters).run()
