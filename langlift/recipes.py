"""Recipes: one named DVC experiment per reference pipeline (AzLlama, DictaLM, Mistral-Uz, …).

A recipe is ``recipes/<name>.yaml``: the language, what it reproduces, the hardware of its full size, and
two sets of params overrides (dotted keys to values, as ``dvc exp run -S`` takes them): ``full`` names the
real base models, ``smoke`` swaps them for tiny local models that run offline on a CPU in minutes.
:func:`run` validates the overridden params against the schema, builds the smoke models under
``models/local/<recipe>-<model>/`` (random weights, a tokenizer trained on the language's translation
memory), starts the recipe's local server if it has one, and runs ``dvc exp run -n <name>[-smoke] -S …``.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError

from langlift import params as P
from langlift import tokenizer as tk
from langlift.errors import LangliftError
from langlift.io import atomic_path, load_jsonl
from langlift.params import PositiveInt, Section

log = logging.getLogger(__name__)

RECIPES_DIR = Path("recipes")
LOCAL_DIR = Path("models/local")
STAMP = "langlift-smoke.json"  # beside a built smoke model: the spec it was built from
NAME = r"^[a-z0-9][a-z0-9-]*$"
SMOKE_SHAPE = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "context": 256}


class Reproduces(Section):
    title: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")


class SmokeModel(Section):
    """A tiny random-weight model standing in for a hub model in the smoke size."""

    name: str = Field(pattern=NAME)
    arch: Literal["llama", "qwen2"] = "llama"
    text: Literal["bilingual", "english"] = "bilingual"  # what its tokenizer is trained on
    chat_template: bool = False                          # an instruction-tuned stand-in (the language's markers)
    vocab_size: PositiveInt = 512


class Serve(Section):
    """A local server the smoke run talks to (started before ``dvc exp run``, stopped after)."""

    command: str = Field(min_length=1)
    url: str = Field(pattern=r"^http://(127\.0\.0\.1|localhost):\d+(/.*)?$")


class Recipe(Section):
    name: str = Field(pattern=NAME)
    language: str = Field(pattern=r"^[a-z]{2,3}$")
    description: str = Field(min_length=1)
    reproduces: Reproduces
    hardware: str = Field(min_length=1)
    full: dict[str, Any]
    smoke: dict[str, Any]
    smoke_models: list[SmokeModel] = Field(default_factory=list)
    smoke_serve: Serve | None = None

    def overrides(self, smoke: bool) -> dict[str, Any]:
        """The params this size sets, ``language`` first."""
        return {"language": self.language, **(self.smoke if smoke else self.full)}

    def experiment(self, smoke: bool) -> str:
        """The DVC experiment's name: the recipe's, with ``-smoke`` for the smoke size."""
        return f"{self.name}-smoke" if smoke else self.name

    def model_dir(self, model: SmokeModel, root: Path = Path(".")) -> Path:
        """Where a smoke model is built: ``models/local/<recipe>-<model>``."""
        return root / LOCAL_DIR / f"{self.name}-{model.name}"


# ---------------------------------------------------------------- loading and validation

def names(root: Path = Path(".")) -> list[str]:
    """The recipes shipped in ``recipes/``."""
    return sorted(p.stem for p in (root / RECIPES_DIR).glob("*.yaml"))


def load(name: str, root: Path = Path(".")) -> Recipe:
    """Read and validate ``recipes/<name>.yaml``; smoke overrides may name only the recipe's own local models."""
    path = root / RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise LangliftError(f"no recipe {name!r} ({path} not found); recipes: {', '.join(names(root)) or 'none'}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LangliftError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise LangliftError(f"{path}: expected a mapping at the top level")
    if "name" in raw:
        raise LangliftError(f"{path}: unknown key name (the file name is the recipe's name)")
    for key in raw:  # a misspelt key first, before the "missing" error its absence causes
        if key not in Recipe.model_fields:
            near = difflib.get_close_matches(str(key), list(Recipe.model_fields), 1, 0.5)
            raise LangliftError(f"{path}: unknown key {key}" + (f" (did you mean {near[0]}?)" if near else ""))
    try:
        recipe = Recipe.model_validate({**raw, "name": name})
    except ValidationError as e:
        raise LangliftError(P.describe(e, path, Recipe)) from None
    built = {str(recipe.model_dir(m)) for m in recipe.smoke_models}
    for key, value in _strings(recipe.smoke):
        if value.startswith(f"{LOCAL_DIR}/") and value.rstrip("/") not in built:
            raise LangliftError(f"{path}: smoke.{key}: {value} is not one of this recipe's smoke_models "
                                f"({', '.join(sorted(built)) or 'none'})")
    return recipe


def _strings(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted key, string)`` for every string inside an overrides mapping."""
    if isinstance(node, str):
        yield prefix, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{prefix}[{i}]")


def apply(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the params mapping ``raw`` with each dotted key set to its value (missing sections created)."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = out
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LangliftError(f"override {key}: {'.'.join(parents[:i + 1])} is not a mapping in params.yaml")
        node[leaf] = copy.deepcopy(value)
    return out


def read_params(root: Path = Path(".")) -> dict[str, Any]:
    """The raw mapping of ``params.yaml``."""
    path = root / P.DEFAULT_PATH
    if not path.is_file():
        raise LangliftError(f"{path}: params file not found (run from the repository root)")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def validate(recipe: Recipe, smoke: bool, root: Path = Path(".")) -> P.Params:
    """The params an experiment of this recipe runs with: params.yaml plus the overrides, schema-checked."""
    raw = apply(read_params(root), recipe.overrides(smoke))
    try:
        return P.validate(raw, root / P.DEFAULT_PATH)
    except LangliftError as e:
        size = "smoke" if smoke else "full"
        raise LangliftError(f"{RECIPES_DIR / recipe.name}.yaml ({size}): {e}") from None


# ---------------------------------------------------------------- `dvc exp run -S` arguments

_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
_KEYWORDS = {"null", "true", "false", "nan", "inf"}


def hydra(value: Any) -> str:
    """``value`` in Hydra's override grammar (what ``dvc exp run -S key=value`` parses)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if "${" in value:
            raise LangliftError(f"override value {value!r}: '${{' would be read as an interpolation by dvc -S")
        if _BARE.fullmatch(value) and value.lower() not in _KEYWORDS:
            return value
        return _quoted(value)
    if isinstance(value, list):
        return "[" + ",".join(hydra(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra(v)}" for k, v in value.items()) + "}"
    raise LangliftError(f"override value {value!r}: unsupported type {type(value).__name__}")


def _quoted(text: str) -> str:
    """A single-quoted Hydra string: quotes escaped, and the backslashes before a quote (or the closing one) doubled."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text) + "'"


def set_params(overrides: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """``-S`` arguments for ``overrides``; a key absent from ``raw`` (params.yaml) is added with Hydra's ``++``."""
    args = []
    for key, value in overrides.items():
        args += ["-S", f"{'' if _has(raw, key) else '++'}{key}={hydra(value)}"]
    return args


def _has(raw: dict[str, Any], key: str) -> bool:
    """Whether the dotted ``key`` is present in the params mapping ``raw``."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


# ---------------------------------------------------------------- smoke models

def _language_texts(code: str, english_only: bool, root: Path) -> list[str]:
    """The language's translation memory: its English side, or both sides (tokenizer training text)."""
    path = root / P.LANGUAGES_DIR / code / "translation_memory.jsonl"
    if not path.is_file():
        raise LangliftError(f"{path}: not found; smoke models train their tokenizer on it")
    keys = ("en",) if english_only else ("en", code)
    return [rec[k] for rec in load_jsonl(path) for k in keys if isinstance(rec.get(k), str) and rec[k].strip()]


def _chat_template(code: str, root: Path) -> str:
    from langlift.tokenizer import chat_template

    lang = P.LanguageFile.model_validate(yaml.safe_load(P.language_file(code, root).read_text(encoding="utf-8")))
    return chat_template(lang.chat.user, lang.chat.assistant)


def _llama(texts: list[str], vocab_size: int, seed: int) -> tuple[Any, Any]:
    """A tiny random Llama and langlift's own byte-fallback BPE tokenizer."""
    from langlift import model as llm
    from langlift.tokenizer import train

    tok = train(texts, vocab_size)
    arch = llm.resolve("tiny", SMOKE_SHAPE)
    config = llm.build_config(arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    model = llm.from_scratch(config, seed)
    model.config.use_cache = True
    return model, tok


def _qwen2(texts: list[str], vocab_size: int, seed: int) -> tuple[Any, Any]:
    """A tiny random Qwen2 and a Qwen2Tokenizer (byte-level BPE, no BOS) trained with Qwen's own pipeline.

    A ``qwen2`` folder is loaded with ``Qwen2Tokenizer``, which rebuilds Qwen's byte-level pre-tokeniser
    around the saved vocabulary: only a vocabulary trained with that pipeline (every byte in the alphabet)
    survives it.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tk.train_qwen2(texts, vocab_size)
    s = SMOKE_SHAPE
    config = Qwen2Config(vocab_size=len(tok), hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                         num_key_value_heads=s["kv_heads"], max_position_embeddings=s["context"],
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config), tok


def build_model(recipe: Recipe, spec: SmokeModel, root: Path = Path("."), seed: int = 0) -> Path:
    """Build one smoke model under ``models/local/`` unless the same spec is already built there."""
    target = recipe.model_dir(spec, root)
    stamp = {"recipe": recipe.name, "language": recipe.language, **spec.model_dump(), "seed": seed}
    try:
        if json.loads((target / STAMP).read_text(encoding="utf-8")) == stamp:
            return target
    except (OSError, ValueError):
        pass
    texts = _language_texts(recipe.language, spec.text == "english", root)
    model, tok = (_qwen2 if spec.arch == "qwen2" else _llama)(texts, spec.vocab_size, seed)
    tok.chat_template = _chat_template(recipe.language, root) if spec.chat_template else None
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    log.info("built %s: %s, %.2fM parameters, vocab %d%s", target, spec.arch,
             sum(p.numel() for p in model.parameters()) / 1e6, len(tok), ", chat template" if spec.chat_template else "")
    return target


# ---------------------------------------------------------------- running

@contextmanager
def serving(serve: Serve | None, root: Path, timeout: float = 60.0) -> Iterator[None]:
    """Run the recipe's local server for the duration of the block (nothing when there is none)."""
    if serve is None:
        yield
        return
    parts = urlsplit(serve.url)
    host, port = parts.hostname, parts.port
    with socket.socket() as s:
        if s.connect_ex((host, port)) == 0:
            raise LangliftError(f"smoke_serve.url: port {port} on {host} is already in use; stop what listens there")
    argv = shlex.split(serve.command)
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    proc = subprocess.Popen(argv, cwd=root)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                if s.connect_ex((host, port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LangliftError(f"smoke_serve: `{serve.command}` did not listen on {host}:{port} "
                                    f"({'exited ' + str(proc.returncode) if proc.poll() is not None else 'timed out'})")
            time.sleep(0.2)
        log.info("serving %s (`%s`, pid %d)", serve.url, serve.command, proc.pid)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _params_committed(root: Path) -> None:
    """Refuse to start from a params.yaml an earlier experiment left modified: the recipe would inherit it."""
    diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(P.DEFAULT_PATH)], cwd=root,
                          capture_output=True, text=True)
    if diff.returncode == 1:
        raise LangliftError("params.yaml differs from the last commit (an earlier `dvc exp run` leaves its params "
                            "there), and a recipe overrides only some keys: commit it, or restore it with "
                            "`git checkout params.yaml`, then run the recipe")
    if diff.returncode != 0:
        raise LangliftError(f"recipes run as DVC experiments in a git repository: {diff.stderr.strip()}")


def command(recipe: Recipe, smoke: bool, queue: bool, root: Path = Path(".")) -> list[str]:
    """The ``dvc exp run`` command line of this recipe and size."""
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "-n", recipe.experiment(smoke)]
    if queue:
        cmd.append("--queue")
        for spec in recipe.smoke_models if smoke else []:  # git-ignored: copied into the queue's temp copy
            cmd += ["-C", str(recipe.model_dir(spec))]
    return cmd + set_params(recipe.overrides(smoke), read_params(root))


def run(name: str, smoke: bool = False, queue: bool = False, root: Path = Path(".")) -> tuple[str, float]:
    """Validate, build the smoke models, and run (or queue) the recipe as a named DVC experiment.

    Returns the experiment's name and the seconds it took."""
    recipe = load(name, root)
    params = validate(recipe, smoke, root)
    _params_committed(root)
    start = time.perf_counter()
    for spec in recipe.smoke_models if smoke else []:
        build_model(recipe, spec, root, params.seed)
    cmd = command(recipe, smoke, queue, root)
    log.info("%s", shlex.join(["dvc", *cmd[3:]]))
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    serve = recipe.smoke_serve if smoke else None
    if queue and serve:
        log.warning("this recipe's smoke run needs `%s` listening while the queue runs (`dvc queue start`)",
                    serve.command)
        serve = None
    with serving(serve, root):
        rc = subprocess.run(cmd, cwd=root, env=env).returncode
    if rc != 0:
        raise LangliftError(f"`dvc exp run -n {recipe.experiment(smoke)}` failed (exit {rc}); its output is above")
    return recipe.experiment(smoke), time.perf_counter() - start
