"""The review page: a small Flask app on 127.0.0.1 for one reviewer.

``GET /`` shows the next pair this reviewer has not judged (so a reload resumes where they were); the page's
script posts each key press to ``POST /api/judge`` (1, 2: that answer is better; 3: both bad) and
``POST /api/correct`` (the corrected answer), each saved as one fsynced JSON line before the reply.
The answers are anonymised: the page holds only positions, the server maps them to models.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Flask, abort, jsonify, render_template, request

from langlift.params import Language
from langlift.review.pairs import Pair, shown_order
from langlift.review.store import BOTH_BAD, ReviewLog, latest

MAX_CORRECTION_CHARS = 20_000


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Session:
    """One reviewer's progress over the pairs, kept in step with their log."""

    def __init__(self, pairs: list[Pair], log: ReviewLog, reviewer: str, seed: int):
        self.pairs = {p.key: p for p in pairs}
        self.log, self.reviewer, self.seed = log, reviewer, seed
        self.choices = {k: j["choice"] for k, j in latest(log.read(), "judgement").items()}

    def next_pair(self) -> Pair | None:
        """The first pair this reviewer has not judged yet."""
        return next((p for p in self.pairs.values() if p.key not in self.choices), None)

    def order(self, pair: Pair) -> list[str]:
        return shown_order(self.seed, self.reviewer, pair.key)

    def _record(self, kind: str, pair: Pair, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "reviewer": self.reviewer, "group": pair.group, "id": pair.id, "key": pair.key,
                "prompt": pair.prompt, **fields, "time": _now()}

    def judge(self, pair: Pair, position: int) -> str:
        """Save the choice at ``position`` (1, 2: that answer; 3: both bad); return the model chosen."""
        order = self.order(pair)
        choice = order[position - 1] if position in (1, 2) else BOTH_BAD
        self.log.append(self._record("judgement", pair, shown=order, choice=choice))
        self.choices[pair.key] = choice
        return choice

    def correct(self, pair: Pair, text: str) -> None:
        """Save a corrected answer for a judged pair (of the better answer, or a new one when both were bad)."""
        choice = self.choices[pair.key]
        model = None if choice == BOTH_BAD else choice
        original = pair.answers[model] if model else ""
        self.log.append(self._record("correction", pair, model=model, original=original, text=text))


def create_app(pairs: list[Pair], log: ReviewLog, reviewer: str, seed: int, language: Language) -> Flask:
    """The review app for ``reviewer`` over ``pairs``, storing into ``log``."""
    app = Flask(__name__)
    session = Session(pairs, log, reviewer, seed)

    def pair_from_request() -> tuple[Pair, dict[str, Any]]:
        if not request.is_json:  # also keeps other web pages from posting here (a JSON post needs CORS)
            abort(415)
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or body.get("key") not in session.pairs:
            abort(400, "unknown pair")
        return session.pairs[body["key"]], body

    @app.get("/")
    def page() -> str:
        pair = session.next_pair()
        answers = [pair.answers[m] for m in session.order(pair)] if pair else []
        return render_template("review.html", pair=pair, answers=answers, reviewer=reviewer, language=language,
                               done=len(session.choices.keys() & session.pairs.keys()), total=len(session.pairs))

    @app.post("/api/judge")
    def judge() -> Any:
        pair, body = pair_from_request()
        position = body.get("position")
        if position not in (1, 2, 3):
            abort(400, "position must be 1, 2 or 3")
        session.judge(pair, position)
        return jsonify(saved=True)

    @app.post("/api/correct")
    def correct() -> Any:
        pair, body = pair_from_request()
        text = body.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_CORRECTION_CHARS:
            abort(400, f"text must be a non-empty string of at most {MAX_CORRECTION_CHARS} characters")
        if pair.key not in session.choices:
            abort(409, "judge the pair before correcting it")
        session.correct(pair, text)
        return jsonify(saved=True)

    return app
