"""Tolerant extraction of generated tasks from a model's reply.

The reply should be ``{"tasks": [{"instruction", "input", "output"}, ...]}`` (JSON mode) or a bare array,
but models wrap JSON in code fences, add prose, or get cut off by ``max_tokens`` mid-item. Whatever
parses is kept; every object that does not is counted, and nothing here raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?")
_ITEM_START = re.compile(r'\{\s*"(?:instruction|input|output)"', re.IGNORECASE)
_KEYS = ("instruction", "input", "output")
_decoder = json.JSONDecoder()


@dataclass
class Parsed:
    items: list[dict[str, Any]] = field(default_factory=list)  # objects with task keys, as the model wrote them
    malformed: int = 0                                          # objects or elements that could not be used


def _is_task(obj: Any) -> bool:
    return isinstance(obj, dict) and any(str(k).strip().lower() in _KEYS for k in obj)


def _from_json(obj: Any) -> Parsed | None:
    """Tasks from a fully parsed document, or None when it holds no task list."""
    if isinstance(obj, dict):
        if _is_task(obj):
            return Parsed([obj])
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) != 1:
            return None
        obj = lists[0]
    if not isinstance(obj, list):
        return None
    out = Parsed()
    for el in obj:
        if _is_task(el):
            out.items.append(el)
        else:
            out.malformed += 1
    return out


def extract(text: str) -> Parsed:
    """Every task object in ``text``; unparseable objects are counted in ``malformed``."""
    body = _FENCE.sub("", text).strip()
    try:
        whole = _from_json(json.loads(body))
        if whole is not None:
            return whole
    except ValueError:
        pass
    # Scan for objects one by one: survives prose, a missing bracket, a truncated last item.
    out, pos = Parsed(), 0
    while (start := body.find("{", pos)) != -1:
        try:
            obj, end = _decoder.raw_decode(body, start)
        except ValueError:
            if _ITEM_START.match(body, start):  # began like a task: a malformed item
                out.malformed += 1
            pos = start + 1
            continue
        if _is_task(obj):
            out.items.append(obj)
            pos = end
        elif (inner := _from_json(obj)) is not None:
            out.items += inner.items
            out.malformed += inner.malformed
            pos = end
        else:
            pos = start + 1  # e.g. {"tasks": [...broken...]}: look inside
    return out
