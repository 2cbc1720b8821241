"""Model identities: content hashes of local models (cached per file) and hub commit shas (offline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import link_languages

from langlift import modelref
from langlift.errors import LangliftError
from test_translate_backends import nllb_dir  # noqa: F401  (a tiny real NLLB-style model)

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A fake model folder: a config and a weight file in a subfolder."""
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "sub" / "model.safetensors").write_bytes(bytes(range(256)) * 4096)
    return d


def test_one_changed_byte_changes_the_fingerprint(model_dir: Path, tmp_path: Path):
    cache = tmp_path / "hashes.json"
    before = modelref.resolve(str(model_dir), cache=cache)
    weights = model_dir / "sub" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[12345] ^= 1
    weights.write_bytes(bytes(data))
    after = modelref.resolve(str(model_dir), cache=cache)
    assert before.kind == after.kind == "local"
    assert before.fingerprint != after.fingerprint


def test_a_renamed_file_changes_the_fingerprint(model_dir: Path, tmp_path: Path):
    before = modelref.hash_path(model_dir, tmp_path / "hashes.json")
    (model_dir / "config.json").rename(model_dir / "config2.json")
    assert modelref.hash_path(model_dir, tmp_path / "hashes.json") != before


def test_touch_without_change_keeps_the_fingerprint(model_dir: Path, tmp_path: Path):
    cache = tmp_path / "hashes.json"
    before = modelref.hash_path(model_dir, cache)
    weights = model_dir / "sub" / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert modelref.hash_path(model_dir, cache) == before
    entry = json.loads(cache.read_text())[os.path.realpath(weights)]
    assert entry["mtime_ns"] == st.st_mtime_ns + 10**9    # rehashed once, recorded with the new mtime


def test_the_cache_is_used_for_unchanged_files(model_dir: Path, tmp_path: Path):
    cache = tmp_path / "hashes.json"
    real = modelref.hash_path(model_dir, cache)
    weights = os.path.realpath(model_dir / "sub" / "model.safetensors")
    data = json.loads(cache.read_text())
    assert set(data) == {weights, os.path.realpath(model_dir / "config.json")}
    data[weights]["sha256"] = "f" * 64                    # same size and mtime: the cached digest is trusted
    cache.write_text(json.dumps(data))
    assert modelref.hash_path(model_dir, cache) != real


def test_a_symlinked_model_has_the_folder_s_fingerprint(model_dir: Path, tmp_path: Path):
    link = tmp_path / "local" / "mymodel"
    link.parent.mkdir()
    link.symlink_to(model_dir, target_is_directory=True)
    cache = tmp_path / "hashes.json"
    assert modelref.hash_path(link, cache) == modelref.hash_path(model_dir, cache)


def test_a_single_file_model(model_dir: Path, tmp_path: Path):
    ref = modelref.resolve(str(model_dir / "config.json"), cache=tmp_path / "h.json")
    assert ref.kind == "local" and len(ref.sha256) == 64


def test_hub_id_resolves_from_the_local_cache(tmp_path: Path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    (repo / "snapshots" / SHA).mkdir(parents=True)
    (repo / "snapshots" / SHA / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    ref = modelref.resolve("org/tiny")
    assert (ref.kind, ref.revision) == ("hub", SHA)
    assert modelref.fingerprint("org/tiny") == f"hub:org/tiny@{SHA}"
    assert ref.to_dict() == {"ref": "org/tiny", "kind": "hub", "revision": SHA, "fingerprint": f"hub:org/tiny@{SHA}"}
    other = "f" * 40
    assert modelref.fingerprint("org/tiny", other) == f"hub:org/tiny@{other}"   # an explicit sha, as given


def test_an_uncached_hub_id_is_one_clear_error(tmp_path: Path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(LangliftError, match=r"model 'org/absent'.*cannot be resolved offline"):
        modelref.fingerprint("org/absent")
    with pytest.raises(LangliftError, match=r"revision v2"):
        modelref.fingerprint("org/absent", "v2")


def test_a_missing_path_is_not_taken_for_a_hub_id(tmp_path: Path):
    with pytest.raises(LangliftError, match="no such file or directory"):
        modelref.fingerprint(str(tmp_path / "nope" / "model"))


def test_gone_files_leave_the_cache(model_dir: Path, tmp_path: Path):
    cache = tmp_path / "hashes.json"
    modelref.hash_path(model_dir, cache)
    other = tmp_path / "other.bin"
    other.write_bytes(b"x")
    (model_dir / "config.json").unlink()
    modelref.hash_path(other, cache)
    assert os.path.realpath(model_dir / "config.json") not in json.loads(cache.read_text())


# -- under dvc repro: only declared local models ------------------------------------------------------


def test_under_dvc_a_model_outside_models_local_is_refused(model_dir: Path, tmp_path: Path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "models" / "local").mkdir(parents=True)
    monkeypatch.chdir(repo)
    modelref.check_declared(str(model_dir), "translate.seq2seq.model")     # outside dvc repro: no check
    monkeypatch.setenv("DVC_STAGE", "translate")
    with pytest.raises(LangliftError, match=r"^translate.seq2seq.model: local model .* is outside models/local.*"
                                            r"cp -rs .* models/local/model"):
        modelref.check_declared(str(model_dir), "translate.seq2seq.model")
    modelref.check_declared("org/some-hub-model", "translate.seq2seq.model")  # hub ids are not paths
    subprocess.run(["cp", "-rs", str(model_dir), "models/local/model"], check=True)
    modelref.check_declared("models/local/model", "translate.seq2seq.model")
    modelref.check_declared(str(repo / "models/local/model"), "translate.seq2seq.model")  # absolute, inside
    with pytest.raises(LangliftError, match="outside models/local"):
        modelref.check_declared("models/local/../../../model", "translate.seq2seq.model")


def test_under_dvc_a_directory_symlink_is_refused(model_dir: Path, tmp_path: Path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "models" / "local").mkdir(parents=True)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DVC_STAGE", "finetune")
    Path("models/local/linked").symlink_to(model_dir, target_is_directory=True)
    with pytest.raises(LangliftError, match=r"'models/local/linked' is a symlink to a directory"):
        modelref.check_declared("models/local/linked", "base_model")
    Path("models/local/copy").mkdir()
    (Path("models/local/copy") / "config.json").write_text("{}")
    (Path("models/local/copy") / "sub").symlink_to(model_dir / "sub", target_is_directory=True)
    with pytest.raises(LangliftError, match=r"'models/local/copy/sub' is a symlink to a directory"):
        modelref.check_declared("models/local/copy", "base_model")
    modelref.check_declared("models/base", "base_model", ("models/local", "models/base"))  # missing: loader's job
    Path("models/base").mkdir()
    modelref.check_declared("models/base", "base_model", ("models/local", "models/base"))


# -- the translate segment cache keys on what the model is, not where it is --------------------------


def test_new_weights_at_the_same_path_miss_the_segment_cache(tmp_path: Path, nllb_dir: Path, monkeypatch):
    from safetensors.torch import load_file, save_file
    from test_translate_stage import ALPACA, english, run, workspace

    model = tmp_path / "nllb"
    shutil.copytree(nllb_dir, model)
    monkeypatch.chdir(tmp_path)                                     # .cache/hashes.json goes here
    link_languages(tmp_path)
    params = workspace(tmp_path, english(ALPACA[:3]), backend="seq2seq",
                       seq2seq={"model": str(model), "max_new_tokens": 6, "batch_size": 4},
                       quality={"min_lang_score": 0, "action": "keep"})
    first = run(tmp_path, params)[2]
    assert first["segments_translated"]["seq2seq"] > 0
    assert run(tmp_path, params)[2]["segments_translated"]["seq2seq"] == 0   # unchanged model: all cached
    weights = load_file(model / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.5
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    after = run(tmp_path, params)[2]
    assert after["segments_cached"]["seq2seq"] == 0
    assert after["segments_translated"]["seq2seq"] == first["segments_translated"]["seq2seq"]
    before_ref, after_ref = first["models"]["seq2seq.model"], after["models"]["seq2seq.model"]
    assert before_ref["ref"] == after_ref["ref"] == str(model) and before_ref["sha256"] != after_ref["sha256"]


# -- the API reply cache (generate, translate's api backend) keys on the whole request ------------------


def test_api_reply_cache_key_is_everything_sent(tmp_path: Path):
    """An API model's identity is its endpoint, its name and the request: each cached reply is named by the
    hash of exactly the body sent, so any field that can change a reply gets its own entry."""
    from langlift.openai_client import ChatClient, cache_key
    from openai_server import OpenAIServer

    base = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 50, "seed": 7, "response_format": {"type": "json_object"}}
    changed = [("temperature", 0.5), ("top_p", 0.9), ("max_tokens", 51), ("seed", 8),
               ("response_format", {"type": "json_schema", "json_schema": {"name": "t", "schema": {}}})]
    ask = [{"role": "user", "content": "Write tasks."}]
    with OpenAIServer(lambda body, n: f"reply {n}") as server:
        client = ChatClient(server.url, "m1", api_key_env=None, cache_dir=tmp_path / "replies")
        for params in [base] + [{**base, k: v} for k, v in changed]:
            client.complete(ask, **params)
        client.complete([{"role": "system", "content": "Be brief."}, *ask], **base)
        ChatClient(server.url, "m2", api_key_env=None, cache_dir=tmp_path / "replies").complete(ask, **base)
        assert server.count == len(changed) + 3                  # every variant was asked, none served stale
        assert client.complete(ask, **base).text == "reply 0"   # the same request: the cached reply
        assert server.count == len(changed) + 3
        for body in server.requests:
            sent = dict(body)
            key = cache_key(client.base_url, sent.pop("model"), sent.pop("messages"), sent)
            assert (tmp_path / "replies" / key[:2] / f"{key}.json").exists()
    assert cache_key("http://a/v1", "m1", ask, base) != cache_key("http://b/v1", "m1", ask, base)
