"""The shared chat client against a real local HTTP server: caching, retries, faults, budgets, concurrency."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from openai_server import OpenAIServer, Reply, chat_response

from langlift.openai_client import ApiError, BudgetExceeded, ChatClient

MSG = [{"role": "user", "content": "Salam!"}]


def echo(body: dict, n: int) -> str:
    return f"reply to {body['messages'][-1]['content']}"


def client(server: OpenAIServer, **kw) -> ChatClient:
    kw.setdefault("backoff", 0.01)
    return ChatClient(server.url, "test-model", **kw)


def test_completion_sends_model_params_and_key_from_env(monkeypatch, caplog):
    monkeypatch.setenv("LANGLIFT_TEST_KEY", "sk-secret-123")
    caplog.set_level(logging.DEBUG)
    with OpenAIServer(lambda body, n: chat_response("Salam, dünya!", prompt_tokens=7, completion_tokens=3)) as srv:
        res = client(srv, api_key_env="LANGLIFT_TEST_KEY").complete(MSG, temperature=0.2, max_tokens=50)
    assert (res.text, res.prompt_tokens, res.completion_tokens, res.cached) == ("Salam, dünya!", 7, 3, False)
    body = srv.requests[0]
    assert body["model"] == "test-model" and body["messages"] == MSG
    assert body["temperature"] == 0.2 and body["max_tokens"] == 50
    assert srv.headers[0]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in caplog.text


def test_no_key_sends_no_authorization(monkeypatch):
    monkeypatch.delenv("LANGLIFT_TEST_KEY", raising=False)
    with OpenAIServer(echo) as srv:
        client(srv, api_key_env="LANGLIFT_TEST_KEY").complete(MSG)
    assert "Authorization" not in srv.headers[0]


def test_cache_survives_a_new_client_and_keys_on_params(tmp_path):
    with OpenAIServer(echo) as srv:
        first = client(srv, cache_dir=tmp_path).complete(MSG, temperature=0.0)
        again = client(srv, cache_dir=tmp_path)  # a rerun: a fresh process would look the same
        second = again.complete(MSG, temperature=0.0)
        assert srv.count == 1
        assert second.cached and not first.cached and second.text == first.text == "reply to Salam!"
        assert again.usage.cache_hits == 1 and again.usage.prompt_tokens == 0  # cached tokens are not paid
        again.complete(MSG, temperature=0.5)  # other params: another request
        assert srv.count == 2
    assert len(list(tmp_path.rglob("*.json"))) == 2


def test_429_honours_retry_after():
    replies = [Reply(status=429, headers={"Retry-After": "1"})]
    with OpenAIServer(lambda body, n: replies[n] if n < len(replies) else "ok") as srv:
        c = client(srv)
        start = time.monotonic()
        assert c.complete(MSG).text == "ok"
        assert time.monotonic() - start >= 0.95
    assert srv.count == 2 and c.usage.retries == 1 and c.usage.retry_reasons == {"HTTP 429": 1}


def test_a_very_long_retry_after_stops_instead_of_sleeping():
    with OpenAIServer(lambda body, n: Reply(status=429, headers={"Retry-After": "86400"})) as srv:
        with pytest.raises(ApiError, match="retry after 86400s"):
            client(srv).complete(MSG)
    assert srv.count == 1


def test_retries_5xx_malformed_json_and_timeouts():
    # the timeout first: with no reply to carry langlift's backoff, the openai client waits its own (0.5 s, doubling)
    faults = [Reply(delay=1.0, body=chat_response("too late")), Reply(status=500), Reply(status=503),
              Reply(body="{not json"), Reply(body={"choices": []})]
    with OpenAIServer(lambda body, n: faults[n] if n < len(faults) else "finally") as srv:
        c = client(srv, timeout=0.3, max_retries=5)
        assert c.complete(MSG).text == "finally"
    assert srv.count == 6
    assert c.usage.retry_reasons == {"HTTP 500": 1, "HTTP 503": 1, "malformed response": 2, "timeout": 1}


def test_connection_error_is_retried_then_reported():
    with OpenAIServer(echo) as srv:
        url = srv.url
    c = ChatClient(url, "m", max_retries=2, backoff=0.01, timeout=1)  # the server is gone
    with pytest.raises(ApiError, match="gave up after 3 attempts, last: connection error"):
        c.complete(MSG)
    assert c.usage.failures == 1


def test_gives_up_after_max_retries_and_does_not_retry_4xx():
    with OpenAIServer(lambda body, n: Reply(status=500)) as srv:
        with pytest.raises(ApiError, match="gave up after 3 attempts"):
            client(srv, max_retries=2).complete(MSG)
        assert srv.count == 3
    with OpenAIServer(lambda body, n: Reply(status=401)) as srv:
        with pytest.raises(ApiError, match="HTTP 401 .is OPENAI_API_KEY set") as e:
            client(srv).complete(MSG)
        assert e.value.status == 401 and srv.count == 1


def test_request_cap_raises_budget_exceeded_and_is_honoured(tmp_path):
    with OpenAIServer(echo) as srv:
        c = client(srv, max_requests=3, cache_dir=tmp_path)
        for i in range(3):
            c.complete([{"role": "user", "content": str(i)}])
        with pytest.raises(BudgetExceeded, match="max_requests=3"):
            c.complete([{"role": "user", "content": "3"}])
        assert srv.count == 3
        c.complete([{"role": "user", "content": "0"}])  # cached answers are free even past the cap
        assert srv.count == 3


def test_retries_count_against_the_request_cap():
    with OpenAIServer(lambda body, n: Reply(status=500)) as srv:
        with pytest.raises(BudgetExceeded):
            client(srv, max_requests=2, max_retries=5).complete(MSG)
        assert srv.count == 2


def test_token_cap():
    with OpenAIServer(lambda body, n: chat_response("x", prompt_tokens=60, completion_tokens=40)) as srv:
        c = client(srv, max_tokens=150)
        c.complete([{"role": "user", "content": "a"}])
        c.complete([{"role": "user", "content": "b"}])  # 100 < 150: allowed, ends at 200
        with pytest.raises(BudgetExceeded, match="token cap reached: 200 tokens"):
            c.complete([{"role": "user", "content": "c"}])
    assert srv.count == 2 and c.usage.prompt_tokens == 120 and c.usage.completion_tokens == 80


def test_complete_many_bounds_concurrency_and_yields_every_index():
    lock, state = threading.Lock(), {"now": 0, "peak": 0}

    def slow(body, n):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return echo(body, n)

    reqs = [([{"role": "user", "content": f"q{i}"}], {"temperature": 0}) for i in range(20)]
    with OpenAIServer(slow) as srv:
        results = dict(client(srv, concurrency=3).complete_many(iter(reqs)))
    assert sorted(results) == list(range(20))
    assert all(results[i].text == f"reply to q{i}" for i in range(20))
    assert state["peak"] == 3


def test_complete_many_raises_the_first_failure_and_keeps_finished_work(tmp_path):
    def fail_on_q3(body, n):
        return Reply(status=400) if body["messages"][0]["content"] == "q3" else echo(body, n)

    reqs = [([{"role": "user", "content": f"q{i}"}], {}) for i in range(6)]
    with OpenAIServer(fail_on_q3) as srv:
        got = []
        with pytest.raises(ApiError, match="HTTP 400"):
            for i, _ in client(srv, concurrency=1, cache_dir=tmp_path).complete_many(reqs):
                got.append(i)
        assert got == [0, 1, 2]
        assert srv.count < 6  # later requests were cancelled, not sent


def test_rate_limit_spaces_requests():
    with OpenAIServer(echo) as srv:
        c = client(srv, concurrency=4, requests_per_minute=1200)  # 20 per second
        start = time.monotonic()
        list(c.complete_many([([{"role": "user", "content": str(i)}], {}) for i in range(6)]))
        assert time.monotonic() - start >= 0.25  # first request free, then 5 more at 50 ms each


def test_only_the_named_variable_is_read_for_the_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-not-this-one")
    monkeypatch.delenv("LANGLIFT_TEST_KEY", raising=False)
    with OpenAIServer(echo) as srv:
        client(srv, api_key_env="LANGLIFT_TEST_KEY").complete(MSG)
        client(srv, api_key_env=None).complete([{"role": "user", "content": "again"}])
    assert all("Authorization" not in h and "Openai-Organization" not in h for h in srv.headers)


def test_a_retry_after_pauses_the_other_workers_too():
    sent: dict[str, float] = {}

    def handler(body, n):
        q = body["messages"][0]["content"]
        if q not in sent:
            sent[q] = time.monotonic()
            if q == "q0":
                return Reply(status=429, headers={"Retry-After": "1"})
        return Reply(delay=0.5, body=chat_response(q)) if q == "q1" else echo(body, n)

    with OpenAIServer(handler) as srv:
        c = client(srv, concurrency=2)  # q0 and q1 in flight together, then q2 and q3 wait for a free worker
        results = dict(c.complete_many((([{"role": "user", "content": f"q{i}"}], {}) for i in range(4))))
    assert len(results) == 4 and srv.count == 5
    assert min(sent["q2"], sent["q3"]) - sent["q0"] >= 0.95  # the other worker waited out q0's Retry-After
