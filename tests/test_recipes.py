"""Recipes (recipes/*.yaml): each validates against the params schema in both sizes, its `dvc exp run -S`
arguments say exactly what it means, its smoke models and server work, and its smoke size runs end to end as a
named DVC experiment in a git+DVC copy of the repository."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, link_languages
from test_pipeline import copy_repository, dvc, ran, sh

from langlift import recipes as R
from langlift.errors import LangliftError
from langlift.openai_client import ChatClient

NAMES = R.names(REPO)
SIZES = [False, True]


def test_the_reference_pipelines_are_all_there():
    assert NAMES == ["azllama-az", "barbarossa-az", "dictalm-he", "kin-rw", "mistral-uz"]


def _at(dump: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        dump = dump[part]
    return dump


def _landed(got: Any, want: Any) -> bool:
    """Whether an override value ``want`` is what the validated params hold (defaults filled in around it)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and _landed(got[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, (list, tuple)) and len(got) == len(want) and all(map(_landed, got, want))
    if isinstance(want, float) and not isinstance(got, bool):
        return math.isclose(got, want)
    return got == want


@pytest.mark.parametrize("smoke", SIZES, ids=["full", "smoke"])
@pytest.mark.parametrize("name", NAMES)
def test_recipe_validates_against_the_params_schema_and_every_override_lands(name, smoke):
    recipe = R.load(name, REPO)
    params = R.validate(recipe, smoke, REPO)  # the schema's one-line error would fail here
    assert params.language.code == recipe.language
    dump = params.model_dump()
    for key, value in recipe.overrides(smoke).items():
        got = _at(dump, key) if key != "language" else recipe.language
        if key == "fetch.sources":  # the language's own sources are appended after params.yaml's
            got = got[:len(value)]
        assert _landed(got, value), f"{name}: {key} = {got!r}, the recipe says {value!r}"


@pytest.mark.parametrize("smoke", SIZES, ids=["full", "smoke"])
@pytest.mark.parametrize("name", NAMES)
def test_dvc_reads_the_set_params_as_the_recipe_means_them(tmp_path, name, smoke):
    """The `-S` arguments, applied by DVC's own parser, give the same params as the recipe's mapping.

    (Compared once validated: DVC writes a float like 5e-05 without a dot, which PyYAML reads as a string
    and the schema reads as the float.)"""
    from dvc.utils.hydra import apply_overrides

    from langlift.params import validate

    recipe = R.load(name, REPO)
    raw = R.read_params(REPO)
    args = R.set_params(recipe.overrides(smoke), raw)
    target = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", target)
    apply_overrides(target, args[1::2])
    link_languages(tmp_path)
    by_dvc = validate(yaml.safe_load(target.read_text(encoding="utf-8")), target)
    assert by_dvc == validate(R.apply(raw, recipe.overrides(smoke)), target)


def test_hydra_values_survive_quoting(tmp_path):
    from dvc.utils.hydra import apply_overrides

    values = {"a": "it's: a {test}, with commas", "b": "null", "c": "1e-4", "d": None, "e": 0.25, "f": True,
              "g": [{"name": "x-1", "uri": "hf:org/data"}], "h": "models/local/x", "i": "back\\slash", "j": "a\\'b", "k": "end\\"}
    target = tmp_path / "params.yaml"
    target.write_text(yaml.safe_dump({k: 0 for k in values}), encoding="utf-8")
    apply_overrides(target, [f"{k}={R.hydra(v)}" for k, v in values.items()])
    assert yaml.safe_load(target.read_text(encoding="utf-8")) == values
    assert R.set_params({"translate.limit": 3, "lr": 1.0}, {"translate": {}, "lr": 2.0}) == \
        ["-S", "++translate.limit=3", "-S", "lr=1.0"]
    with pytest.raises(LangliftError, match="interpolation"):
        R.hydra("${oops}")


def _recipe_root(tmp_path: Path, text: str) -> Path:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text(text, encoding="utf-8")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    link_languages(tmp_path)
    return tmp_path


GOOD = """language: az
description: d
reproduces: {title: t, url: "https://example.org"}
hardware: 1 GPU
full: {lr: 1.0e-4}
smoke: {base_model: models/local/mine-llama}
smoke_models: [{name: llama}]
"""


def test_recipe_errors_are_one_line_and_name_the_key(tmp_path):
    root = _recipe_root(tmp_path, GOOD)
    assert R.load("mine", root).smoke_models[0].arch == "llama"
    with pytest.raises(LangliftError, match=r"^no recipe 'nope' .*; recipes: mine$"):
        R.load("nope", root)
    (root / "recipes/mine.yaml").write_text(GOOD.replace("hardware:", "hardwar:"), encoding="utf-8")
    with pytest.raises(LangliftError, match=r"recipes/mine.yaml: unknown key hardwar \(did you mean hardware\?\)$"):
        R.load("mine", root)
    (root / "recipes/mine.yaml").write_text(GOOD.replace("mine-llama", "other"), encoding="utf-8")
    with pytest.raises(LangliftError, match=r"smoke.base_model: models/local/other is not one of this recipe's "
                                            r"smoke_models \(models/local/mine-llama\)$"):
        R.load("mine", root)
    (root / "recipes/mine.yaml").write_text(GOOD.replace("{lr: 1.0e-4}", "{finetune.lora.rank: 8}"), encoding="utf-8")
    with pytest.raises(LangliftError, match=r"^recipes/mine.yaml \(full\): .*unknown key finetune.lora.rank "
                                            r"\(did you mean finetune.lora.r\?\)$"):
        R.validate(R.load("mine", root), False, root)


def test_smoke_models_build_once_and_load_as_their_architecture(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = _recipe_root(tmp_path, GOOD)
    recipe = R.load("mine", root).model_copy(update={"smoke_models": [
        R.SmokeModel(name="llama", text="english"), R.SmokeModel(name="qwen2", arch="qwen2", chat_template=True)]})
    text = "Azərbaycanın paytaxtı Bakıdır."
    for spec, model_type in zip(recipe.smoke_models, ["llama", "qwen2"]):
        path = R.build_model(recipe, spec, root)
        assert path == root / "models/local" / f"mine-{spec.name}"
        model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        assert model.config.model_type == model_type and len(tok) <= model.config.vocab_size
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte fallback / byte level
        assert bool(tok.chat_template) == spec.chat_template
        if spec.chat_template:
            assert "### Təlimat:" in tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
        stamp = (path / R.STAMP).stat().st_mtime_ns
        assert R.build_model(recipe, spec, root) == path and (path / R.STAMP).stat().st_mtime_ns == stamp
    english = AutoTokenizer.from_pretrained(root / "models/local/mine-llama")
    assert len(english(text)["input_ids"]) > len(english("The capital is Baku.")["input_ids"])  # knows English only


def _canned_api():
    spec = importlib.util.spec_from_file_location("uz_canned_api", REPO / "recipes" / "uz_canned_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_canned_uzbek_api_serves_tasks_that_are_not_the_seeds(tmp_path):
    from langlift.generate.rouge import rouge_l
    from langlift.generate.selfinstruct import load_seeds

    seeds = load_seeds(REPO / "languages/uz/seed_tasks.jsonl")
    pool = _canned_api().tasks_from(seeds)
    assert len(pool) >= 20
    assert max(rouge_l(t["instruction"], s["instruction"]) for t in pool for s in seeds) < 0.7
    port = _free_port()
    serve = R.Serve(command=f"python recipes/uz_canned_api.py --seeds languages/uz/seed_tasks.jsonl --port {port}",
                    url=f"http://127.0.0.1:{port}/v1")
    client = ChatClient(serve.url, "canned-uz", api_key_env=None, cache_dir=None)
    with R.serving(serve, REPO):
        first = json.loads(client.complete([{"role": "user", "content": "Come up with 4 new tasks"}], seed=7).text)
        again = json.loads(client.complete([{"role": "user", "content": "Come up with 4 new tasks"}], seed=7).text)
        with pytest.raises(LangliftError, match=f"port {port} on 127.0.0.1 is already in use"):
            with R.serving(serve, REPO):
                pass
    assert first == again and len(first["tasks"]) == 4 and all(t in pool for t in first["tasks"])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the server is stopped after the block"


# ---------------------------------------------------------------- the smoke runs, as users run them


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A git+DVC copy of the repository with the recipes, nothing run yet."""
    ws = copy_repository(tmp_path_factory.mktemp("recipes"))
    shutil.copytree(REPO / "recipes", ws / "recipes", ignore=shutil.ignore_patterns("__pycache__"))
    sh(ws, "git", "init", "-q")
    sh(ws, "git", "config", "user.email", "ci@langlift.invalid")
    sh(ws, "git", "config", "user.name", "ci")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "clone")
    return ws


def recipe(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "langlift", "recipe", *args], cwd=ws, capture_output=True, text=True)


def metrics(ws: Path, name: str) -> dict[str, Any]:
    return json.loads((ws / "metrics" / name).read_text(encoding="utf-8"))


def experiments(ws: Path) -> set[str]:
    return {row.get("name") for base in json.loads(dvc(ws, "exp", "show", "--json"))
            for row in base.get("experiments") or [] if row.get("name")}


CHECKS = {
    "barbarossa-az": lambda ws: all(metrics(ws, f"matrix/{n}_evaluate.json")["finetuned.ppl"] > 0 for n in ("llama", "qwen2"))
    and metrics(ws, "matrix/qwen2.json")["base_model"] == "models/local/barbarossa-az-qwen2",
    "azllama-az": lambda ws: metrics(ws, "finetune.json")["method"] == "full"
    and metrics(ws, "data.json")["corpus.removed.too_few_words"] > 0,
    "dictalm-he": lambda ws: metrics(ws, "translate.json")["segments_translated"]["llm"] > 0
    and metrics(ws, "translate.json")["pair_records"] > 0 and metrics(ws, "finetune.json")["method"] == "qlora"
    and metrics(ws, "split.json")["instructions"]["train_en"] > 0,
    "mistral-uz": lambda ws: metrics(ws, "generate.json")["kept"] == 12
    and metrics(ws, "finetune.json")["adapter.r"] == 64,
    "kin-rw": lambda ws: metrics(ws, "pretrain.json")["new_tokens"] == 512
    and metrics(ws, "finetune.json")["adapter.use_rslora"] is True,
}


def test_a_recipe_refuses_params_an_earlier_experiment_left(workspace):
    params = workspace / "params.yaml"
    before = params.read_text(encoding="utf-8")
    try:
        params.write_text(before.replace("\nlr: ", "\nlr: 1.0e-4  # was ", 1), encoding="utf-8")
        out = recipe(workspace, "kin-rw", "--smoke")
        assert out.returncode == 1 and "params.yaml differs from the last commit" in out.stderr
        assert not (workspace / "models/local/kin-rw-llama").exists(), "nothing is built before the checks"
    finally:
        params.write_text(before, encoding="utf-8")


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_smoke_size_runs_as_a_named_experiment(workspace, name, capsys):
    start = time.perf_counter()
    out = recipe(workspace, name, "--smoke")
    seconds = time.perf_counter() - start
    assert out.returncode == 0, f"{name} --smoke failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    assert {"pretrain", "finetune", "evaluate"} <= ran(out.stdout + out.stderr)
    assert f"{name}-smoke" in experiments(workspace)
    assert CHECKS[name](workspace), f"{name}: the smoke run did not do what the recipe is about"
    sh(workspace, "git", "checkout", "--", "params.yaml")  # the next recipe starts from the committed params
    with capsys.disabled():
        print(f"\n{name} --smoke: {seconds:.0f} s")
