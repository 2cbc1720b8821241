"""A local OpenAI-compatible endpoint that answers self-instruct requests with canned Uzbek tasks.

The mistral-uz recipe's smoke size points `generate.base_url` here instead of a hosted model, so the
generate stage runs offline end to end: real HTTP, JSON mode, parsing, filters and ROUGE-L dedupe.
The tasks are made from the seed tasks (`--seeds`), never copies of them (generate drops those as
duplicates of its seeds): "which task does this answer belong to?" (the answer quoted, the seed's
instruction as output) and "continue this text" (the first half of a seed's answer, the rest as output).
Each reply is a deterministic function of the request's `seed`, so a rerun asks and gets the same.

    python recipes/uz_canned_api.py --seeds languages/uz/seed_tasks.jsonl --port 8765
"""

from __future__ import annotations

import json
import random
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click

from langlift.generate.selfinstruct import load_seeds

QUOTED_WORDS = 12   # words of a seed's answer quoted in a "which task?" instruction
CONTINUE_MIN = 20   # answers at least this long also make a "continue the text" task


def tasks_from(seeds: list[dict[str, str]]) -> list[dict[str, str]]:
    """Uzbek tasks derived from the seed tasks (none repeats a seed's instruction)."""
    tasks = []
    for s in seeds:
        words = s["output"].split()
        if len(words) >= 6:
            quoted = " ".join(words[:QUOTED_WORDS]) + ("…" if len(words) > QUOTED_WORDS else "")
            task = s["instruction"] + (f"\n{s['input']}" if s["input"] else "")
            tasks.append({"instruction": f"Quyidagi javob qaysi topshiriqqa berilgan boʻlishi mumkin: «{quoted}»? "
                                         "Oʻsha topshiriqni yoz.", "input": "", "output": task})
        if len(words) >= CONTINUE_MIN:
            half = len(words) // 2
            tasks.append({"instruction": f"Matnni mantiqan davom ettir: «{' '.join(words[:half])}»",
                          "input": "", "output": " ".join(words[half:])})
    return tasks


def reply(body: dict[str, Any], pool: list[dict[str, str]]) -> dict[str, Any]:
    """A chat.completion holding ``{"tasks": [...]}``: as many as the prompt asks for, chosen by the request's seed."""
    prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
    asked = re.search(r"(\d+) new", prompt)
    n = min(int(asked.group(1)) if asked else 5, len(pool))
    chosen = random.Random(body.get("seed", 0)).sample(pool, n)
    text = json.dumps({"tasks": chosen}, ensure_ascii=False)
    usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
    return {"id": "chatcmpl-canned", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "canned"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}}


def handler(pool: list[dict[str, str]]) -> type[BaseHTTPRequestHandler]:
    """``POST /v1/chat/completions`` answered from ``pool``; anything else is a 404."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                return self._send(200, reply(json.loads(body), pool))
            except ValueError:
                return self._send(400, {"error": {"message": "request body is not JSON"}})

        def _send(self, status: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@click.command()
@click.option("--seeds", required=True, help="Seed tasks (Alpaca seed_tasks.jsonl format or {instruction, input, output}).")
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def main(seeds: str, port: int, host: str) -> None:
    """Serve canned Uzbek self-instruct tasks at http://HOST:PORT/v1 until interrupted."""
    pool = tasks_from(load_seeds(seeds))
    server = ThreadingHTTPServer((host, port), handler(pool))
    server.daemon_threads = True
    click.echo(f"serving {len(pool)} canned tasks at http://{host}:{port}/v1", err=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
