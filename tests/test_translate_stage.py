"""The translate stage end to end: the default memory run, joins by id, misses, the memory -> api chain,
quality retries, translation-pair records, and resuming after the process is killed mid-run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import REPO, SAMPLES
from langlift.params import Params, load, validate
from langlift.records import make
from langlift.translate import translate_file
from openai_server import OpenAIServer
from test_translate_backends import fake_az, segment_of

ALPACA = json.loads((SAMPLES / "instructions" / "alpaca_az_subset.en.json").read_text(encoding="utf-8"))
MEMORY = REPO / "languages" / "az" / "translation_memory.jsonl"


def english(rows: list[dict]) -> list[dict]:
    return [make("instructions", source="alpaca_en", lang="en", instruction=r["instruction"],
                 input=r.get("input", ""), output=r["output"]) for r in rows]


def workspace(tmp_path: Path, records: list[dict], **translate) -> Params:
    """A run directory with data/raw/instructions.jsonl and params (the repo's, with overrides)."""
    raw = tmp_path / "data" / "raw" / "instructions.jsonl"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    params = load(REPO / "params.yaml").model_dump()
    t = params["translate"]
    t["cache"] = str(tmp_path / ".cache" / "segments.sqlite")
    t["memory"]["paths"] = [str(MEMORY)]
    t["prompts"] = {"default": "Translate into {name}:\n\n{text}"}
    for key, value in translate.items():
        if isinstance(value, dict) and isinstance(t.get(key), dict):
            t[key].update(value)
        else:
            t[key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return validate(params)


def run(tmp_path: Path, params: Params) -> tuple[list[dict], list[dict], dict]:
    d = tmp_path / "data" / "translated"
    metrics = translate_file(params, tmp_path / "data/raw/instructions.jsonl", d / "instructions.jsonl",
                             d / "rejected.jsonl", tmp_path / "metrics/translate.json", progress=False)
    read = lambda p: [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]  # noqa: E731
    assert json.loads((tmp_path / "metrics/translate.json").read_text()) == metrics
    return read(d / "instructions.jsonl"), read(d / "rejected.jsonl"), metrics


def test_default_memory_run_joins_by_id_with_provenance(tmp_path):
    records = english(ALPACA)
    random.Random(0).shuffle(records)  # order must not matter: outputs join to sources by id
    out, rejected, metrics = run(tmp_path, workspace(tmp_path, records))
    memory = {json.loads(x)["en"]: json.loads(x)["az"] for x in MEMORY.read_text(encoding="utf-8").splitlines()}
    by_id = {r["id"]: r for r in records}
    assert metrics["records_in"] == 200 and metrics["records_out"] == len(out) >= 190
    assert metrics["records_out"] + metrics["dropped"] == 200 and len(rejected) == metrics["dropped"]
    for rec in out:
        en = by_id[rec["source_id"]]
        for f in ("instruction", "input", "output"):
            assert rec[f] == (memory[en[f]] if en[f] else "")
        assert rec["lang"] == "az" and rec["translation"]["backend"] == "memory"
        assert rec["translation"]["model"] == str(MEMORY)
    assert sum(metrics["flagged"].values()) >= len(rejected) - metrics["missed_records"]


def test_memory_misses_are_reported_not_passed_through(tmp_path):
    tm = tmp_path / "tm.jsonl"
    tm.write_text(json.dumps({"en": "Name a color.", "az": "Bir rəng adlandırın."}) + "\n"
                  + json.dumps({"en": "Blue.", "az": "Mavi."}) + "\n", encoding="utf-8")
    records = english([{"instruction": "Name a color.", "output": "Blue."},
                       {"instruction": "Name a color.", "output": "Red is a warm color."}])
    params = workspace(tmp_path, records, memory={"paths": [str(tm)]})
    out, rejected, metrics = run(tmp_path, params)
    assert [r["output"] for r in out] == ["Mavi."]
    assert metrics["missed_records"] == 1
    assert rejected == [{"source_id": records[1]["id"], "reasons": ["miss"], "missing": ["Red is a warm color."]}]


def test_memory_then_api_chain_keeps_lists_and_code(tmp_path):
    text = ("Steps to follow:\n1. Open https://example.com in your browser.\n2. Type `ls -la` and press Enter.\n\n"
            "```bash\necho hello\n```")
    records = english([ALPACA[0], {"instruction": "Explain how to list files.", "output": text}])

    with OpenAIServer(lambda body, n: fake_az(segment_of(body))) as server:
        params = workspace(tmp_path, records, fallback=["api"],
                           api={"base_url": server.url, "concurrency": 2, "backoff": 0.05},
                           quality={"min_lang_score": 0})
        out, rejected, metrics = run(tmp_path, params)
        sent = sorted(segment_of(b) for b in server.requests)
    assert rejected == [] and len(out) == 2
    assert out[0]["translation"]["backend"] == "memory"
    listing = out[1]
    assert listing["translation"]["backend"] == "api" and listing["translation"]["prompt_version"].startswith("p")
    assert sent == sorted(["Explain how to list files.", "Steps to follow:", "Open <x0> in your browser.",
                           "Type <x0> and press Enter."])
    lines = listing["output"].split("\n")
    assert lines[1].startswith("1. ") and "https://example.com" in lines[1]
    assert lines[2].startswith("2. ") and "`ls -la`" in lines[2]
    assert listing["output"].endswith("\n\n```bash\necho hello\n```")
    assert metrics["segments_translated"] == {"memory": 0, "api": 4} and metrics["fields_from_memory"] == 3


def test_flagged_records_are_retried_with_other_settings(tmp_path):
    records = english([{"instruction": "Describe a calm morning by the sea in one sentence.", "output": "Quiet."}])

    def handler(body, n):  # greedy loops, sampling does not: the retry must fix the record
        seg = segment_of(body)
        return ("dəniz " * 8).strip() if body["temperature"] == 0 else fake_az(seg)

    with OpenAIServer(handler) as server:
        params = workspace(tmp_path, records, backend="api", api={"base_url": server.url, "backoff": 0.05},
                           quality={"min_lang_score": 0, "retry": {"temperature": 0.7}})
        out, rejected, metrics = run(tmp_path, params)
    assert metrics["flagged"]["repetition"] == 1 and metrics["retried"] == 1 and metrics["retry_fixed"] == 1
    assert metrics["flagged_after_retry"] == {} and len(out) == 1 and out[0]["translation"]["retried"] is True


def test_flagged_records_kept_with_flags_and_pairs_emitted(tmp_path):
    records = english([{"instruction": "Describe a calm morning by the sea in one sentence.", "output": "Quiet."}])
    with OpenAIServer(lambda body, n: "dəniz dəniz dəniz dəniz dəniz dəniz") as server:
        params = workspace(tmp_path, records, backend="api", api={"base_url": server.url},
                           quality={"min_lang_score": 0, "action": "keep"},
                           pairs={"enabled": True, "fields": ["instruction"]})
        out, rejected, metrics = run(tmp_path, params)
    main, to_az, to_en = out
    assert "repetition" in main["quality_flags"] and rejected == []
    assert to_az["instruction"] == "Translate the following text from English into Azerbaijani."
    assert (to_az["input"], to_az["output"], to_az["lang"]) == (records[0]["instruction"], main["instruction"], "az")
    assert (to_en["input"], to_en["output"], to_en["lang"]) == (main["instruction"], records[0]["instruction"], "en")
    assert metrics["pair_records"] == 2


def test_interrupted_and_killed_runs_resume_without_repeating_finished_segments(tmp_path):
    records = english(ALPACA[:60])
    served = []

    def handler(body, n):
        time.sleep(0.03)
        served.append(segment_of(body))
        return fake_az(segment_of(body))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "stages" / "translate.py"), "--params", "params.yaml"]

    def start_and_stop(sig: int, after: int) -> int:
        """Run the stage until the server has served ``after`` more requests, then send ``sig``."""
        target = server.count + after
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while server.count < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(sig)
        proc.wait(timeout=30)
        return proc.returncode

    with OpenAIServer(handler) as server:
        workspace(tmp_path, records, backend="api", cache=".cache/translate/segments.sqlite",
                  api={"base_url": server.url, "concurrency": 2},
                  quality={"min_lang_score": 0, "action": "keep"})
        assert start_and_stop(signal.SIGINT, 30) == 130  # Ctrl-C: clean exit, finished chunks kept
        assert start_and_stop(signal.SIGKILL, 30) == -signal.SIGKILL
        before = server.count
        assert not (tmp_path / "data/translated/instructions.jsonl").exists()  # nothing half-written

        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        last = server.count - before
    metrics = json.loads((tmp_path / "metrics/translate.json").read_text())
    distinct = metrics["segments_cached"]["api"] + metrics["segments_translated"]["api"]
    chunk = 2 * 4  # concurrency * 4: the most one interruption can lose
    print(f"stopped twice after {before} requests, the last run sent {last}, distinct segments {distinct}")
    assert metrics["segments_translated"]["api"] == last
    assert metrics["segments_cached"]["api"] >= before - 2 * chunk
    assert before + last <= distinct + 2 * chunk
    assert len(set(served)) == distinct  # every distinct segment was translated, none forgotten
    assert metrics["records_out"] == 60


def test_limit_translates_the_first_records_only(tmp_path):
    records = english(ALPACA[:20])
    out, _, metrics = run(tmp_path, workspace(tmp_path, records, limit=5))
    assert metrics["records_in"] == 5 and {r["source_id"] for r in out} <= {r["id"] for r in records[:5]}
