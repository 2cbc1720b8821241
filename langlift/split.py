"""Deterministic, hash-based splits that never reshuffle when records are added.

A record's split depends only on the hash of its group key and the seed, never on its position or on
the other records. The group key is ``source_id`` when present (a translation and its English original
share it), so a pair can never straddle train and test. English records serve only as the
anti-forgetting share of the training mix and are drawn from groups that landed in train.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from langlift import records, scripts, text
from langlift.errors import DataError, LangliftError
from langlift.params import Language, Split

log = logging.getLogger(__name__)


def bucket(key: str, seed: int, salt: str = "split") -> float:
    """A uniform number in [0, 1) from the key, the seed and a salt."""
    digest = hashlib.sha256(f"{salt}:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def group_key(rec: dict[str, Any]) -> str:
    """The key that keeps related records (a translation and its source) in one split."""
    return rec.get("source_id") or rec["id"]


def read_records(path: str | Path, kind: str) -> list[dict[str, Any]]:
    """Read and validate a stage output; duplicate ids are an error."""
    out, seen = [], set()
    for lineno, rec in records.read(path, kind):
        if not isinstance(rec.get("id"), str) or not rec["id"]:
            raise DataError(path, lineno, "id", "missing")
        if rec["id"] in seen:
            raise DataError(path, lineno, "id", f"duplicate id {rec['id']}")
        seen.add(rec["id"])
        out.append(rec)
    return out


def split_instructions(
    recs: Iterable[dict[str, Any]], lang: str, seed: int, cfg: Split
) -> dict[str, list[dict[str, Any]]]:
    """Target-language records into train/val/test by group; English records fill ``english_share`` of train.

    Groups are ordered by hash: the first ``test`` share (at least ``min_test`` groups) is test, the next
    ``val`` share (at least ``min_val``) is val, so a small language still gets evaluation sets that mean
    something, and a group never moves when records are added elsewhere.
    """
    recs = list(recs)
    groups = sorted({group_key(r) for r in recs if r["lang"] == lang}, key=lambda k: bucket(k, seed))
    n_test = max(cfg.min_test, sum(bucket(k, seed) < cfg.test for k in groups))
    n_val = max(cfg.min_val, sum(bucket(k, seed) < cfg.test + cfg.val for k in groups[n_test:]))
    if n_test + n_val >= len(groups):
        raise LangliftError(f"split: {len(groups)} '{lang}' instruction groups cannot fill test ({n_test}) and "
                            f"val ({n_val}) and leave any for train; lower split.min_test / split.min_val")
    held = {k: "test" for k in groups[:n_test]} | {k: "val" for k in groups[n_test:n_test + n_val]}
    out: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    english = []
    for rec in recs:
        split = held.get(group_key(rec), "train")
        if rec["lang"] == lang:
            out[split].append(rec)
        elif rec["lang"] == "en" and split == "train":
            english.append(rec)
    if cfg.english_share > 0:
        want = round(cfg.english_share / (1 - cfg.english_share) * len(out["train"]))
        english.sort(key=lambda r: bucket(r["id"], seed, "english"))
        chosen = english[:want]
        if len(chosen) < want:
            log.warning("english_share %.2f wants %d English records, only %d available", cfg.english_share, want,
                        len(chosen))
        out["train"].extend(chosen)
        out["train"].sort(key=lambda r: bucket(r["id"], seed, "order"))
    return out


def split_corpus(recs: Iterable[dict[str, Any]], seed: int, val: float) -> dict[str, list[dict[str, Any]]]:
    """Corpus documents into train/val by hash."""
    out: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for rec in recs:
        out["val" if bucket(rec["id"], seed, "corpus") < val else "train"].append(rec)
    return out


def parallel_test(recs: Iterable[dict[str, Any]], language: Language, seed: int, limit: int
                  ) -> tuple[list[dict[str, Any]], int]:
    """The pairs involving the language with the lowest hashes, at most ``limit`` (stable as pairs are added).

    The language's side is normalised as dedupe normalises the language's training text (so an Uzbek
    reference in Cyrillic becomes Latin, like the corpus); with ``other_script: drop``, a pair whose side is
    in another script is left out. Returns the pairs and how many were left out so.
    """
    lang, options = language.code, language.text_options()
    pairs, dropped = [], 0
    for rec in recs:
        side = "tgt" if rec["tgt_lang"] == lang else "src" if rec["src_lang"] == lang else None
        if side is None:
            continue
        rec = {**rec, side: text.normalize(rec[side], **options)}
        if language.normalize.other_script == "drop" and not scripts.in_script(rec[side], language.script):
            dropped += 1
            continue
        pairs.append(rec)
    pairs.sort(key=lambda r: bucket(r["id"], seed, "parallel"))
    return pairs[:limit], dropped


def summary(splits: dict[str, list[dict[str, Any]]], lang: str) -> dict[str, Any]:
    """Sizes per split and language, and the realised English share of train."""
    out: dict[str, Any] = {}
    for name, recs in splits.items():
        langs = Counter(r.get("lang", "") for r in recs)
        out[name] = len(recs)
        for code, n in sorted(langs.items()):
            out[f"{name}_{code}"] = n
    train = splits.get("train", [])
    out["train_english_share"] = round(sum(r.get("lang") == "en" for r in train) / max(1, len(train)), 4)
    out["target_lang"] = lang
    return out


def check_disjoint(splits: dict[str, list[dict[str, Any]]]) -> None:
    """Raise if any id or group key appears in two splits (a leak)."""
    owner: dict[str, str] = {}
    for name, recs in splits.items():
        for rec in recs:
            for key in {rec["id"], group_key(rec)}:
                if owner.setdefault(key, name) != name:
                    raise LangliftError(f"split leak: {key} is in both {owner[key]} and {name}")
