"""What every translation backend provides to the pipeline."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from langlift.modelref import ModelRef


def short_hash(obj: Any) -> str:
    """An 8-hex-digit digest of a JSON-able object (settings fingerprints, prompt versions)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:8]


class Backend:
    """A translator of English segments into the target language.

    ``translate`` returns one translation per text, or ``None`` for a miss (the next backend in the
    chain gets it). ``settings`` holds everything that changes the output (generation settings, the
    prompt): it makes the cache fingerprint, and :meth:`variant` overrides it for quality retries.
    """

    name: str = ""
    masked: bool = True       # receives texts with protected spans replaced by mask tokens
    cached: bool = True       # its translations go into the segment cache
    chunk_size: int = 16      # texts per translate() call; the cache is committed after each call

    def __init__(self, model: str, settings: dict[str, Any]):
        self.model = model
        self.settings = dict(settings)
        self.refs: dict[str, ModelRef] = {}   # param name -> what the model files are (model backends)

    @property
    def fingerprint(self) -> str:
        return short_hash(self.settings)

    @property
    def identity(self) -> str:
        """The model as cache keys name it: the content/revision fingerprints of its files, else its name."""
        return " + ".join(r.fingerprint for r in self.refs.values()) or self.model

    @property
    def prompt_version(self) -> str | None:
        """A digest of the prompt for prompted backends (``None`` otherwise)."""
        return None

    def translate(self, texts: list[str]) -> list[str | None]:
        raise NotImplementedError

    def variant(self, overrides: dict[str, Any]) -> Backend:
        """A copy with ``overrides`` applied to ``settings``, sharing the loaded model."""
        unknown = sorted(set(overrides) - set(self.settings))
        if unknown:
            from langlift.errors import LangliftError
            raise LangliftError(f"translate.quality.retry: {unknown} are not settings of the {self.name} backend "
                                f"(it has {sorted(self.settings)})")
        other = copy.copy(self)
        other.settings = {**self.settings, **overrides}
        return other

    def usage(self) -> dict[str, Any] | None:
        """Request and token counters for metrics (API backends)."""
        return None

    def close(self) -> None:
        """Release models, threads or connections."""


class PromptedBackend(Backend):
    """A backend that asks a chat model to translate, one user message per segment."""

    def __init__(self, model: str, template: str, language: dict[str, str], settings: dict[str, Any]):
        if "{text}" not in template:
            from langlift.errors import LangliftError
            raise LangliftError(f"translate.prompts: the prompt for {language['code']} must contain '{{text}}'")
        super().__init__(model, {"prompt": template.replace("{name}", language["name"]), **settings})

    @property
    def prompt_version(self) -> str:
        return f"p{short_hash(self.settings['prompt'])}"

    def messages(self, text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.settings["prompt"].replace("{text}", text)}]

    @staticmethod
    def clean(source: str, reply: str) -> str:
        """The translation in a reply: stripped, and cut at the first blank line for one-line sources."""
        reply = reply.strip()
        if "\n" not in source:
            reply = reply.split("\n\n", 1)[0].strip()
        return reply
