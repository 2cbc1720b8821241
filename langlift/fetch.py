"""Read the sources declared in params and normalise them to the record schemas.

A source is a local file or folder (JSON, JSONL, CSV, Parquet, plain text, CoNLL-U), a Hugging Face
dataset (``uri: hf:owner/name``) or an http(s) URL (downloaded once into a content-addressed cache, at most
``MAX_DOWNLOAD_BYTES``).
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
import shutil
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from langlift import records
from langlift.errors import DataError, LangliftError
from langlift.params import FetchSource

log = logging.getLogger(__name__)

FORMATS = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
           ".txt": "text", ".conllu": "conllu"}
URL_CACHE = Path(".cache/fetch")
MAX_DOWNLOAD_BYTES = 5 << 30  # per URL source; larger files: download them yourself and point uri at them
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
_JSON = json.JSONDecoder()
_JSON_WS = re.compile(r"[ \t\n\r]*")
_SURROGATES = re.compile("[\ud800-\udfff]")
CHAT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
              "system": "system"}


def with_default_lang(sources: list[FetchSource], lang: str) -> list[FetchSource]:
    """The sources with ``lang`` filled in where a monolingual source leaves it out."""
    return [s if s.kind == "parallel" or s.lang else s.model_copy(update={"lang": lang}) for s in sources]


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


def download(url: str, cache: Path = URL_CACHE, max_bytes: int = MAX_DOWNLOAD_BYTES) -> Path:
    """Download ``url`` once into the cache and return the local file.

    The bytes go to ``<name>.part`` beside the target, renamed over it once complete; a ``.part`` left by a
    killed run is removed by the next one, and any failure removes it at once. More than ``max_bytes``
    (declared or streamed) or fewer bytes than declared is an error naming the URL.
    """
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    target = cache / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if target.exists():
        return target
    part = target.with_name(target.name + ".part")
    _remove_leftovers(part)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as f:
            _stream(url, resp, f, max_bytes)
        os.replace(part, target)
    except OSError as e:
        raise LangliftError(f"cannot download {url}: {e}; download it yourself and set uri to the local path") from None
    finally:
        part.unlink(missing_ok=True)
    return target


def _remove_leftovers(part: Path) -> None:
    """Remove what an interrupted download of the same URL left: its ``.part`` and older temporary folders."""
    part.parent.mkdir(parents=True, exist_ok=True)
    part.unlink(missing_ok=True)
    for tmp in part.parent.glob(f".{part.name.removesuffix('.part')}.*"):  # atomic_path's, from earlier versions
        shutil.rmtree(tmp, ignore_errors=True)


def _stream(url: str, resp: Any, out: BinaryIO, max_bytes: int) -> None:
    """Copy an HTTP response to ``out``, refusing more than ``max_bytes`` and fewer bytes than declared."""
    declared = int(resp.headers.get("Content-Length") or 0) or None
    too_big = f"{url}: download is {{}} bytes, over the {max_bytes}-byte limit (MAX_DOWNLOAD_BYTES in " \
              "langlift/fetch.py); download it yourself and set uri to the local path"
    if declared and declared > max_bytes:
        raise LangliftError(too_big.format(declared))
    got = 0
    with tqdm(total=declared, unit="B", unit_scale=True, desc=Path(out.name).name) as bar:
        for chunk in iter(lambda: resp.read1(1 << 20), b""):
            got += len(chunk)
            if got > max_bytes:
                raise LangliftError(too_big.format(f"more than {max_bytes}"))
            out.write(chunk)
            bar.update(len(chunk))
    if declared and got != declared:
        raise LangliftError(f"{url}: download incomplete: got {got} of {declared} bytes (the connection closed "
                            "early); run the stage again")


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


def read_utf8(path: Path, lenient: bool = False) -> str:
    """A text file as UTF-8, with or without a BOM; bad bytes raise a ``file:line`` error.

    ``lenient`` keeps them instead as lone surrogates (``surrogateescape``), for the record that holds
    them to be reported or skipped by :func:`_check_utf8`.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig", "surrogateescape" if lenient else "strict")
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


def _check_utf8(row: dict[str, Any], where: tuple[Path | str, int | None]) -> None:
    """Raise if a string of ``row`` holds lone surrogates: bytes that were not UTF-8 (or a bad JSON escape)."""
    for key, value in row.items():
        if _has_surrogates(key) or _has_surrogates(value):
            raise DataError(where[0], where[1], None, f"not valid UTF-8 (in '{_SURROGATES.sub('?', str(key))}')")


def _has_surrogates(value: Any) -> bool:
    if isinstance(value, str):
        return not value.isascii() and _SURROGATES.search(value) is not None
    if isinstance(value, dict):
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(_has_surrogates, value))
    return False


def _json_items(path: Path, text: str) -> Iterator[tuple[tuple[Path | str, int | None], Any]]:
    """Yield ``(where, item)`` of a JSON array, or of the ``data`` array of a JSON object.

    ``where`` is the line the item starts on, or ``"path, item N"`` when items share lines (compact JSON).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, f"malformed JSON: {e.msg} (column {e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        start = _member_offset(text, "data")
    elif isinstance(data, list):
        start = _skip_ws(text, 0)
    else:
        raise DataError(path, None, None, "expected a JSON array of records (or {\"data\": [...]})")
    lines, line, counted = [], 1, 0
    for offset in _array_offsets(text, start):
        line += text.count("\n", counted, offset)
        counted = offset
        lines.append(line)
    items = data["data"] if isinstance(data, dict) else data
    if len(set(lines)) < len(lines):
        yield from (((f"{path}, item {i}", None), item) for i, item in enumerate(items, 1))
    else:
        yield from (((path, line), item) for line, item in zip(lines, items))


def _skip_ws(text: str, i: int) -> int:
    return _JSON_WS.match(text, i).end()


def _array_offsets(text: str, i: int) -> Iterator[int]:
    """The offset of each element of the (valid) JSON array opening at ``text[i]``."""
    i = _skip_ws(text, i + 1)
    while text[i] != "]":
        yield i
        i = _skip_ws(text, _JSON.raw_decode(text, i)[1])
        if text[i] == ",":
            i = _skip_ws(text, i + 1)


def _member_offset(text: str, key: str) -> int:
    """Offset of the value of ``key`` (the last, as json.loads keeps) in the (valid) JSON object of ``text``."""
    i, found = _skip_ws(text, _skip_ws(text, 0) + 1), -1
    while text[i] != "}":
        name, end = _JSON.raw_decode(text, i)
        i = _skip_ws(text, _skip_ws(text, end) + 1)  # past the ':'
        if name == key:
            found = i
        i = _skip_ws(text, _JSON.raw_decode(text, i)[1])
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
    return found


def _rows(path: Path, fmt: str, unit: str) -> Iterator[tuple[tuple[Path | str, int | None], Any]]:
    """Yield ``(where, row)`` from one local file, ``where`` being ``(path, line)`` or ``("path, row N", None)``
    where rows are not lines (Parquet, compact JSON).

    A row may be a :class:`DataError` (a line that is not JSON or not UTF-8) or a blank line's text.
    """
    if fmt == "jsonl":
        for lineno, line in _lines(path):
            if isinstance(line, DataError) or not line.strip():
                yield (path, lineno), line
                continue
            try:
                yield (path, lineno), json.loads(line)
            except json.JSONDecodeError as e:
                yield (path, lineno), DataError(path, lineno, None, f"malformed JSON: {e.msg} (column {e.colno})")
    elif fmt == "json":
        yield from _json_items(path, read_utf8(path, lenient=True))
    elif fmt in ("csv", "tsv"):
        text = read_utf8(path, lenient=True)
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t")
        for row in reader:
            yield (path, reader.line_num), row
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield (f"{path}, row {i}", None), row
    elif fmt == "text" and unit == "line":
        for lineno, line in _lines(path):
            yield (path, lineno), line if isinstance(line, DataError) or not line.strip() else {"text": line}
    elif fmt == "text":
        text = read_utf8(path, lenient=True)
        if unit == "file":
            yield (path, None), {"text": text}
        elif unit == "paragraph":
            lineno = 1
            for block in re.split(r"(\n\s*\n)", text):
                if block.strip() and not block.isspace():
                    yield (path, lineno), {"text": block.strip("\n")}
                lineno += block.count("\n")
    elif fmt == "conllu":
        for lineno, line in enumerate(read_utf8(path, lenient=True).splitlines(), 1):
            if line.startswith("# text = "):
                yield (path, lineno), {"text": line[len("# text = "):]}
    else:
        raise LangliftError(f"{path}: unknown format {fmt!r}; use one of {sorted(set(FORMATS.values()))}")


def _hub_rows(src: FetchSource) -> tuple[Iterator[tuple[tuple[str, None], Any]], dict[str, Any]]:
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
    return (((f"hf:{repo}, row {i}", None), row) for i, row in enumerate(ds, 1)), info


# --- normalising rows to records -------------------------------------------------------------------

def _pick(row: dict[str, Any], name: str, fields: dict[str, str], where: tuple[Path | str, int | None]) -> Any:
    if name in fields:
        if fields[name] not in row:
            raise DataError(where[0], where[1], fields[name], f"missing (mapped to '{name}' in fetch.sources)")
        return row[fields[name]]
    for alias in ALIASES.get(name, (name,)):
        if alias in row:
            return row[alias]
    return None


def _from_chat(turns: list[Any], where: tuple[Path | str, int | None]) -> tuple[str, str, int]:
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


def _to_record(src: FetchSource, row: Any, where: tuple[Path | str, int | None], counts: Counter) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(where[0], where[1], None, f"expected an object, got {type(row).__name__}")
    _check_utf8(row, where)
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


def _parallel_text_rows(src: FetchSource) -> Iterator[tuple[tuple[Path, int], Any]]:
    """Line-aligned plain-text files: ``uri`` holds the source side, ``tgt_uri`` the target side."""
    src_path, tgt_path = Path(src.uri), Path(src.tgt_uri or "")
    for p in (src_path, tgt_path):
        if not p.is_file():
            raise LangliftError(f"source '{src.name}': {p}: no such file")
    src_lines, tgt_lines = (read_utf8(p, lenient=True).splitlines() for p in (src_path, tgt_path))
    if len(src_lines) != len(tgt_lines):
        raise LangliftError(
            f"source '{src.name}': {src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}: "
            "line-aligned parallel files must match"
        )
    for lineno, (s, t) in enumerate(zip(src_lines, tgt_lines), 1):
        yield (src_path, lineno), {"src": s, "tgt": t}


def fetch_source(src: FetchSource, strict: bool) -> Fetched:
    """Read one source into normalised records; bad records raise (strict) or are counted and skipped."""
    counts: Counter = Counter()
    reasons: Counter = Counter()
    first_skip = ""
    errors: list[str] = []
    info: dict[str, Any] = {"name": src.name, "kind": src.kind, "uri": src.uri, "license": src.license}

    def located_rows() -> Iterator[tuple[tuple[Path | str, int | None], Any]]:
        if src.uri.startswith("hf:"):
            rows, hub = _hub_rows(src)
            info.update(hub)
            yield from rows
            return
        if src.kind == "parallel" and src.tgt_uri:
            info["files"] = {p: _sha256(Path(p)) for p in (src.uri, src.tgt_uri) if Path(p).is_file()}
            yield from _parallel_text_rows(src)
            return
        local = download(src.uri) if src.uri.startswith(("http://", "https://")) else None
        paths = [local] if local else _files(src.uri)
        info["files"] = {str(p): _sha256(p) for p in paths}
        for path in paths:
            fmt = src.format or FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise LangliftError(f"{path}: cannot tell the format from the extension; set 'format' in the source")
            yield from _rows(path, fmt, src.unit)

    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for where, row in located_rows():
        if src.limit is not None and len(out) >= src.limit:
            break
        if isinstance(row, str):  # a blank line
            continue
        counts["read"] += 1
        try:
            if isinstance(row, DataError):
                raise row
            rec = _to_record(src, row, where, counts)
        except DataError as e:
            if strict:
                raise
            counts["skipped_bad"] += 1
            reasons[_reason(e)] += 1
            first_skip = first_skip or _location(e)
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
        info["skipped_reasons"] = dict(reasons.most_common())
        n = counts["skipped_bad"]
        log.warning("%s: %d record%s skipped (%s), first at %s", src.name, n, "" if n == 1 else "s",
                    ", ".join(f"{c} {r}" for r, c in reasons.most_common()), first_skip)
    log.info("%s: %d %s records kept of %d read", src.name, len(out), src.kind, counts["read"])
    return Fetched(out, info)


def _location(e: DataError) -> str:
    return e.path if e.line is None else f"{e.path}:{e.line}"


def _reason(e: DataError) -> str:
    """The kind of fault of a skipped record, for the summary: "empty field 'text'", "not valid UTF-8"."""
    message = str(e)[len(_location(e)) + 2:].removeprefix(f"field '{e.field}': ")
    head = re.split(r"[:(,]", message, maxsplit=1)[0].strip()
    return f"{head} field '{e.field}'" if e.field else head


def summary(by_kind: dict[str, list[dict[str, Any]]], manifest: list[dict[str, Any]]) -> str:
    """One line for the stage to print: records per kind, and the bad records skipped per source."""
    line = " ".join(f"{kind}={len(recs)}" for kind, recs in by_kind.items())
    skipped = {m["name"]: m["counts"]["skipped_bad"] for m in manifest if m["counts"]["skipped_bad"]}
    if skipped:
        n = sum(skipped.values())
        line += (f"; {n} bad record{'' if n == 1 else 's'} skipped ("
                 + ", ".join(f"{name} {k}" for name, k in skipped.items()) + ")")
    return line


def fetch_all(sources: list[FetchSource], strict: bool) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
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
