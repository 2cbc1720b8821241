"""Read the sources declared in params and normalise them to the record schemas.

A source is a local file or folder (JSON, JSONL, CSV, Parquet, plain text, CoNLL-U), a Hugging Face
dataset (``uri: hf:owner/name``) or an http(s) URL (downloaded once into a content-addressed cache).
Field names of Alpaca, alpaca-gpt4, Dolly, ShareGPT (``conversations``) and chat ``messages`` are
recognised; ``fields`` in the source maps any other names. Each source reports what it read, kept and
skipped, and its sha256 or revision, for the manifest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from langlift import records
from langlift.errors import DataError, LangliftError
from langlift.io import atomic_path

log = logging.getLogger(__name__)

FORMATS = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
           ".txt": "text", ".conllu": "conllu"}
URL_CACHE = Path(".cache/fetch")
ERRORS_KEPT = 5  # per source, in the manifest, when strict is off

# Source field names per schema field, first match wins (Alpaca, Dolly, prompt/response styles).
ALIASES = {
    "instruction": ("instruction", "prompt", "question", "query"),
    "input": ("input", "context"),
    "output": ("output", "response", "completion", "answer"),
    "text": ("text", "content", "document"),
    "src": ("src", "source_text"),
    "tgt": ("tgt", "target_text"),
}
CHAT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
              "system": "system"}


@dataclass
class Source:
    """One entry of ``fetch.sources`` in params.yaml."""

    name: str
    kind: str
    uri: str
    license: str = "unknown"
    lang: str | None = None
    src_lang: str | None = None
    tgt_lang: str | None = None
    tgt_uri: str | None = None
    format: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    unit: str = "line"  # plain text: one document per line, per blank-line paragraph, or per file
    detokenize: bool = False
    split: str = "train"
    config: str | None = None
    revision: str | None = None
    streaming: bool = False

    @classmethod
    def from_params(cls, spec: dict[str, Any], default_lang: str) -> Source:
        """Validate one params entry; unknown keys and missing ones are clear errors."""
        where = f"params.yaml: fetch.sources[{spec.get('name', '?')}]"
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise LangliftError(f"{where}: unknown keys {sorted(unknown)}")
        for key in ("name", "kind", "uri"):
            if not spec.get(key):
                raise LangliftError(f"{where}: '{key}' is required")
        if spec["kind"] not in records.KINDS:
            raise LangliftError(f"{where}: kind {spec['kind']!r} is not one of {sorted(records.KINDS)}")
        src = cls(**spec)
        if src.kind == "parallel":
            if not (src.src_lang and src.tgt_lang):
                raise LangliftError(f"{where}: parallel sources need src_lang and tgt_lang")
        else:
            src.lang = src.lang or default_lang
        if src.unit not in ("line", "paragraph", "file"):
            raise LangliftError(f"{where}: unit must be line, paragraph or file")
        return src


@dataclass
class Fetched:
    """Records of one source plus what the manifest says about it."""

    records: list[dict[str, Any]]
    info: dict[str, Any]


# --- locating and reading raw rows -----------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, cache: Path = URL_CACHE) -> Path:
    """Download ``url`` once into the cache (atomically) and return the local file."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    target = cache / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if target.exists():
        return target
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, atomic_path(target) as tmp, open(tmp, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name) as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        raise LangliftError(f"cannot download {url}: {e}; download it yourself and set uri to the local path") from None
    return target


def _files(uri: str) -> list[Path]:
    path = Path(uri)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS)
        if not found:
            raise LangliftError(f"{path}: folder has no files of a known format ({', '.join(FORMATS)})")
        return found
    if not path.exists():
        raise LangliftError(f"{path}: no such file or folder")
    return [path]


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(path, line, None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _lines(path: Path) -> Iterator[tuple[int, str | DataError]]:
    """Yield ``(line number, text)``; a line that is not UTF-8 comes as a :class:`DataError` to skip or raise."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield lineno, DataError(path, lineno, None, f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)")


def _rows(path: Path, fmt: str, unit: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(line or item number, row)`` from one local file; a row may be a :class:`DataError`."""
    if fmt == "jsonl":
        for lineno, line in _lines(path):
            if isinstance(line, DataError) or not line.strip():
                yield lineno, line
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, DataError(path, lineno, None, f"malformed JSON: {e.msg} (column {e.colno})")
    elif fmt == "json":
        text = _decode(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, None, f"malformed JSON: {e.msg} (column {e.colno})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(path, None, None, "expected a JSON array of records (or {\"data\": [...]})")
        yield from enumerate(data, 1)
    elif fmt in ("csv", "tsv"):
        reader = csv.DictReader(io.StringIO(_decode(path), newline=""), delimiter="," if fmt == "csv" else "\t")
        for row in reader:
            yield reader.line_num, row
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield i, row
    elif fmt == "text" and unit == "line":
        for lineno, line in _lines(path):
            yield lineno, line if isinstance(line, DataError) or not line.strip() else {"text": line}
    elif fmt == "text":
        text = _decode(path)
        if unit == "file":
            yield 1, {"text": text}
        elif unit == "paragraph":
            lineno = 1
            for block in re.split(r"(\n\s*\n)", text):
                if block.strip() and not block.isspace():
                    yield lineno, {"text": block.strip("\n")}
                lineno += block.count("\n")
    elif fmt == "conllu":
        for lineno, line in enumerate(_decode(path).splitlines(), 1):
            if line.startswith("# text = "):
                yield lineno, {"text": line[len("# text = "):]}
    else:
        raise LangliftError(f"{path}: unknown format {fmt!r}; use one of {sorted(set(FORMATS.values()))}")


def _hub_rows(src: Source) -> tuple[Iterator[tuple[int, Any]], dict[str, Any]]:
    import datasets

    repo = src.uri[len("hf:"):]
    try:
        ds = datasets.load_dataset(repo, src.config, split=src.split, revision=src.revision, streaming=src.streaming)
    except Exception as e:  # datasets raises many types for "not reachable / not cached"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = (
            "HF_HUB_OFFLINE=1 is set and the dataset is not in the local cache: "
            if offline
            else "the hub could not be reached and the dataset is not cached: "
        )
        raise LangliftError(
            f"source '{src.name}': cannot load Hugging Face dataset '{repo}' ({type(e).__name__}: {e}). {hint}"
            f"run `huggingface-cli download --repo-type dataset {repo}` where there is network (then set "
            f"HF_HUB_OFFLINE=1), or download the files and set uri to the local path"
        ) from None
    revision = getattr(getattr(ds, "info", None), "version", None)
    info = {"hub_id": repo, "config": src.config, "split": src.split, "revision": src.revision or str(revision)}
    return ((i, row) for i, row in enumerate(ds, 1)), info


# --- normalising rows to records -------------------------------------------------------------------

def _pick(row: dict[str, Any], name: str, fields: dict[str, str], where: tuple[Path | str, int]) -> Any:
    if name in fields:
        if fields[name] not in row:
            raise DataError(where[0], where[1], fields[name], f"missing (mapped to '{name}' in fetch.sources)")
        return row[fields[name]]
    for alias in ALIASES.get(name, (name,)):
        if alias in row:
            return row[alias]
    return None


def _from_chat(turns: list[Any], where: tuple[Path | str, int]) -> tuple[str, str, int]:
    """First user→assistant exchange of a ShareGPT/messages conversation, and how many turns were dropped."""
    user = assistant = None
    for turn in turns:
        if not isinstance(turn, dict):
            raise DataError(where[0], where[1], "messages", "each turn must be an object")
        role = CHAT_ROLES.get(str(turn.get("role", turn.get("from", ""))).lower())
        text = turn.get("content", turn.get("value"))
        if role == "user" and user is None:
            user = text
        elif role == "assistant" and user is not None and assistant is None:
            assistant = text
    if user is None or assistant is None:
        raise DataError(where[0], where[1], "messages", "no user turn followed by an assistant turn")
    return user, assistant, max(0, len(turns) - 2)


def detokenize(text: str) -> str:
    """Undo Moses-style tokenisation (spaces around punctuation) in test sets such as X-WMT."""
    text = re.sub(r"\s+([.,;:!?%)\]}»”’])", r"\1", text)
    text = re.sub(r"([(\[{«“‘])\s+", r"\1", text)
    text = re.sub(r'"\s+(.*?)\s+"', r'"\1"', text)
    return text.strip()


def _to_record(src: Source, row: Any, where: tuple[Path | str, int], counts: Counter) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(where[0], where[1], None, f"expected an object, got {type(row).__name__}")
    if src.kind == "instructions":
        turns = row.get("messages", row.get("conversations"))
        if turns is not None and "instruction" not in src.fields:
            if not isinstance(turns, list):
                raise DataError(where[0], where[1], "messages", "expected a list of turns")
            instruction, output, dropped = _from_chat(turns, where)
            inp = ""
            counts["multi_turn_truncated"] += dropped > 0
        else:
            instruction, inp, output = (_pick(row, f, src.fields, where) for f in ("instruction", "input", "output"))
        fields = {"instruction": instruction, "input": "" if inp is None else inp, "output": output, "lang": src.lang}
    elif src.kind == "corpus":
        text = _pick(row, "text", src.fields, where)
        if isinstance(text, str) and src.detokenize:
            text = detokenize(text)
        fields = {"text": text, "lang": src.lang}
    else:
        pair = row.get("translation") if isinstance(row.get("translation"), dict) else row
        src_text = _pick(pair, "src", src.fields, where) or pair.get(src.src_lang)
        tgt_text = _pick(pair, "tgt", src.fields, where) or pair.get(src.tgt_lang)
        if src.detokenize:
            src_text, tgt_text = (detokenize(t) if isinstance(t, str) else t for t in (src_text, tgt_text))
        fields = {"src": src_text, "tgt": tgt_text, "src_lang": src.src_lang, "tgt_lang": src.tgt_lang}
    records.validate(src.kind, fields, where[0], where[1])
    return records.make(src.kind, src.name, **fields)


def _parallel_text_rows(src: Source) -> Iterator[tuple[int, Any]]:
    """Line-aligned plain-text files: ``uri`` holds the source side, ``tgt_uri`` the target side."""
    src_path, tgt_path = Path(src.uri), Path(src.tgt_uri or "")
    for p in (src_path, tgt_path):
        if not p.is_file():
            raise LangliftError(f"source '{src.name}': {p}: no such file")
    src_lines, tgt_lines = _decode(src_path).splitlines(), _decode(tgt_path).splitlines()
    if len(src_lines) != len(tgt_lines):
        raise LangliftError(
            f"source '{src.name}': {src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}: "
            "line-aligned parallel files must match"
        )
    for lineno, (s, t) in enumerate(zip(src_lines, tgt_lines), 1):
        yield lineno, {"src": s, "tgt": t}


def fetch_source(src: Source, strict: bool) -> Fetched:
    """Read one source into normalised records; bad records raise (strict) or are counted and skipped."""
    counts: Counter = Counter()
    errors: list[str] = []
    info: dict[str, Any] = {"name": src.name, "kind": src.kind, "uri": src.uri, "license": src.license}

    def located_rows() -> Iterator[tuple[Path | str, int, Any]]:
        if src.uri.startswith("hf:"):
            rows, hub = _hub_rows(src)
            info.update(hub)
            yield from ((f"hf:{hub['hub_id']}", i, row) for i, row in rows)
            return
        if src.kind == "parallel" and src.tgt_uri:
            info["files"] = {p: _sha256(Path(p)) for p in (src.uri, src.tgt_uri) if Path(p).is_file()}
            yield from ((src.uri, i, row) for i, row in _parallel_text_rows(src))
            return
        local = download(src.uri) if src.uri.startswith(("http://", "https://")) else None
        paths = [local] if local else _files(src.uri)
        info["files"] = {str(p): _sha256(p) for p in paths}
        for path in paths:
            fmt = src.format or FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise LangliftError(f"{path}: cannot tell the format from the extension; set 'format' in the source")
            yield from ((path, i, row) for i, row in _rows(path, fmt, src.unit))

    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path, lineno, row in located_rows():
        if src.limit is not None and len(out) >= src.limit:
            break
        if isinstance(row, str):  # a blank line
            continue
        counts["read"] += 1
        try:
            if isinstance(row, DataError):
                raise row
            rec = _to_record(src, row, (path, lineno), counts)
        except DataError as e:
            if strict:
                raise
            counts["skipped_bad"] += 1
            if len(errors) < ERRORS_KEPT:
                errors.append(str(e))
            continue
        if rec["id"] in seen:
            counts["duplicate"] += 1
            continue
        seen.add(rec["id"])
        out.append(rec)
    if not out:
        raise LangliftError(
            f"source '{src.name}' ({src.uri}): no usable records"
            + (f" ({counts['skipped_bad']} bad, e.g. {errors[0]})" if errors else " (empty)")
        )
    info["counts"] = {"read": counts["read"], "kept": len(out), "skipped_bad": counts["skipped_bad"],
                      "duplicate": counts["duplicate"], "multi_turn_truncated": counts["multi_turn_truncated"]}
    if errors:
        info["errors"] = errors
    log.info("%s: %d %s records kept of %d read", src.name, len(out), src.kind, counts["read"])
    return Fetched(out, info)


def fetch_all(sources: list[Source], strict: bool) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Fetch every source; return records by kind (ids unique per kind) and the manifest entries."""
    names = [s.name for s in sources]
    if len(names) != len(set(names)):
        raise LangliftError(f"params.yaml: fetch.sources: duplicate source names {sorted(n for n in names if names.count(n) > 1)}")
    by_kind: dict[str, list[dict[str, Any]]] = {k: [] for k in records.KINDS}
    seen: dict[str, set[str]] = {k: set() for k in records.KINDS}
    manifest = []
    for src in sources:
        fetched = fetch_source(src, strict)
        dup = 0
        for rec in fetched.records:
            if rec["id"] in seen[src.kind]:
                dup += 1
                continue
            seen[src.kind].add(rec["id"])
            by_kind[src.kind].append(rec)
        fetched.info["counts"]["duplicate_of_earlier_source"] = dup
        manifest.append(fetched.info)
    return by_kind, manifest
