"""An LLM judge of the models' answers, through any OpenAI-compatible endpoint (``evaluate.judge``).

Three modes, each over the review prompts and the instruction test split (``judge.sets``):

- ``pairwise``: every pair of models on every question, asked twice with the answers' order swapped;
  the two verdicts combine into one (agreeing verdicts stand, disagreeing ones are a tie, one unparseable
  verdict leaves the other); the win rate counts a tie as half a win, with a 95% Wilson score interval;
- ``score``: each answer rated 1-10 on the language's rubric (fluency in the language, correctness,
  following the request, the right language and script);
- ``reference``: the judge model writes a reference answer to each question once (cached; its prompt is
  part of the cache key, so a new prompt means new references), and each model's answers are scored
  against them with chrF++ and token F1.

Every request goes through :class:`~langlift.openai_client.ChatClient` with an on-disk cache, so a rerun
costs nothing. Replies are parsed leniently and unparseable ones are counted, never fatal. When the
budget runs out, the metrics cover what was judged and ``judge.complete`` is 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langlift.evaluate import metrics
from langlift.io import write_jsonl
from langlift.openai_client import BudgetExceeded, ChatClient
from langlift.params import Judge, Language
from langlift.stats import wilson

log = logging.getLogger(__name__)

_VERDICT = re.compile(r"verdict\W{0,6}(a|b|tie)\b", re.IGNORECASE)
_SCORE = re.compile(r"(?:score|rating)\W{0,6}(\d+(?:\.\d+)?)", re.IGNORECASE)
_BARE_SCORE = re.compile(r"^\W*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\W*$")
_FIELD = re.compile(r"\{(name|script|rubric|question|answer|answer_a|answer_b)\}")


@dataclass(frozen=True)
class Item:
    """One question the models answered: which set it is from, its id and its text."""

    set: str
    id: str
    question: str


@dataclass
class Outcome:
    """What the judge said: flat metrics and the rows of the files it writes."""

    metrics: dict[str, Any]
    pairwise: list[dict[str, Any]] = field(default_factory=list)     # {set, id, models, verdict}, combined
    judgements: list[dict[str, Any]] = field(default_factory=list)   # every request and its parsed reply
    references: list[dict[str, Any]] = field(default_factory=list)


def fill(template: str, **values: str) -> str:
    """``template`` with its ``{name}``-style fields replaced in one pass (answers may hold braces)."""
    return _FIELD.sub(lambda m: values.get(m[1], m[0]), template)


def parse_verdict(reply: str) -> str | None:
    """``"A"``, ``"B"`` or ``"tie"`` from a judge's reply (its last ``Verdict:`` line, or a bare answer)."""
    found = _VERDICT.findall(reply)
    word = found[-1] if found else reply.strip().strip("[]*.'\"` ")
    word = word.lower()
    return {"a": "A", "b": "B", "tie": "tie"}.get(word)


def parse_score(reply: str) -> float | None:
    """A 1-10 score from a judge's reply (its last ``Score:``, or a bare number); ``None`` if there is none."""
    found = _SCORE.findall(reply)
    bare = _BARE_SCORE.match(reply)
    value = float(found[-1]) if found else float(bare[1]) if bare else None
    return value if value is not None and 1 <= value <= 10 else None


_PARSERS = {"reference": lambda text: text.strip() or None, "score": parse_score, "pairwise": parse_verdict}


def combine(first: str | None, second: str | None, a: str, b: str) -> str | None:
    """The verdict on models ``a`` and ``b`` from two judgements: ``first`` with ``a``'s answer as A,
    ``second`` with ``b``'s as A. Disagreement (position bias) is a tie; ``None`` when neither parsed."""
    votes = [v for v in ({"A": a, "B": b, "tie": "tie"}.get(first or ""),
                         {"A": b, "B": a, "tie": "tie"}.get(second or "")) if v]
    if not votes:
        return None
    return votes[0] if len(set(votes)) == 1 else "tie"


def client_for(cfg: Judge) -> ChatClient:
    """The judge's client: its endpoint, key variable, limits, budget and cache from ``evaluate.judge``."""
    return ChatClient(cfg.base_url, cfg.model, api_key_env=cfg.api_key_env or None,
                      concurrency=cfg.client.concurrency, requests_per_minute=cfg.client.requests_per_minute,
                      max_retries=cfg.client.max_retries, timeout=cfg.client.timeout, cache_dir=cfg.cache_dir,
                      max_requests=cfg.budget.max_requests, max_tokens=cfg.budget.max_tokens)


class LLMJudge:
    """Judges answers of several models to the same items (see the module docstring)."""

    def __init__(self, cfg: Judge, language: Language, client: ChatClient):
        self.cfg, self.language, self.client = cfg, language, client
        rubric = fill(cfg.rubric, name=language.name, script=language.script)
        self.prompts = {k: fill(v, name=language.name, script=language.script, rubric=rubric)
                        for k, v in cfg.prompts.model_dump().items()}
        self.params = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}

    @property
    def prompt_version(self) -> str:
        """A digest of the filled-in prompts and rubric: judgements are comparable only at equal versions."""
        return "j" + _digest(self.prompts)

    @property
    def reference_version(self) -> str:
        """A digest of the reference prompt and the judge model: which reference answers these are."""
        return "r" + _digest([self.prompts["reference"], self.cfg.model])

    def _plan(self, items: list[Item], answers: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
        """Every request to make, item by item (a spent budget leaves the first items judged)."""
        names, plan = list(answers), []
        modes = self.cfg.modes
        for item in items:
            key, q = f"{item.set}/{item.id}", item.question
            if "reference" in modes:
                plan.append({"kind": "reference", "item": item, "prompt": fill(self.prompts["reference"], question=q)})
            for model in names if "score" in modes else []:
                plan.append({"kind": "score", "item": item, "models": [model],
                             "prompt": fill(self.prompts["score"], question=q, answer=answers[model][key])})
            pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]] if "pairwise" in modes else []
            for a, b in pairs:
                if answers[a][key].strip() == answers[b][key].strip():
                    continue  # the same answer: a tie, nothing to ask
                for first, second in ((a, b), (b, a)):
                    plan.append({"kind": "pairwise", "item": item, "models": [first, second],
                                 "prompt": fill(self.prompts["pairwise"], question=q, answer_a=answers[first][key],
                                                answer_b=answers[second][key])})
        return plan

    def _ask(self, plan: list[dict[str, Any]]) -> tuple[dict[int, Any], bool]:
        """The replies to ``plan`` (index -> ChatResult) and whether every request was answered."""
        replies: dict[int, Any] = {}
        requests = (([{"role": "user", "content": p["prompt"]}], self.params) for p in plan)
        try:
            for i, result in self.client.complete_many(requests):
                replies[i] = result
        except BudgetExceeded as e:
            log.warning("judge: %s; metrics cover the %d of %d judgements made (judge.complete = 0)",
                        e, len(replies), len(plan))
            return replies, False
        return replies, True

    def judge(self, items: list[Item], answers: dict[str, dict[str, str]]) -> Outcome:
        """Judge every model's answer (``answers[model]["<set>/<id>"]``) to every item."""
        plan = self._plan(items, answers)
        log.info("judge: %d requests to %s (%s) for %d items and %d models, prompts %s",
                 len(plan), self.cfg.model, ", ".join(self.cfg.modes), len(items), len(answers), self.prompt_version)
        replies, complete = self._ask(plan)
        out = Outcome(metrics={})
        unparsed = Counter()
        parsed: dict[tuple[str, str, tuple[str, ...]], Any] = {}
        for i, p in enumerate(plan):
            item, result = p["item"], replies.get(i)
            if result is None:
                continue
            value = _PARSERS[p["kind"]](result.text)
            unparsed[p["kind"]] += value is None
            parsed[(p["kind"], f"{item.set}/{item.id}", tuple(p.get("models", ())))] = value
            row = {"kind": p["kind"], "set": item.set, "id": item.id, "models": p.get("models"),
                   "reply": result.text, "parsed": value}
            out.judgements.append({k: v for k, v in row.items() if v is not None or k == "parsed"})
        names = list(answers)
        m = out.metrics
        m.update(self._pairwise(items, answers, parsed, out) if "pairwise" in self.cfg.modes else {})
        m.update(self._scores(items, names, parsed) if "score" in self.cfg.modes else {})
        m.update(self._references(items, answers, parsed, out) if "reference" in self.cfg.modes else {})
        m.update(self._cost(replies, len(plan), unparsed, complete))
        return out

    def _pairwise(self, items: list[Item], answers: dict[str, dict[str, str]], parsed: dict, out: Outcome
                  ) -> dict[str, float]:
        """Combined verdicts per pair of models; the win rate of the later model (``finetuned``) in each pair."""
        names, flat = list(answers), {}
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                tally: dict[str, Counter] = {"": Counter()}
                for item in items:
                    key = f"{item.set}/{item.id}"
                    first, second = (parsed.get(("pairwise", key, order)) for order in ((a, b), (b, a)))
                    same = answers[a][key].strip() == answers[b][key].strip()
                    verdict = "tie" if same else combine(first, second, a, b)
                    if first and second:  # both orders parsed: did they name the same model?
                        tally[""]["both_parsed"] += 1
                        tally[""]["consistent"] += combine(first, None, a, b) == combine(None, second, a, b)
                    if verdict is None:
                        continue
                    out.pairwise.append({"set": item.set, "id": item.id, "models": [a, b], "verdict": verdict})
                    outcome = "wins" if verdict == b else "losses" if verdict == a else "ties"
                    for group in ("", item.set):
                        tally.setdefault(group, Counter())[outcome] += 1
                prefix = "judge" if (a, b) == ("base", "finetuned") else f"judge.{b}_vs_{a}"
                flat.update(_win_rates(prefix, tally))
        return flat

    def _scores(self, items: list[Item], names: list[str], parsed: dict) -> dict[str, float]:
        """The mean 1-10 score of each model's parsed scores (and ``delta`` = finetuned - base)."""
        flat: dict[str, float] = {}
        for model in names:
            values = [v for item in items if (v := parsed.get(("score", f"{item.set}/{item.id}", (model,))))]
            if values:
                flat[f"judge.score.{model}"] = round(sum(values) / len(values), 4)
        if "judge.score.base" in flat and "judge.score.finetuned" in flat:
            flat["judge.score.delta"] = round(flat["judge.score.finetuned"] - flat["judge.score.base"], 4)
        return flat

    def _references(self, items: list[Item], answers: dict[str, dict[str, str]], parsed: dict, out: Outcome
                    ) -> dict[str, float]:
        """chrF++ (corpus) and token F1 (mean, percent) of each model against the judge's reference answers."""
        refs = {f"{i.set}/{i.id}": r for i in items if (r := parsed.get(("reference", f"{i.set}/{i.id}", ())))}
        out.references = [{"set": i.set, "id": i.id, "reference": refs[f"{i.set}/{i.id}"],
                           "version": self.reference_version} for i in items if f"{i.set}/{i.id}" in refs]
        if not refs:
            return {}
        flat: dict[str, float] = {"judge.ref.n": len(refs)}
        lang = self.language.code
        for model, by_key in answers.items():
            hyps, gold = [metrics.one_line(by_key[k]) for k in refs], [metrics.one_line(r) for r in refs.values()]
            flat[f"judge.ref.chrf.{model}"] = round(metrics.chrf_pp().corpus_score(hyps, [gold]).score, 4)
            f1 = sum(metrics.token_f1(h, r, lang) for h, r in zip(hyps, gold)) / len(gold)
            flat[f"judge.ref.f1.{model}"] = round(100 * f1, 4)
        return flat

    def _cost(self, replies: dict[int, Any], planned: int, unparsed: Counter, complete: bool) -> dict[str, Any]:
        """What the judgement cost: requests sent this run, and the tokens of every judgement (cached ones too,
        so the figure is the judgement's cost, the same on a rerun)."""
        usage = self.client.usage
        return {
            "judge.calls": planned,
            "judge.requests": usage.requests,
            "judge.cache_hits": usage.cache_hits,
            "judge.prompt_tokens": sum(r.prompt_tokens for r in replies.values()),
            "judge.completion_tokens": sum(r.completion_tokens for r in replies.values()),
            "judge.unparsed": sum(unparsed.values()),
            **{f"judge.unparsed.{kind}": n for kind, n in sorted(unparsed.items())},
            "judge.complete": int(complete),
            "judge.prompt_version": self.prompt_version,
        }


def _win_rates(prefix: str, tally: dict[str, Counter]) -> dict[str, float]:
    """``<prefix>.win_rate`` with its interval, counts and consistency; ``<prefix>.win_rate.<set>`` per set."""
    flat: dict[str, float] = {}
    for group, c in tally.items():
        n = c["wins"] + c["losses"] + c["ties"]
        if n == 0:
            continue
        rate = (c["wins"] + 0.5 * c["ties"]) / n
        if group:
            flat[f"{prefix}.win_rate.{group}"] = round(rate, 4)
            continue
        low, high = wilson(c["wins"] + 0.5 * c["ties"], n)
        flat.update({f"{prefix}.win_rate": round(rate, 4), f"{prefix}.win_rate.ci_low": round(low, 4),
                     f"{prefix}.win_rate.ci_high": round(high, 4), f"{prefix}.wins": c["wins"],
                     f"{prefix}.losses": c["losses"], f"{prefix}.ties": c["ties"], f"{prefix}.n": n})
        if c["both_parsed"]:
            flat[f"{prefix}.consistency"] = round(c["consistent"] / c["both_parsed"], 4)
    return flat


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:8]


def write(folder: str | Path, outcome: Outcome) -> None:
    """``pairwise.jsonl`` (the review prompts' combined verdicts: ``{id, models, verdict}``, the review page's
    contract), ``pairwise_all.jsonl`` (every set), ``judgements.jsonl`` and ``references.jsonl``."""
    folder = Path(folder)
    review = [{"id": r["id"], "models": r["models"], "verdict": r["verdict"]}
              for r in outcome.pairwise if r["set"] == "prompts"]
    write_jsonl(folder / "pairwise.jsonl", review)
    write_jsonl(folder / "pairwise_all.jsonl", outcome.pairwise)
    write_jsonl(folder / "judgements.jsonl", outcome.judgements)
    write_jsonl(folder / "references.jsonl", outcome.references)


def run(cfg: Judge, language: Language, items: list[Item], answers: dict[str, dict[str, str]],
        folder: str | Path) -> dict[str, Any]:
    """Judge ``answers`` to ``items`` with the endpoint of ``cfg``, write the files into ``folder``, and
    return the flat ``judge.*`` metrics."""
    outcome = LLMJudge(cfg, language, client_for(cfg)).judge(items, answers)
    write(folder, outcome)
    return outcome.metrics
