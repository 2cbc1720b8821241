"""A real OpenAI-compatible HTTP server for tests: canned replies and injected faults on 127.0.0.1.

    def handler(body: dict, n: int) -> Reply | dict | str:   # n: 0-based request number
        if n == 0:
            return Reply(status=429, headers={"Retry-After": "1"})
        return "a canned completion"                          # str -> a chat completion with that text

    with OpenAIServer(handler) as server:
        client = ChatClient(server.url, "test-model", ...)
        ...
        assert server.count == 2

A handler may return a :class:`Reply` (any status, headers, raw body, a delay before answering),
a dict (sent as the JSON body with status 200) or a str (wrapped by :func:`chat_response`).
Each request's JSON body and headers (names in Title-Case) are recorded in ``server.requests`` / ``server.headers``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: dict | str | bytes | None = None  # None: an OpenAI-style error object for non-200 statuses
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0                      # seconds to wait before answering (timeouts)


def chat_response(text: str, prompt_tokens: int = 10, completion_tokens: int | None = None,
                  model: str = "test-model") -> dict:
    """A chat.completion object as OpenAI returns it."""
    if completion_tokens is None:
        completion_tokens = max(1, len(text.split()))
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


Handler = Callable[[dict, int], "Reply | dict | str"]


class OpenAIServer:
    """``POST {url}/chat/completions`` answered by ``handler``; ``url`` ends in ``/v1``."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(Reply(status=404, body={"error": {"message": f"no route {self.path}"}}))
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self._send(Reply(status=400, body={"error": {"message": "request body is not JSON"}}))
                with server._lock:
                    n = len(server.requests)
                    server.requests.append(body)
                    server.headers.append({k.title(): v for k, v in self.headers.items()})  # names are case-insensitive
                try:
                    reply = server.handler(body, n)
                except Exception as e:  # a broken test handler answers 500 rather than hanging the client
                    reply = Reply(status=500, body={"error": {"message": f"test handler raised {e!r}"}})
                self._send(reply)

            def _send(self, reply: Reply | dict | str) -> None:
                if isinstance(reply, str):
                    reply = Reply(body=chat_response(reply))
                elif isinstance(reply, dict):
                    reply = Reply(body=reply)
                if reply.delay:
                    time.sleep(reply.delay)
                body = reply.body
                if body is None:
                    body = {} if reply.status == 200 else {"error": {"message": f"injected {reply.status}"}}
                if isinstance(body, dict):
                    body = json.dumps(body, ensure_ascii=False)
                if isinstance(body, str):
                    body = body.encode("utf-8")
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="openai-test-server", daemon=True)

    @property
    def count(self) -> int:
        """Requests received on the chat completions route."""
        with self._lock:
            return len(self.requests)

    def start(self) -> OpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeJudge:
    """A handler that plays an LLM judge deterministically, reading the answers out of langlift's judge prompts.

    ``pairwise(answer_a, answer_b)`` and ``score(answer)`` return the reply text; ``reference(question)`` the
    reference answer. The defaults prefer an answer containing ``GOOD`` (a tie when both or neither do),
    score it 9 (else 3), and answer ``reference: <question>``. Every request is kept in ``seen`` by kind.
    """

    def __init__(self, pairwise: Callable[[str, str], str] | None = None, score: Callable[[str], str] | None = None,
                 reference: Callable[[str], str] | None = None):
        self.pairwise = pairwise or self.prefer_good
        self.score = score or (lambda answer: f"Clear enough.\nScore: {9 if 'GOOD' in answer else 3}")
        self.reference = reference or (lambda question: f"reference: {question}")
        self.seen: dict[str, list[dict[str, str]]] = {"pairwise": [], "score": [], "reference": []}

    @staticmethod
    def prefer_good(a: str, b: str) -> str:
        verdict = "tie" if ("GOOD" in a) == ("GOOD" in b) else "A" if "GOOD" in a else "B"
        return f"Both answer the question; one is better.\nVerdict: {verdict}"

    @staticmethod
    def _between(text: str, start: str, end: str) -> str | None:
        found = re.search(re.escape(start) + r"\n(.*?)\n" + re.escape(end), text, re.DOTALL)
        return found[1] if found else None

    def __call__(self, body: dict, n: int) -> Reply | dict | str:
        prompt = body["messages"][-1]["content"]
        question = self._between(prompt, "[Question]", "[End of Question]")
        a = self._between(prompt, "[Answer A]", "[End of Answer A]")
        b = self._between(prompt, "[Answer B]", "[End of Answer B]")
        if a is not None and b is not None:
            self.seen["pairwise"].append({"question": question, "a": a, "b": b})
            return self.pairwise(a, b)
        answer = self._between(prompt, "[Answer]", "[End of Answer]")
        if answer is not None:
            self.seen["score"].append({"question": question, "answer": answer})
            return self.score(answer)
        question = prompt.rsplit("\n\n", 1)[-1]
        self.seen["reference"].append({"question": question})
        return self.reference(question)
