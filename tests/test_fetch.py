"""fetch: every format and field convention, stable ids, the manifest, and each kind of bad input."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import re
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import AZ_DATA, REPO, SAMPLES, write_jsonl

from langlift import records
from langlift.errors import DataError, LangliftError
from langlift.fetch import detokenize, download, fetch_all, fetch_source, summary, with_default_lang
from langlift.params import FetchSource
from langlift.translate.memory import MemoryBackend


def source(**spec) -> FetchSource:
    spec.setdefault("name", "test")
    spec.setdefault("kind", "instructions")
    spec = {k: str(v) if k in ("uri", "tgt_uri") else v for k, v in spec.items()}
    return with_default_lang([FetchSource(**spec)], "az")[0]


def test_alpaca_sample_normalised_with_stable_content_ids():
    src = source(uri=SAMPLES / "instructions" / "alpaca_5000.en.json", lang="en", limit=300)
    first = fetch_source(src, strict=True)
    again = fetch_source(src, strict=True)
    assert [r["id"] for r in first.records] == [r["id"] for r in again.records]
    rec = first.records[0]
    assert list(rec) == ["id", "instruction", "input", "output", "lang", "source"]
    assert rec["id"] == records.record_id("instructions", rec)
    assert rec["lang"] == "en" and rec["source"] == "test"
    assert first.info["counts"]["kept"] == 300
    assert len(first.info["files"]) == 1 and len(next(iter(first.info["files"].values()))) == 64


def test_ids_do_not_depend_on_position(tmp_path):
    rows = [{"instruction": f"Say {i}.", "output": str(i)} for i in range(5)]
    a = fetch_source(source(uri=write_jsonl(tmp_path / "a.jsonl", rows)), strict=True).records
    b = fetch_source(source(uri=write_jsonl(tmp_path / "b.jsonl", rows[::-1])), strict=True).records
    assert {r["id"] for r in a} == {r["id"] for r in b}


@pytest.mark.parametrize(
    "row",
    [
        {"instruction": "Name a fruit.", "input": "", "output": "Apple."},                      # Alpaca
        {"instruction": "Name a fruit.", "context": "", "response": "Apple.", "category": "qa"},  # Dolly
        {"conversations": [{"from": "human", "value": "Name a fruit."}, {"from": "gpt", "value": "Apple."}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."},
                      {"role": "assistant", "content": "Apple."}]},
    ],
    ids=["alpaca", "dolly", "sharegpt", "messages"],
)
def test_instruction_field_conventions(tmp_path, row):
    recs = fetch_source(source(uri=write_jsonl(tmp_path / "x.jsonl", [row])), strict=True).records
    assert (recs[0]["instruction"], recs[0]["input"], recs[0]["output"]) == ("Name a fruit.", "", "Apple.")


def test_custom_field_mapping(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"q": "Why?", "a": "Because."}])
    recs = fetch_source(source(uri=path, fields={"instruction": "q", "output": "a"}), strict=True).records
    assert recs[0]["instruction"] == "Why?" and recs[0]["output"] == "Because."


def test_csv_parquet_text_conllu_and_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_text("instruction,input,output\nAdd 2 and 2.,,4\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([{"instruction": "Add 3 and 3.", "input": "", "output": "6"}]),
                   tmp_path / "d" / "b.parquet")
    recs = fetch_source(source(uri=tmp_path / "d"), strict=True).records
    assert [r["output"] for r in recs] == ["4", "6"]

    text = tmp_path / "c.txt"
    text.write_text("Birinci abzas.\nDavamı.\n\nİkinci abzas.\n", encoding="utf-8")
    assert len(fetch_source(source(kind="corpus", uri=text), strict=True).records) == 3
    paras = fetch_source(source(kind="corpus", uri=text, unit="paragraph"), strict=True).records
    assert [r["text"] for r in paras] == ["Birinci abzas.\nDavamı.", "İkinci abzas."]

    ud = fetch_source(source(kind="corpus", uri=AZ_DATA / "ud_az_tuecl-test.conllu"), strict=True)
    assert ud.records[0]["text"] == "Qız yoldaşına namə yazdı."
    assert ud.info["counts"]["read"] == 148


def test_parallel_line_aligned_and_hf_style(tmp_path):
    src = source(kind="parallel", uri=AZ_DATA / "tatoeba.aze-eng.en.txt",
                 tgt_uri=AZ_DATA / "tatoeba.aze-eng.az.txt", src_lang="en", tgt_lang="az")
    recs = fetch_source(src, strict=True).records
    assert recs[0]["tgt"] == "105-ci otaq haradadır?" and recs[0]["src_lang"] == "en"
    path = write_jsonl(tmp_path / "p.jsonl", [{"translation": {"en": "Hello.", "az": "Salam."}}])
    hf_style = fetch_source(source(kind="parallel", uri=path, src_lang="en", tgt_lang="az"), strict=True).records
    assert (hf_style[0]["src"], hf_style[0]["tgt"]) == ("Hello.", "Salam.")


def test_parallel_files_of_different_length_are_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("bir\n", encoding="utf-8")
    with pytest.raises(LangliftError, match="has 2 lines but .* has 1"):
        fetch_source(source(kind="parallel", uri=tmp_path / "a.txt", tgt_uri=tmp_path / "b.txt", src_lang="en",
                            tgt_lang="az"), strict=True)


def test_detokenize_xwmt_style():
    assert detokenize("Rəsmilər , son məlumatlara görə , danışdı .") == "Rəsmilər, son məlumatlara görə, danışdı."
    assert detokenize('O dedi : " Gəl ( tez ) ! "') == 'O dedi: "Gəl (tez)!"'


BAD_LINES = {
    "malformed": (b'{"instruction": "x", "output": \n', r"bad\.jsonl:2: malformed JSON"),
    "missing": (b'{"instruction": "x"}\n', r"bad\.jsonl:2: field 'output': missing"),
    "empty": (b'{"instruction": "  ", "output": "y"}\n', r"bad\.jsonl:2: field 'instruction': empty"),
    "wrong_type": (b'{"instruction": "x", "output": 5}\n', r"bad\.jsonl:2: field 'output': expected a string"),
    "not_utf8": (b'{"instruction": "\xff\xfe", "output": "y"}\n', r"bad\.jsonl:2: not valid UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_record_strict_error_names_file_line_field(tmp_path, case):
    line, pattern = BAD_LINES[case]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"instruction": "good", "output": "fine"}\n' + line + b'{"instruction": "z", "output": "w"}\n')
    with pytest.raises(DataError, match=pattern):
        fetch_source(source(uri=path), strict=True)
    lenient = fetch_source(source(uri=path), strict=False)
    assert [r["instruction"] for r in lenient.records] == ["good", "z"]
    assert lenient.info["counts"]["skipped_bad"] == 1
    assert "bad.jsonl:2" in lenient.info["errors"][0]


def test_empty_source_and_missing_file_are_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(LangliftError, match="no usable records"):
        fetch_source(source(uri=tmp_path / "empty.jsonl"), strict=False)
    with pytest.raises(LangliftError, match="no such file"):
        fetch_source(source(uri=tmp_path / "nope.json"), strict=True)


def test_duplicates_counted_within_and_across_sources(tmp_path):
    row = {"instruction": "Same.", "output": "Same."}
    a = write_jsonl(tmp_path / "a.jsonl", [row, row, {"instruction": "Other.", "output": "x"}])
    b = write_jsonl(tmp_path / "b.jsonl", [row])
    by_kind, manifest = fetch_all([source(name="a", uri=a), source(name="b", uri=b)], strict=True)
    assert len(by_kind["instructions"]) == 2
    assert manifest[0]["counts"]["duplicate"] == 1
    assert manifest[1]["counts"]["duplicate_of_earlier_source"] == 1


def test_monolingual_sources_default_to_the_target_language():
    corpus, english = with_default_lang([FetchSource(name="c", kind="corpus", uri="a.txt"),
                                         FetchSource(name="e", kind="instructions", uri="b.json", lang="en")], "az")
    assert (corpus.lang, english.lang) == ("az", "en")


def test_hub_id_offline_gives_instructions_not_a_traceback(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(LangliftError, match="huggingface-cli download --repo-type dataset tatsu-lab/alpaca"):
        fetch_source(source(uri="hf:tatsu-lab/alpaca", lang="en"), strict=True)


def test_url_source_downloads_once_into_cache(tmp_path, monkeypatch):
    served = tmp_path / "srv"
    write_jsonl(served / "data.jsonl", [{"text": "Bakı Azərbaycanın paytaxtıdır."}])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.chdir(tmp_path)
    try:
        url = f"http://127.0.0.1:{server.server_port}/data.jsonl"
        got = fetch_source(source(kind="corpus", uri=url), strict=True)
        server.shutdown()  # a second fetch must come from the cache
        again = fetch_source(source(kind="corpus", uri=url), strict=True)
    finally:
        server.server_close()
    assert got.records == again.records and got.records[0]["text"] == "Bakı Azərbaycanın paytaxtıdır."
    assert list(got.info["files"].values()) == list(again.info["files"].values())


def write_params(tmp_path, strict: bool, sources: list[dict]) -> None:
    """The shipped params.yaml with ``fetch`` replaced (and the language's own sources left out), into ``tmp_path``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    language = yaml.safe_load((REPO / "languages" / "az" / "language.yaml").read_text(encoding="utf-8"))
    params["language"] = {k: v for k, v in language.items() if k != "sources"}  # inline, as params allow
    params["fetch"] = {"strict": strict, "sources": sources}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")


def test_stage_writes_outputs_and_fails_cleanly(tmp_path):
    good = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Hi.", "output": "Hello."}])
    write_params(tmp_path, True, [{"name": "x", "kind": "instructions", "uri": str(good), "lang": "en",
                                   "license": "CC0"}])
    run = subprocess.run([sys.executable, str(REPO / "stages" / "fetch.py")], cwd=tmp_path, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((tmp_path / "data" / "raw" / "manifest.json").read_text())
    assert manifest["sources"][0]["license"] == "CC0" and manifest["totals"]["instructions"] == 1

    (tmp_path / "in.jsonl").write_text('{"instruction": "Hi."}\n', encoding="utf-8")
    before = (tmp_path / "data" / "raw" / "instructions.jsonl").read_text()
    run = subprocess.run([sys.executable, str(REPO / "stages" / "fetch.py")], cwd=tmp_path, capture_output=True,
                         text=True)
    assert run.returncode == 1
    assert "in.jsonl:1: field 'output': missing" in run.stderr and "Traceback" not in run.stderr
    assert (tmp_path / "data" / "raw" / "instructions.jsonl").read_text() == before  # nothing half-written


# --- downloads: size cap, truncated and interrupted downloads ---------------------------------------

NTREX_AZ = AZ_DATA / "ntrex128.az.txt"


class FileServer:
    """Serve one file's bytes on 127.0.0.1, whole or faulty: ``mode`` is read per request.

    full: with Content-Length; no_length: streamed, the end marked by closing the connection;
    truncated: Content-Length of the whole but only half the bytes; stall: two thirds of the bytes, then wait.
    """

    def __init__(self, data: bytes, mode: str = "full"):
        self.data, self.mode, self.release = data, mode, threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                data, mode = server.data, server.mode
                self.send_response(200)
                if mode != "no_length":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    if mode == "truncated":
                        self.wfile.write(data[: len(data) // 2])
                    elif mode == "stall":
                        self.wfile.write(data[: len(data) * 2 // 3])
                        self.wfile.flush()
                        server.release.wait(30)
                    else:
                        for i in range(0, len(data), 8192):
                            self.wfile.write(data[i:i + 8192])
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/ntrex128.az.txt"

    def __enter__(self) -> FileServer:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def cache_files(cache) -> list[str]:
    """Every file and folder under the download cache, relative to it."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))


@pytest.mark.parametrize("mode", ["full", "no_length"])
def test_download_over_the_size_cap_is_refused_and_leaves_nothing(tmp_path, mode):
    data = NTREX_AZ.read_bytes()
    cache = tmp_path / "cache"
    with FileServer(data, mode) as server:
        with pytest.raises(LangliftError, match=rf"^{re.escape(server.url)}: .*over the 100000-byte limit"):
            download(server.url, cache, max_bytes=100_000)
        assert [p for p in cache.rglob("*") if p.is_file()] == []
        path = download(server.url, cache, max_bytes=len(data))  # exactly at the cap is fine
    assert path.read_bytes() == data


def test_truncated_download_is_an_error_not_a_cached_file(tmp_path):
    data = NTREX_AZ.read_bytes()
    cache = tmp_path / "cache"
    with FileServer(data, "truncated") as server:
        with pytest.raises(LangliftError, match=rf"^{re.escape(server.url)}: .*incomplete: got {len(data) // 2} of "
                                                rf"{len(data)} bytes"):
            download(server.url, cache)
        assert [p for p in cache.rglob("*") if p.is_file()] == []
        server.mode = "full"
        assert download(server.url, cache).read_bytes() == data


def test_killed_download_leaves_no_temp_file_after_the_next_run(tmp_path):
    data = NTREX_AZ.read_bytes() * 8  # 2.5 MB: a reader of 1 MiB chunks has written some before the stall
    cache = tmp_path / "cache"
    with FileServer(data, "stall") as server:
        code = "import sys; from pathlib import Path; from langlift.fetch import download; " \
               "download(sys.argv[1], Path(sys.argv[2]))"
        proc = subprocess.Popen([sys.executable, "-c", code, server.url, str(cache)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not any(p.is_file() and p.stat().st_size > 0 for p in cache.rglob("*")):
                assert proc.poll() is None and time.monotonic() < deadline, "the download never started"
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
        server.release.set()
        server.mode = "full"
        path = download(server.url, cache)
    assert path.read_bytes() == data
    assert cache_files(cache) == [path.parent.name, f"{path.parent.name}/ntrex128.az.txt"]


# --- strict: false: skips summarised per source; non-UTF-8 in JSON and CSV skipped, not fatal --------

def test_lenient_skips_are_logged_per_source_with_reasons_and_first_location(tmp_path, caplog):
    lines = NTREX_AZ.read_bytes().splitlines()[:20]
    rows = [json.dumps({"text": t.decode()}, ensure_ascii=False).encode() for t in lines]
    rows[2] = b'{"text": "  "}'
    rows[5] = b'{"text": "Bak\xc4 \xff"}'
    rows[9] = b'{"text": ""}'
    path = tmp_path / "ntrex.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    caplog.set_level(logging.INFO, logger="langlift.fetch")
    by_kind, manifest = fetch_all([source(name="ntrex128_az", kind="corpus", uri=path)], strict=False)
    assert len(by_kind["corpus"]) == 17
    assert manifest[0]["skipped_reasons"] == {"empty field 'text'": 2, "not valid UTF-8": 1}
    assert (f"ntrex128_az: 3 records skipped (2 empty field 'text', 1 not valid UTF-8), first at {path}:3"
            in caplog.messages)
    assert summary(by_kind, manifest) == "instructions=0 corpus=17 parallel=0; 3 bad records skipped (ntrex128_az 3)"


def test_stage_with_strict_false_reports_skips_and_keeps_going(tmp_path):
    lines = (AZ_DATA / "xwmt.az-en.az.txt").read_text(encoding="utf-8").splitlines()[:5]
    rows = [{"text": t} for t in lines]
    path = write_jsonl(tmp_path / "xwmt.jsonl", rows[:2] + [{"text": 7}] + rows[2:])
    write_params(tmp_path, False, [{"name": "xwmt_az", "kind": "corpus", "uri": str(path), "license": "MIT"}])
    run = subprocess.run([sys.executable, str(REPO / "stages" / "fetch.py")], cwd=tmp_path, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert f"xwmt_az: 1 record skipped (1 expected a string field 'text'), first at {path}:3" in run.stderr
    manifest = json.loads((tmp_path / "data" / "raw" / "manifest.json").read_text())
    assert manifest["sources"][0]["counts"]["skipped_bad"] == 1 and manifest["totals"]["corpus"] == 5


def alpaca_json(n: int = 6) -> str:
    """The first records of the shipped Alpaca subset, pretty-printed as shipped (one field per line)."""
    items = json.loads((SAMPLES / "instructions" / "alpaca_az_subset.en.json").read_text(encoding="utf-8"))[:n]
    return json.dumps(items, indent=1, ensure_ascii=False)


def line_of(text: str, value: str) -> int:
    """Line number of the '{' opening the JSON object that holds the string ``value``."""
    at = text.index(json.dumps(value, ensure_ascii=False))
    return text[: text.rindex("{", 0, at)].count("\n") + 1


def test_non_utf8_in_a_json_array_item_is_a_located_error_or_skipped(tmp_path):
    text = alpaca_json()
    third = json.loads(text)[2]["output"]
    quoted = json.dumps(third, ensure_ascii=False)
    path = tmp_path / "alpaca.json"  # a byte 0xff (never valid in UTF-8) at the end of the third record's output
    path.write_bytes(text.replace(quoted, quoted[:-1] + '\udcff"', 1).encode("utf-8", "surrogateescape"))
    with pytest.raises(DataError, match=rf"alpaca\.json:{line_of(text, third)}: not valid UTF-8"):
        fetch_source(source(uri=path, lang="en"), strict=True)
    lenient = fetch_source(source(uri=path, lang="en"), strict=False)
    assert lenient.info["counts"]["kept"] == 5 and lenient.info["counts"]["skipped_bad"] == 1


def test_non_utf8_in_a_csv_row_is_a_located_error_or_skipped(tmp_path):
    en = (AZ_DATA / "tatoeba.aze-eng.en.txt").read_text(encoding="utf-8").splitlines()[:10]
    az = (AZ_DATA / "tatoeba.aze-eng.az.txt").read_text(encoding="utf-8").splitlines()[:10]
    rows = [f'"{e}","{a}"'.encode() for e, a in zip(en, az)]
    rows[3] = rows[3][:-1] + b'\xe7"'  # a Latin-1 byte where UTF-8 was expected, in the 4th record (line 5)
    path = tmp_path / "tatoeba.csv"
    path.write_bytes(b"src,tgt\n" + b"\n".join(rows) + b"\n")
    spec = {"kind": "parallel", "uri": path, "src_lang": "en", "tgt_lang": "az"}
    with pytest.raises(DataError, match=r"tatoeba\.csv:5: not valid UTF-8"):
        fetch_source(source(**spec), strict=True)
    lenient = fetch_source(source(**spec), strict=False)
    assert [r["tgt"] for r in lenient.records] == az[:3] + az[4:]
    assert lenient.info["counts"]["skipped_bad"] == 1


# --- positions: JSON items by their real line, table rows as rows -----------------------------------

@pytest.mark.parametrize("wrapped", [False, True], ids=["array", "data_object"])
def test_json_array_errors_name_the_real_line_of_the_item(tmp_path, wrapped):
    text = alpaca_json()
    items = json.loads(text)
    items[4]["output"] = " "
    text = json.dumps({"version": 1, "data": items} if wrapped else items, indent=1, ensure_ascii=False)
    path = tmp_path / "alpaca.json"
    path.write_text(text, encoding="utf-8")
    line = line_of(text, items[4]["instruction"])
    assert line > 5  # not the item's position
    with pytest.raises(DataError, match=rf"alpaca\.json:{line}: field 'output': empty"):
        fetch_source(source(uri=path, lang="en"), strict=True)


def test_compact_json_errors_name_the_item_not_line_1(tmp_path):
    items = json.loads(alpaca_json())
    items[4]["output"] = " "
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")  # one line, as alpaca_5000 ships
    with pytest.raises(DataError, match=r"alpaca\.json, item 5: field 'output': empty"):
        fetch_source(source(uri=path, lang="en"), strict=True)


def test_malformed_json_names_its_line_in_either_mode(tmp_path):
    text = alpaca_json()
    fourth = json.loads(text)[3]["instruction"]
    opening = text.rindex("{", 0, text.index(fourth))
    bad = text[: text.rindex(",", 0, opening)] + text[text.rindex(",", 0, opening) + 1:]  # drop a comma
    path = tmp_path / "alpaca.json"
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(DataError, match=rf"alpaca\.json:{line_of(bad, fourth)}: malformed JSON: Expecting ','"):
        fetch_source(source(uri=path, lang="en"), strict=False)


def test_parquet_errors_name_the_row_not_a_line(tmp_path):
    rows = json.loads(alpaca_json(4))
    rows[2]["output"] = ""
    path = tmp_path / "alpaca.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"alpaca\.parquet, row 3: field 'output': empty"):
        fetch_source(source(uri=path, lang="en"), strict=True)


# --- the translation memory reads UTF-8 with a BOM, as fetch does -----------------------------------

def test_translation_memory_accepts_a_utf8_bom(tmp_path):
    shipped = REPO / "languages" / "az" / "translation_memory.jsonl"
    first = json.loads(shipped.read_text(encoding="utf-8").splitlines()[0])
    jsonl = tmp_path / "tm.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + shipped.read_bytes())
    tsv = tmp_path / "tm.tsv"
    tsv.write_text("\ufeff" + f"{first['en']}\t{first['az']}\nHello.\tSalam.\n", encoding="utf-8")
    for path in (jsonl, tsv):
        memory = MemoryBackend([path])
        assert memory.lookup(first["en"]) == first["az"], path
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"\xef\xbb\xbfHello.\tSalam.\nBye.\tSa\xffol.\n")
    with pytest.raises(DataError, match=r"bad\.tsv:2: not valid UTF-8"):
        MemoryBackend([bad])
