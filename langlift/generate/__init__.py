"""The generate stage: self-instruct instruction data in the target language from an OpenAI-compatible model.

- ``selfinstruct.py``: seeds, prompts and the generation loop;
- ``parse.py``: tolerant JSON extraction from replies;
- ``filters.py``: per-item filters (fields, length, blocked keywords, refusals, language);
- ``rouge.py``: ROUGE-L near-duplicate index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langlift import params as P
from langlift.errors import LangliftError
from langlift.generate.filters import Filters
from langlift.generate.selfinstruct import Config, Result, generate, load_seeds
from langlift.openai_client import ChatClient

__all__ = ["Config", "Filters", "Result", "from_params", "generate", "load_seeds"]


def from_params(params: dict[str, Any], path: str | Path = P.DEFAULT_PATH) -> tuple[Config, ChatClient, list, Filters]:
    """Everything a run needs, from a loaded params file whose ``generate.enabled`` is true."""
    cfg = P.section(params, "generate", path)
    language = P.section(params, "language", path)
    lang = language["code"]
    if not cfg.get("base_url"):
        raise LangliftError(f"{path}: generate.enabled is true but generate.base_url is empty: set it to an "
                            "OpenAI-compatible endpoint (e.g. https://api.openai.com/v1 or http://localhost:8000/v1)")
    prompts = cfg.get("prompts") or {}
    prompt = prompts.get(lang) or prompts.get("default")
    if not isinstance(prompt, dict) or not prompt.get("user"):
        raise LangliftError(f"{path}: generate.prompts needs a '{lang}' or 'default' entry with a 'user' template")
    budget, client_cfg = cfg.get("budget") or {}, cfg.get("client") or {}
    config = Config(
        model=cfg["model"], lang=lang, language=language.get("name", lang),
        system=prompt.get("system") or "", user=prompt["user"],
        prompt_version=str(cfg.get("prompt_version", "v1")),
        **{k: cfg[k] for k in ("target", "per_request", "seeds_per_prompt", "generated_per_prompt", "batch_size",
                               "temperature", "top_p", "max_tokens", "response_format", "rouge_threshold",
                               "removed_sample", "prices") if k in cfg},
        seed=int(params.get("seed", 0)),
    )
    client = ChatClient(
        cfg["base_url"], cfg["model"], api_key_env=cfg.get("api_key_env") or None,
        concurrency=int(client_cfg.get("concurrency", 4)),
        requests_per_minute=client_cfg.get("requests_per_minute"),
        max_retries=int(client_cfg.get("max_retries", 5)), timeout=float(client_cfg.get("timeout", 120)),
        cache_dir=cfg.get("cache_dir"), max_requests=budget.get("max_requests"), max_tokens=budget.get("max_tokens"),
    )
    filters = Filters.from_params(cfg.get("filters") or {}, lang)
    return config, client, load_seeds(cfg["seeds"]), filters
