"""The generate stage: self-instruct instruction data in the target language from an OpenAI-compatible model.

- ``selfinstruct.py``: seeds, prompts and the generation loop;
- ``parse.py``: tolerant JSON extraction from replies;
- ``filters.py``: per-item filters (fields, length, blocked keywords, refusals, language);
- ``rouge.py``: ROUGE-L near-duplicate index.
"""

from __future__ import annotations

from langlift import params as P
from langlift.generate.filters import Filters
from langlift.generate.selfinstruct import Config, Result, generate, load_seeds
from langlift.openai_client import ChatClient

__all__ = ["Config", "Filters", "Result", "from_params", "generate", "load_seeds"]


def from_params(params: P.Params) -> tuple[Config, ChatClient, list, Filters]:
    """Everything a run needs, from validated params whose ``generate.enabled`` is true."""
    cfg, lang = params.generate, params.language.code
    prompt = cfg.prompts.get(lang) or cfg.prompts["default"]
    config = Config(
        model=cfg.model, lang=lang, language=params.language.name, system=prompt.system, user=prompt.user,
        prompt_version=cfg.prompt_version, seed=params.seed, prices=cfg.prices.model_dump(),
        **cfg.model_dump(include={"target", "per_request", "seeds_per_prompt", "generated_per_prompt", "batch_size",
                                  "temperature", "top_p", "max_tokens", "response_format", "rouge_threshold",
                                  "removed_sample"}),
    )
    client = ChatClient(
        cfg.base_url, cfg.model, api_key_env=cfg.api_key_env or None, concurrency=cfg.client.concurrency,
        requests_per_minute=cfg.client.requests_per_minute, max_retries=cfg.client.max_retries,
        timeout=cfg.client.timeout, cache_dir=cfg.cache_dir, max_requests=cfg.budget.max_requests,
        max_tokens=cfg.budget.max_tokens,
    )
    return config, client, load_seeds(cfg.seeds), Filters.from_params(cfg.filters, lang)
