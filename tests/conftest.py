"""Shared fixtures: tiny real models and tokenizers built in-process (nothing is downloaded)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from langlift import tokenizer as tk
from langlift.tokenizer import QWEN2_EOS, chat_template  # noqa: F401 (QWEN2_EOS: for the tests)
from langlift.tokenizer import train as train_tokenizer

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
AZ_DATA = REPO / "languages" / "az" / "data"


def link_languages(root: Path) -> None:
    """Let a scratch project under ``root`` read the repository's ``languages/`` (params name a language by code)."""
    if not (root / "languages").exists():
        (root / "languages").symlink_to(REPO / "languages", target_is_directory=True)

# Nothing in the tests may reach the hub: a hub id must fail fast with langlift's own error.
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# `dvc repro` runs stage commands as `python stages/...`: make that the interpreter running the tests.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

torch.set_num_threads(1)  # tiny models: one thread is as fast and keeps the suite steady on a busy machine


def az_sentences(n: int = 2000) -> list[str]:
    """Real Azerbaijani sentences from the shipped NTREX-128 sample."""
    lines = (AZ_DATA / "ntrex128.az.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()][:n]


def en_sentences(n: int = 2000) -> list[str]:
    """The English side of the same NTREX-128 sample."""
    lines = (AZ_DATA / "ntrex128.en.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()][:n]


CHAT_TEMPLATE = chat_template("### Təlimat:", "### Cavab:")


def build_tokenizer(vocab_size: int = 768):
    """A byte-fallback BPE tokenizer (langlift's own) trained on the Azerbaijani and English samples."""
    tok = train_tokenizer(az_sentences(1500) + en_sentences(500), vocab_size)
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A saved tiny tokenizer (with a chat template)."""
    path = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A saved, randomly initialised 2-layer Llama with the tiny tokenizer beside it."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    path = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


REVIEW_ANSWERS = {  # review prompts (languages/az/prompts.jsonl) and the short answers tiny_finetuned_dir learns
    "az-02": "Xəzər gözəldir.",
    "az-01": "Bitkilər günəşdən qida alır.",
}


@pytest.fixture(scope="session")
def tiny_finetuned_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    """A LoRA adapter over ``tiny_llama_dir`` as finetune saves it (adapter, tokenizer with the training
    template, langlift.json), trained to answer two review prompts with a short answer and EOS (~1 s)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompts = {r["id"]: r["prompt"] for r in map(json.loads, (REPO / "languages/az/prompts.jsonl").open(encoding="utf-8"))}
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_llama_dir), LoraConfig(
        r=8, lora_alpha=16, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    chats = [[{"role": "user", "content": prompts[k]}, {"role": "assistant", "content": a}]
             for k, a in REVIEW_ANSWERS.items()]
    batch = [tok.apply_chat_template(c, return_tensors="pt", return_dict=True)["input_ids"] for c in chats]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(80):
        loss = sum(model(input_ids=ids, labels=ids).loss for ids in batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("finetuned")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "langlift.json").write_text(json.dumps({
        "base_model": str(tiny_llama_dir), "method": "lora", "language": {"code": "az", "name": "Azerbaijani"},
        "template": {"source": "model", "chat_template": tok.chat_template}}), encoding="utf-8")
    return path


def build_qwen2_tokenizer(vocab_size: int = 768):
    """A Qwen2Tokenizer (byte-level BPE, no BOS) trained on the Azerbaijani and English samples."""
    tok = tk.train_qwen2(az_sentences(1500) + en_sentences(500), vocab_size)
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """A saved, randomly initialised 2-layer Qwen2 with a Qwen2 tokenizer (byte-level BPE, no BOS) beside it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_qwen2_tokenizer()
    torch.manual_seed(1)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("qwen2")
    Qwen2ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write test rows as JSONL (tests build their inputs with this)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# The DVC pipeline run once per test session, shared by test_pipeline, test_report and test_repository.
COPIED = ["langlift", "stages", "configs", "data/samples", "data/review", "languages", "models/local/.gitignore",
          "params.yaml", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore"]


def sh(ws: Path, *cmd: str, stdin: str | None = None) -> str:
    """Run a command in the workspace; fail the test with its output if it fails."""
    run = subprocess.run(cmd, cwd=ws, capture_output=True, text=True, input=stdin)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout}\n{run.stderr}"
    return run.stdout + run.stderr


def dvc(ws: Path, *args: str) -> str:
    return sh(ws, sys.executable, "-m", "dvc", *args)


def ran(output: str) -> set[str]:
    """Names of the stages a `dvc repro` / `dvc exp run` output says it ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def copy_repository(ws: Path) -> Path:
    """The tracked parts of the repository a pipeline run needs, copied into ``ws``."""
    for item in COPIED:
        src, dst = REPO / item, ws / item
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return ws


def git_identity(ws: Path) -> None:
    """A committer for git and `dvc exp` in a scratch repository."""
    sh(ws, "git", "config", "user.email", "ci@langlift.invalid")
    sh(ws, "git", "config", "user.name", "ci")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """A git+DVC copy of the repository on which the default pipeline has run once (HEAD: that run;
    test_pipeline's experiments change the working tree after it)."""
    ws = copy_repository(tmp_path_factory.mktemp("repo"))
    sh(ws, "git", "init", "-q")
    git_identity(ws)
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "clone")  # as users have it: a repository with history
    out = dvc(ws, "repro")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "pipeline")
    ws.joinpath(".first_repro.log").write_text(out)
    return ws


LR_EXPERIMENT = {"lr": 1.0e-4, "language": "az"}  # test_pipeline runs it; `published` runs it only if missing


def find_experiment(ws: Path, params: dict) -> str | None:
    """The name of an experiment on HEAD whose params.yaml has ``params``, if there is one."""
    import yaml

    head = sh(ws, "git", "rev-parse", "HEAD").strip()
    for ref in sh(ws, "git", "for-each-ref", "--format=%(refname)", f"refs/exps/{head[:2]}/{head[2:]}/").split():
        values = yaml.safe_load(sh(ws, "git", "show", f"{ref}:params.yaml"))
        if all(values.get(k) == v for k, v in params.items()):
            return ref.rsplit("/", 1)[1]
    return None


@pytest.fixture(scope="session")
def published(workspace, tmp_path_factory) -> dict[str, Path | str]:
    """``workspace`` published as a team does: its git history and an `lr` experiment pushed to a bare git
    repository (``hub``, branch main), its data, models and run cache to a DVC remote folder (``storage``)."""
    root = tmp_path_factory.mktemp("published")
    storage, hub = root / "storage", root / "hub.git"
    sh(root, "git", "init", "-q", "--bare", str(hub))
    dvc(workspace, "remote", "modify", "--local", "storage", "url", str(storage))
    sh(workspace, "git", "push", "-q", str(hub), "HEAD:refs/heads/main")
    sh(hub, "git", "symbolic-ref", "HEAD", "refs/heads/main")
    dvc(workspace, "push", "--all-commits", "--run-cache")  # HEAD's outputs, whatever the working tree holds now
    experiment = find_experiment(workspace, LR_EXPERIMENT)
    if experiment is None:
        experiment = "lr-1e-4"
        dvc(workspace, "exp", "run", "-n", experiment, "-S", f"lr={LR_EXPERIMENT['lr']}",
            "-S", f"language={LR_EXPERIMENT['language']}")
    dvc(workspace, "exp", "push", str(hub), experiment)  # its git commit to hub, its outputs to storage
    return {"storage": storage, "hub": hub, "experiment": experiment}


def clone_published(published: dict, dest: Path) -> Path:
    """A fresh `git clone` of ``published``'s hub with its DVC remote set for this checkout and `dvc pull` run."""
    sh(dest.parent, "git", "clone", "-q", str(published["hub"]), str(dest))
    git_identity(dest)
    dvc(dest, "remote", "modify", "--local", "storage", "url", str(published["storage"]))
    dvc(dest, "pull")
    return dest

