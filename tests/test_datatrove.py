"""The corpus half of dedupe on datatrove executors keeps exactly what the stage keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import REPO, link_languages, write_jsonl
from datatrove.executor import SlurmPipelineExecutor

from langlift import params as P
from langlift import records
from langlift.dedupe.datatrove import CorpusReader, Options, Targets, executors, line_range
from langlift.dedupe.datatrove import main as datatrove_main
from langlift.fetch import fetch_all, with_default_lang


def corpus(text: str) -> dict:
    return records.make("corpus", "planted", text=text, lang="az")


def _project(tmp_path: Path, monkeypatch) -> dict:
    """A scratch project: the shipped az corpus and parallel set through fetch, plus planted cases."""
    monkeypatch.chdir(tmp_path)
    link_languages(tmp_path)
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["fetch"]["sources"] = []  # the language's corpus and parallel sources only
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    params = P.load("params.yaml")
    by_kind, _ = fetch_all(with_default_lang(params.fetch.sources, "az"), strict=True)
    docs = by_kind["corpus"]
    evals = [r["tgt"] for r in by_kind["parallel"] if len(r["tgt"].split()) >= 6][:2]
    near = max(docs[:200], key=lambda r: len(r["text"]))["text"] + " Bu da əlavədir."  # early: shard 0
    planted = [corpus(evals[0]), dict(docs[10], id="copy-of-10"), corpus(near), corpus(evals[0] + " "),
               corpus(evals[1]), corpus("\u200b\u200b")]
    write_jsonl(tmp_path / "data" / "raw" / "corpus.jsonl", docs + planted)
    write_jsonl(tmp_path / "data" / "raw" / "parallel.jsonl", by_kind["parallel"])
    write_jsonl(tmp_path / "data" / "raw" / "instructions.jsonl",
                [records.make("instructions", "t", instruction="Salam de.", output="Salam!", lang="az")])
    raw["dedupe"]["inputs"]["instructions"] = ["data/raw/instructions.jsonl"]
    raw["dedupe"]["decontaminate"]["eval_sets"] = [{"path": "data/raw/parallel.jsonl", "fields": ["src", "tgt"]}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return raw


def _stage(engine: str, out: str) -> dict:
    from stages.dedupe import main

    result = CliRunner().invoke(main, ["--params", "params.yaml", "--engine", engine, "--tasks", "2", "--workers", "2"])
    assert result.exit_code == 0, result.output
    Path(out).mkdir()
    return {name: Path(src).rename(Path(out) / name).read_text(encoding="utf-8")
            for name, src in (("corpus", "data/clean/corpus.jsonl"), ("removed", "data/clean/removed.jsonl"),
                              ("metrics", "metrics/data.json"))}


def test_two_tasks_keep_exactly_the_stage_documents(tmp_path, monkeypatch):
    _project(tmp_path, monkeypatch)
    local, dt = _stage("local", "local"), _stage("datatrove", "dt")
    m = json.loads(local["metrics"])
    planted = {"exact_duplicate": 2, "near_duplicate": 12, "contaminated": 2, "empty": 1, "lang_score": 28}
    for reason, n in planted.items():
        assert m[f"corpus.removed.{reason}"] >= n, reason  # the planted cases, across the two shards
    assert dt["metrics"] == local["metrics"]  # counts by reason, in the same order
    assert dt["corpus"] == local["corpus"]  # the same ids, texts and order, byte for byte
    assert dt["removed"] == local["removed"]  # the same samples with the same details
    shards = sorted(Path(".cache/datatrove/dedupe/filtered").glob("*.jsonl"))
    assert len(shards) == 2 and all(s.stat().st_size > 100_000 for s in shards)  # two tasks shared the work


@pytest.mark.parametrize("world_size", [1, 2, 3, 7, 40])
def test_byte_ranges_read_every_line_once(tmp_path, world_size):
    rows = [records.make("corpus", "t", text=f"Sətir {i} " + "ə" * (i % 5), lang="az") for i in range(23)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    size = path.stat().st_size
    assert line_range(size, world_size - 1, world_size)[1] == size
    seen = [d.id for rank in range(world_size) for d in CorpusReader([str(path)]).run(None, rank, world_size)]
    assert seen == [r["id"] for r in rows]


def test_bad_record_names_the_file_and_byte(tmp_path, monkeypatch):
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)
    link_languages(tmp_path)
    good = [corpus("Bakı Azərbaycanın paytaxtıdır və böyük bir şəhərdir.")]
    write_jsonl(tmp_path / "c.jsonl", good)
    with open(tmp_path / "c.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "x", "text": 7, "lang": "az"}\n')
    raw["dedupe"]["inputs"]["corpus"] = ["c.jsonl"]
    raw["dedupe"]["decontaminate"]["eval_sets"] = []
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    result = CliRunner().invoke(datatrove_main, ["--tasks", "2", "--workers", "2", "--out", "out"])
    offset = len(json.dumps(good[0], ensure_ascii=False).encode("utf-8")) + 1
    assert result.exit_code == 1, result.exc_info
    assert f"c.jsonl (byte {offset}): field 'text': expected a string" in result.output
    assert not Path("out/corpus.jsonl").exists()


def test_slurm_executors_are_built_not_submitted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link_languages(tmp_path)
    write_jsonl(tmp_path / "data" / "raw" / "parallel.jsonl", [{"src": "One two three four five.", "tgt": "Bir iki üç."}])
    params = P.load(REPO / "params.yaml")  # its eval sets: this parallel file and the language's prompts
    opts = Options(tasks=64, workers=16, work=str(tmp_path / "work"), executor="slurm", partition="cpu",
                   time="02:00:00")
    last = executors(params.dedupe, params.language, opts, Targets("c.jsonl", "r.jsonl", "m.json"))
    first = last.depends
    assert isinstance(last, SlurmPipelineExecutor) and isinstance(first, SlurmPipelineExecutor)
    assert (first.tasks, last.tasks) == (64, 1)  # dedupe sees every document in one task
    assert [s.name for s in first.pipeline] == ["langlift corpus reader", "langlift Normalize", "langlift QualityFilter",
                                                "langlift MarkContaminated", "langlift shard writer"]
    assert [s.name for s in last.pipeline] == ["langlift shard merger", "langlift ExactDedupe", "langlift NearDedupe",
                                               "langlift DropContaminated", "langlift outputs"]
    assert first.pipeline[0].paths == [str(tmp_path / "data" / "raw" / "corpus.jsonl")]  # absolute for the nodes
    args = first.get_sbatch_args(max_array=64)
    assert (args["partition"], args["time"], args["array"], args["job-name"]) == (
        "cpu", "02:00:00", "0-63%16", "langlift-filter")
    assert last.job_id is None and first.job_id is None  # nothing was submitted
