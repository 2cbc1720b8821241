"""fetch: every format and field convention, stable ids, the manifest, and each kind of bad input."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SAMPLES, write_jsonl

from langlift import records
from langlift.errors import DataError, LangliftError
from langlift.fetch import Source, detokenize, fetch_all, fetch_source


def source(**spec) -> Source:
    spec.setdefault("name", "test")
    spec.setdefault("kind", "instructions")
    return Source.from_params({k: str(v) if k in ("uri", "tgt_uri") else v for k, v in spec.items()}, "az")


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

    ud = fetch_source(source(kind="corpus", uri=SAMPLES / "monolingual" / "ud_az_tuecl-test.conllu"), strict=True)
    assert ud.records[0]["text"] == "Qız yoldaşına namə yazdı."
    assert ud.info["counts"]["read"] == 148


def test_parallel_line_aligned_and_hf_style(tmp_path):
    src = source(kind="parallel", uri=SAMPLES / "parallel" / "tatoeba.aze-eng.en.txt",
                 tgt_uri=SAMPLES / "parallel" / "tatoeba.aze-eng.az.txt", src_lang="en", tgt_lang="az")
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


def test_bad_source_params_are_clear():
    with pytest.raises(LangliftError, match="unknown keys"):
        Source.from_params({"name": "x", "kind": "corpus", "uri": "a.txt", "splt": "train"}, "az")
    with pytest.raises(LangliftError, match="kind 'docs'"):
        Source.from_params({"name": "x", "kind": "docs", "uri": "a.txt"}, "az")


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


def test_stage_writes_outputs_and_fails_cleanly(tmp_path):
    good = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Hi.", "output": "Hello."}])
    params = {"language": {"code": "az"}, "fetch": {"strict": True, "sources": [
        {"name": "x", "kind": "instructions", "uri": str(good), "lang": "en", "license": "CC0"}]}}
    (tmp_path / "params.yaml").write_text(json.dumps(params), encoding="utf-8")
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
