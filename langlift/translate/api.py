"""The ``api`` backend: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, Ollama).

Requests go through the shared :class:`langlift.openai_client.ChatClient` (the openai package's client
underneath): bounded concurrency, a token-bucket rate limit, retries with backoff on
429/5xx/timeouts/malformed bodies, request and token caps, and the key read only from the environment
variable named in params. Its one cache is the translate stage's segment cache (``translate.cache``),
committed after every chunk of ``4 * concurrency`` segments; the client keeps no reply cache of its own.
"""

from __future__ import annotations

from typing import Any

from langlift.openai_client import ChatClient
from langlift.translate.base import PromptedBackend


class ApiBackend(PromptedBackend):
    name = "api"

    def __init__(self, template: str, language: dict[str, str], *, base_url: str, model: str,
                 api_key_env: str | None = "OPENAI_API_KEY", concurrency: int = 8,
                 requests_per_minute: float | None = None, max_retries: int = 5, timeout: float = 60.0,
                 max_requests: int | None = None, max_tokens: int | None = None, temperature: float = 0.0,
                 max_completion_tokens: int | None = 1024, backoff: float = 1.0):
        super().__init__(model, template, language,
                         {"temperature": temperature, "max_completion_tokens": max_completion_tokens})
        self.client = ChatClient(base_url, model, api_key_env=api_key_env, concurrency=concurrency,
                                 requests_per_minute=requests_per_minute, max_retries=max_retries, timeout=timeout,
                                 cache_dir=None, max_requests=max_requests, max_tokens=max_tokens,
                                 backoff=backoff)
        self.chunk_size = concurrency * 4

    @property
    def identity(self) -> str:
        """The endpoint and the model name it serves (the same name on two servers may be two models)."""
        return f"{self.client.base_url} {self.model}"

    def translate(self, texts: list[str]) -> list[str | None]:
        params = {"temperature": self.settings["temperature"]}
        if self.settings["max_completion_tokens"]:
            params["max_tokens"] = self.settings["max_completion_tokens"]
        out: list[str | None] = [None] * len(texts)
        for i, result in self.client.complete_many((self.messages(t), params) for t in texts):
            out[i] = self.clean(texts[i], result.text)
        return out

    def usage(self) -> dict[str, Any]:
        return self.client.usage.as_dict()
