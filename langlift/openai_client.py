"""A small, careful client for OpenAI-compatible chat endpoints (OpenAI, vLLM, llama.cpp, Ollama, ...).

Shared by the translate stage's ``api`` backend, the generate stage and the evaluate stage's judge. The
HTTP transport is the ``openai`` package's client: connections, timeouts, retries on 408/409/429/5xx,
timeouts and connection errors, and ``Retry-After`` / ``retry-after-ms``. What langlift adds, in a thin
httpx transport under that client (so every HTTP attempt, retries included, passes through it):

- every response is cached on disk (one JSON file per request, written atomically), keyed by the
  sha256 of (base_url, model, messages, params), so a rerun or a crash never pays twice;
- hard caps on HTTP requests (retries count) and on tokens per run, raising :class:`BudgetExceeded`;
- bounded concurrency (a thread pool) and an optional token-bucket rate limit; a ``Retry-After``
  pauses every worker, not only the one that got it; a ``Retry-After`` over two minutes (a spent
  quota) stops the run instead of sleeping;
- a 200 reply without a usable message (broken JSON, no choices) is retried like a 5xx;
- backoff with full jitter (``backoff * 2**attempt`` seconds), handed to the openai client as a
  ``retry-after-ms`` header on retryable replies that carry no ``Retry-After`` of their own;
- the API key is read only from the environment variable named in params and never logged.
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

import httpx2
import openai

from langlift.errors import LangliftError
from langlift.io import atomic_path

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))  # what the openai client retries
MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 120.0  # the openai client's limit: a longer Retry-After stops the run instead of sleeping


class ApiError(LangliftError):
    """The endpoint refused a request, or kept failing after every retry."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class BudgetExceeded(LangliftError):
    """A per-run cap on requests or tokens was reached; cached work is kept, rerun to continue."""


class _Stop(openai.OpenAIError):
    """Carries a :class:`BudgetExceeded` out of the openai client's retry loop (which re-raises its own
    errors as they are, without retrying)."""

    def __init__(self, error: BudgetExceeded):
        super().__init__(str(error))
        self.error = error


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


def retry_after(headers: httpx2.Headers) -> float | None:
    """Seconds the server asks to wait (``retry-after-ms``, else ``Retry-After`` in seconds or as an HTTP
    date), the way the openai client reads them; ``None`` when it sent neither."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) / divisor)
        except (KeyError, ValueError):
            continue
    try:
        return max(0.0, email.utils.parsedate_to_datetime(headers["retry-after"]).timestamp() - time.time())
    except (KeyError, TypeError, ValueError):
        return None


def _usable(body: bytes) -> bool:
    """Whether a 200 reply holds a chat completion with a text (or empty) message."""
    try:
        message = json.loads(body)["choices"][0]["message"]
        return isinstance(message.get("content") or "", str)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return False


class _Metered(httpx2.BaseTransport):
    """The HTTP transport under the openai client: budget, rate limit, shared pauses and failure
    bookkeeping for every attempt, and malformed 200 replies turned into retryable 502s."""

    def __init__(self, owner: ChatClient, inner: httpx2.BaseTransport):
        self.owner, self.inner = owner, inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        owner = self.owner
        owner._reserve_request()
        owner._wait_turn()
        try:
            response = self.inner.handle_request(request)
        except httpx2.TimeoutException:
            owner._failed("timeout")
            raise
        except httpx2.TransportError:
            owner._failed("connection error")
            raise
        status = response.status_code
        if status == 200:
            response.read()
            if _usable(response.content):
                return response
            response.close()
            delay = owner._failed("malformed response")
            return httpx2.Response(502, headers={"content-type": "application/json", "retry-after-ms": delay},
                                   json={"error": {"message": "malformed response"}}, request=request)
        if status in RETRYABLE_STATUS:
            delay = owner._failed(f"HTTP {status}")
            wait_s = retry_after(response.headers)
            if wait_s is None:
                response.headers["retry-after-ms"] = delay
            elif wait_s <= MAX_RETRY_AFTER_S:
                owner._pause(wait_s)
        return response

    def close(self) -> None:
        self.inner.close()


class ChatClient:
    """Chat completions against ``{base_url}/chat/completions`` with caching, retries and budgets.

    ``max_requests`` caps HTTP requests sent by this client (retries count: each one may be billed or
    rate-limited) and raises :class:`BudgetExceeded` instead of sending one more. ``max_tokens`` caps
    prompt + completion tokens of uncached responses: once the replies received reach it, no new
    request is sent (requests already in flight, at most ``concurrency``, still land). ``backoff`` is
    the base delay in seconds before retrying a failed reply (``backoff * 2**attempt``, full jitter);
    timeouts and connection errors are retried after the openai client's own delay (0.5 s, doubling).
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
        api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not api_key:
            log.info("environment variable %s is not set: sending requests without an API key", api_key_env)
        self.concurrency, self.max_retries, self.backoff = concurrency, max_retries, backoff
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.bucket = _TokenBucket(requests_per_minute) if requests_per_minute else None
        self.usage = Usage()
        self._lock = threading.Lock()
        self._paused_until = 0.0  # a Retry-After pauses every worker, not only the one that got it
        self._local = threading.local()  # the failure reasons of the request this thread is sending
        transport = _Metered(self, httpx2.HTTPTransport(limits=httpx2.Limits(max_connections=concurrency)))
        # the key only from api_key_env ("" sends none): never OPENAI_API_KEY / OPENAI_ADMIN_KEY behind params' back
        self._openai = openai.OpenAI(base_url=self.base_url, api_key=api_key or "", admin_api_key="",
                                     max_retries=max_retries, timeout=timeout,
                                     http_client=httpx2.Client(transport=transport, timeout=timeout))
        self._openai.organization = self._openai.project = None  # nor OPENAI_ORG_ID / OPENAI_PROJECT_ID
        self._headers = None if api_key else {"Authorization": openai.omit}  # no key: no Authorization header

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

    # -- budget, pauses and failures (called by the transport, once per HTTP attempt) ----------
    def _reserve_request(self) -> None:
        with self._lock:
            if self.max_requests is not None and self.usage.requests >= self.max_requests:
                raise _Stop(BudgetExceeded(
                    f"request cap reached: {self.usage.requests} requests sent (max_requests={self.max_requests}); "
                    "responses so far are cached, raise the cap or rerun to continue"))
            spent = self.usage.prompt_tokens + self.usage.completion_tokens
            if self.max_tokens is not None and spent >= self.max_tokens:
                raise _Stop(BudgetExceeded(
                    f"token cap reached: {spent} tokens used (max_tokens={self.max_tokens}); "
                    "responses so far are cached, raise the cap or rerun to continue"))
            self.usage.requests += 1
        self._local.attempts = getattr(self._local, "attempts", 0) + 1

    def _wait_turn(self) -> None:
        delay = self._paused_until - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if self.bucket:
            self.bucket.acquire()

    def _pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def _failed(self, reason: str) -> str:
        """Record a failed attempt; returns the backoff before the next one, in ms (a header value)."""
        reasons = self._local.reasons
        delay = random.uniform(0, min(MAX_BACKOFF_S, self.backoff * 2 ** len(reasons)))
        reasons.append(reason)
        with self._lock:
            self.usage.retry_reasons[reason] += 1
        log.info("attempt %d failed (%s)", len(reasons), reason)
        return f"{max(1.0, delay * 1000):.0f}"  # at least 1 ms: the openai client ignores a zero delay

    # -- requests ------------------------------------------------------------------------------
    def complete(self, messages: list[dict], **params: Any) -> ChatResult:
        """One chat completion (``params``: keyword arguments of ``chat.completions.create`` such as
        temperature, top_p, max_tokens, response_format, seed; ``extra_body`` for a server's own)."""
        key = cache_key(self.base_url, self.model, messages, params)
        data = self._cache_get(key)
        if data is not None:
            with self._lock:
                self.usage.cache_hits += 1
            return self._result(data, cached=True)
        self._local.reasons, self._local.attempts = [], 0
        try:
            data = self._openai.chat.completions.create(model=self.model, messages=messages,
                                                           extra_headers=self._headers, **params).to_dict()
        except _Stop as e:
            raise e.error from None
        except openai.APIError as e:
            raise self._error(e) from None
        finally:
            with self._lock:
                self.usage.retries += max(0, self._local.attempts - 1)
        result = self._result(data, cached=False)
        with self._lock:
            self.usage.responses += 1
            self.usage.prompt_tokens += result.prompt_tokens
            self.usage.completion_tokens += result.completion_tokens
        self._cache_put(key, {"model": self.model, "messages": messages, **params}, data)
        return result

    def _error(self, e: openai.APIError) -> ApiError:
        """One clear line for what the openai client raised after its retries."""
        status = e.status_code if isinstance(e, openai.APIStatusError) else None
        reasons, attempts = self._local.reasons, self._local.attempts
        if isinstance(e, openai.APIStatusError) and status not in RETRYABLE_STATUS:
            hint = ""
            if status in (401, 403):
                hint = f" (is {self.api_key_env} set to a valid key?)"
            elif status == 404:
                hint = " (does base_url end in /v1, and does the server know the model?)"
            return ApiError(f"{self.url}: HTTP {status}{hint}: {e.response.text[:300]}", status)
        wait_s = retry_after(e.response.headers) if isinstance(e, openai.APIStatusError) else None
        if wait_s is not None and wait_s > MAX_RETRY_AFTER_S:
            return ApiError(f"{self.url}: HTTP {status} asks to retry after {wait_s:.0f}s (a spent quota?); "
                            "rerun later, replies so far are cached", status)
        with self._lock:
            self.usage.failures += 1
        last = reasons[-1] if reasons else type(e).__name__
        return ApiError(f"{self.url}: gave up after {attempts} attempts, last: {last}", status)

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
