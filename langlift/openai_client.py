"""A small, careful client for OpenAI-compatible chat endpoints (OpenAI, vLLM, llama.cpp, Ollama, ...).

Shared by the translate stage's ``api`` backend and the generate stage. It exists for the parts that
cost money or time when done carelessly:

- every response is cached on disk (one JSON file per request, written atomically), keyed by the
  sha256 of (base_url, model, messages, params), so a rerun or a crash never pays twice;
- retries with exponential backoff and jitter on 429, 5xx, timeouts, connection errors and malformed
  bodies, honouring ``Retry-After`` (which also pauses the other workers);
- bounded concurrency (a thread pool) and an optional token-bucket rate limit;
- hard caps on HTTP requests and on tokens per run, raising :class:`BudgetExceeded`;
- the API key is read only from an environment variable and never logged.
"""

from __future__ import annotations

import collections
import email.utils
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from langlift.errors import LangliftError
from langlift.io import atomic_path

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 300.0  # a longer Retry-After (a spent daily quota) stops the run instead of sleeping


class ApiError(LangliftError):
    """The endpoint refused a request, or kept failing after every retry."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class BudgetExceeded(LangliftError):
    """A per-run cap on requests or tokens was reached; cached work is kept, rerun to continue."""


class _Retryable(Exception):
    """A failed attempt worth retrying, with the server's ``Retry-After`` when it sent one."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    raw: dict = field(repr=False)


@dataclass
class Usage:
    """What this client did in this run. Tokens count only paid (uncached) responses."""

    requests: int = 0            # HTTP requests sent, retries included
    responses: int = 0           # successful uncached responses
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0            # requests that failed after every retry
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_reasons: collections.Counter = field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "retry_reasons"}
        d["retry_reasons"] = dict(sorted(self.retry_reasons.items()))
        return d


class _TokenBucket:
    """Allows ``rate`` acquisitions per second on average, with bursts up to ``capacity``."""

    def __init__(self, per_minute: float, capacity: float = 1.0):
        if per_minute <= 0:
            raise LangliftError(f"requests_per_minute must be positive, got {per_minute}")
        self.rate, self.capacity = per_minute / 60.0, capacity
        self.tokens, self.stamp = capacity, time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                wait_s = (1.0 - self.tokens) / self.rate
            time.sleep(wait_s)


def cache_key(base_url: str, model: str, messages: list[dict], params: dict[str, Any]) -> str:
    """The sha256 naming one request's cached response."""
    blob = json.dumps([base_url, model, messages, params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class ChatClient:
    """Chat completions against ``{base_url}/chat/completions`` with caching, retries and budgets.

    ``max_requests`` caps HTTP requests sent by this client (retries count: each one may be billed or
    rate-limited) and raises :class:`BudgetExceeded` instead of sending one more. ``max_tokens`` caps
    prompt + completion tokens of uncached responses: once the replies received reach it, no new
    request is sent (requests already in flight, at most ``concurrency``, still land). ``backoff`` is
    the base delay in seconds of the exponential backoff (``backoff * 2**attempt``, full jitter).
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 concurrency: int = 4, requests_per_minute: float | None = None, max_retries: int = 5,
                 timeout: float = 60.0, cache_dir: str | Path | None = None,
                 max_requests: int | None = None, max_tokens: int | None = None, backoff: float = 1.0):
        if not base_url:
            raise LangliftError("no endpoint configured: set base_url to an OpenAI-compatible API (…/v1)")
        if concurrency < 1:
            raise LangliftError(f"concurrency must be at least 1, got {concurrency}")
        self.base_url, self.model = base_url.rstrip("/"), model
        self.url = f"{self.base_url}/chat/completions"
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self._api_key:
            log.info("environment variable %s is not set: sending requests without an API key", api_key_env)
        self.concurrency, self.max_retries, self.timeout, self.backoff = concurrency, max_retries, timeout, backoff
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.bucket = _TokenBucket(requests_per_minute) if requests_per_minute else None
        self.usage = Usage()
        self._lock = threading.Lock()
        self._paused_until = 0.0  # a Retry-After pauses every worker, not only the one that got it
        self._local = threading.local()

    # -- cache ---------------------------------------------------------------------------------
    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

    def _cache_get(self, key: str) -> dict | None:
        path = self._cache_path(key)
        if path is None or not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["response"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable cache entry %s", path)
            return None

    def _cache_put(self, key: str, request: dict, response: dict) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"request": request, "response": response}, ensure_ascii=False),
                           encoding="utf-8")

    # -- budget --------------------------------------------------------------------------------
    def _reserve_request(self) -> None:
        with self._lock:
            if self.max_requests is not None and self.usage.requests >= self.max_requests:
                raise BudgetExceeded(
                    f"request cap reached: {self.usage.requests} requests sent (max_requests={self.max_requests}); "
                    "responses so far are cached, raise the cap or rerun to continue")
            spent = self.usage.prompt_tokens + self.usage.completion_tokens
            if self.max_tokens is not None and spent >= self.max_tokens:
                raise BudgetExceeded(
                    f"token cap reached: {spent} tokens used (max_tokens={self.max_tokens}); "
                    "responses so far are cached, raise the cap or rerun to continue")
            self.usage.requests += 1

    # -- HTTP ----------------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _wait_turn(self) -> None:
        delay = self._paused_until - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if self.bucket:
            self.bucket.acquire()

    def _post(self, body: dict) -> dict:
        """One HTTP attempt; returns the parsed response or raises ``_Retryable`` / :class:`ApiError`."""
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            resp = self._session().post(self.url, json=body, headers=headers, timeout=self.timeout)
        except requests.Timeout:
            raise _Retryable("timeout") from None
        except requests.ConnectionError:
            raise _Retryable("connection error") from None
        if resp.status_code in RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {resp.status_code}", _retry_after(resp.headers.get("Retry-After")))
        if resp.status_code >= 400:
            hint = ""
            if resp.status_code in (401, 403):
                hint = f" (is {self.api_key_env} set to a valid key?)"
            elif resp.status_code == 404:
                hint = " (does base_url end in /v1, and does the server know the model?)"
            raise ApiError(f"{self.url}: HTTP {resp.status_code}{hint}: {resp.text[:300]}", resp.status_code)
        try:
            data = resp.json()
            message = data["choices"][0]["message"]
            if not isinstance(message.get("content") or "", str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _Retryable("malformed response") from None
        return data

    def complete(self, messages: list[dict], **params: Any) -> ChatResult:
        """One chat completion (``params``: temperature, top_p, max_tokens, response_format, seed, ...)."""
        key = cache_key(self.base_url, self.model, messages, params)
        data = self._cache_get(key)
        if data is not None:
            with self._lock:
                self.usage.cache_hits += 1
            return self._result(data, cached=True)
        body = {"model": self.model, "messages": messages, **params}
        for attempt in range(self.max_retries + 1):
            self._reserve_request()
            self._wait_turn()
            try:
                data = self._post(body)
                break
            except _Retryable as e:
                with self._lock:
                    self.usage.retry_reasons[str(e)] += 1
                if attempt == self.max_retries:
                    with self._lock:
                        self.usage.failures += 1
                    raise ApiError(f"{self.url}: gave up after {attempt + 1} attempts, last: {e}") from None
                delay = random.uniform(0, min(MAX_BACKOFF_S, self.backoff * 2**attempt))
                if e.retry_after is not None and e.retry_after > MAX_RETRY_AFTER_S:
                    raise ApiError(f"{self.url}: {e} asks to retry after {e.retry_after:.0f}s "
                                   "(a spent quota?); rerun later, replies so far are cached") from None
                if e.retry_after is not None:
                    delay = max(delay, e.retry_after)
                    self._paused_until = max(self._paused_until, time.monotonic() + e.retry_after)
                log.info("attempt %d failed (%s); retrying in %.1fs", attempt + 1, e, delay)
                with self._lock:
                    self.usage.retries += 1
                time.sleep(delay)
        result = self._result(data, cached=False)
        with self._lock:
            self.usage.responses += 1
            self.usage.prompt_tokens += result.prompt_tokens
            self.usage.completion_tokens += result.completion_tokens
        self._cache_put(key, body, data)
        return result

    @staticmethod
    def _result(data: dict, cached: bool) -> ChatResult:
        usage = data.get("usage") or {}
        return ChatResult(text=data["choices"][0]["message"].get("content") or "",
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0),
                          cached=cached, raw=data)

    def complete_many(self, requests: Iterable[tuple[list[dict], dict]]) -> Iterator[tuple[int, ChatResult]]:
        """Run requests with bounded concurrency; yields (index, result) as they finish.

        Requests are read from the iterable lazily (at most ``2 * concurrency`` in flight). The first
        failure (:class:`ApiError`, :class:`BudgetExceeded`) cancels what has not started and is raised
        once the running requests finish; every response received before it is already cached.
        """
        todo = enumerate(requests)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="chat") as pool:
            running: dict[Future, int] = {}

            def refill() -> None:
                while len(running) < 2 * self.concurrency:
                    item = next(todo, None)
                    if item is None:
                        return
                    i, (messages, params) = item
                    running[pool.submit(self.complete, messages, **params)] = i

            try:
                refill()
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        i = running.pop(fut)
                        yield i, fut.result()
                    refill()
            finally:
                for fut in running:
                    fut.cancel()
