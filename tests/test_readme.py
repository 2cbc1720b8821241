"""The docs stay true: docs/params.md names every key of the params schema and no key it lacks, every stage is
documented, relative links resolve, and the README stays a short first read."""

from __future__ import annotations

import re
import types
import typing
import unicodedata
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from pydantic import BaseModel

from langlift.params import Params

DOCS = REPO / "docs"
README = REPO / "README.md"
PLACEHOLDER = "<code>"  # how docs/params.md spells "any key" of a mapping whose values are sections
README_MAX_BYTES = 15_000


def _arms(annotation: object) -> tuple[object, ...]:
    """The alternatives of a union (``X | None``, ``Optional[X]``), or the annotation itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _is_section(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def schema_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of ``model``: nested sections, ``list[]`` entries and ``<code>`` mapping values included."""
    keys = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append(path)
        for arm in _arms(field.annotation):
            origin, args = typing.get_origin(arm), typing.get_args(arm)
            if _is_section(arm):
                keys += schema_keys(arm, path + ".")
            elif origin is list and args and _is_section(args[0]):
                keys += schema_keys(args[0], path + "[].")
            elif origin is dict and len(args) == 2 and _is_section(args[1]):
                keys += schema_keys(args[1], f"{path}.{PLACEHOLDER}.")
    return keys


def _step(annotation: object, token: str) -> list[object]:
    """The annotations reached from ``annotation`` by one path token (a name, a ``<…>`` placeholder or ``[]``)."""
    reached = []
    for arm in _arms(annotation):
        origin, args = typing.get_origin(arm), typing.get_args(arm)
        if arm is typing.Any:
            reached.append(typing.Any)
        elif token == "[]":
            reached += [args[0]] if origin is list and args else []
        elif _is_section(arm) and token in arm.model_fields:
            reached.append(arm.model_fields[token].annotation)
        elif origin is dict and len(args) == 2:
            reached.append(args[1])
    return reached


def in_schema(path: str) -> bool:
    """Whether a dotted path names a key of the schema; mapping keys may be anything, ``Any`` values anything below."""
    tokens = re.findall(r"<[^>]*>|\[\]|[^.\[\]]+", path)
    current: list[object] = [Params]
    for token in tokens:
        current = [nxt for ann in current for nxt in _step(ann, token)]
        if not current:
            return False
    return True


SECTIONS = [name for name, f in Params.model_fields.items() if any(_is_section(a) for a in _arms(f.annotation))]
KEY = rf"(?:{'|'.join(SECTIONS)})(?:\.(?:<[^>`]*>|[A-Za-z0-9_-]+)(?:\[\])?)+"
# a key in backticks, alone or as `key: value`; or a key set on a command line with -S key=value
CLAIMED = [re.compile(rf"`({KEY})(?::\s[^`]*)?`"), re.compile(rf"-S ({KEY})=")]
FILE_NAME = re.compile(r"\.(py|jsonl?|ya?ml|md|txt|csv|tsv|parquet|sqlite)$")  # `dedupe.py` is a script, not a key


def claimed_keys(text: str) -> set[str]:
    """The params keys a document names: ``dedupe.minhash.threshold`` in backticks, or after ``-S``."""
    found = {m.group(1) for pattern in CLAIMED for m in pattern.finditer(text)}
    return {key for key in found if not FILE_NAME.search(key)}


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_params_reference_covers_every_key():
    reference = (DOCS / "params.md").read_text(encoding="utf-8")
    keys = schema_keys(Params)
    assert {"fetch.sources[].uri", "finetune.matrix[].base_model", "finetune.templates.<code>.response",
            "generate.prompts.<code>.system", "dedupe.decontaminate.eval_sets[].fields"} <= set(keys)
    missing = [k for k in keys if f"`{k}`" not in reference]
    assert not missing, f"docs/params.md lacks these schema keys: {missing}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_docs_name_no_key_outside_the_schema(path: Path):
    unknown = sorted(k for k in claimed_keys(path.read_text(encoding="utf-8")) if not in_schema(k))
    assert not unknown, f"{path.relative_to(REPO)} names params keys the schema lacks: {unknown}"


def test_key_check_tells_real_keys_from_typos():
    assert in_schema("finetune.templates.az.response") and in_schema("finetune.templates.<code>.input")
    assert in_schema("fetch.sources[].tgt_uri") and in_schema("translate.quality.retry.num_beams")
    assert in_schema("generate.filters.blocked_keywords.uz") and in_schema("translate.prompts.<code>")
    for typo in ["finetune.lora.rank", "fetch.sources.uri", "fetch.sources[].url", "language.code.x",
                 "finetune.templates.az.answer", "pretrain.model.<code>", "generate.filters.refusals.az.x"]:
        assert not in_schema(typo), typo
    text = "`dedupe.minhash.treshold`, `fetch.strict: false`, `metrics/evaluate.json`, `hardware.*`, -S lr=1 " \
           "-S split.vall=0.1, `dedupe.py`, `evaluate.json`"
    assert claimed_keys(text) == {"dedupe.minhash.treshold", "fetch.strict", "split.vall"}


def test_every_stage_is_documented():
    stages_doc = (DOCS / "stages.md").read_text(encoding="utf-8")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name in stages:
        assert f"`{name}`" in stages_doc, name
        if "foreach" not in stages[name]:
            assert f"stages/{name}.py" in stages_doc, name
            assert re.search(rf"^## {re.escape(name)}\b", stages_doc, re.M), f"docs/stages.md: no section for {name}"


def github_anchor(heading: str, seen: dict[str, int]) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    text = "".join(c for c in heading.strip().lower()
                   if c in " -_" or unicodedata.category(c)[0] in "LN")
    slug = text.replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    return f"{slug}-{n}" if n else slug


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings (fenced code skipped)."""
    seen: dict[str, int] = {}
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {github_anchor(m.group(1), seen) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_relative_links_resolve(path: Path):
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            broken.append(target)
    assert not broken, f"{path.relative_to(REPO)}: broken links {broken}"


def test_readme_is_a_short_first_read():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes: move details into docs/ (limit {README_MAX_BYTES})"
    readme = README.read_text(encoding="utf-8")
    for doc in ["docs/stages.md", "docs/params.md", "docs/performance.md"]:
        assert f"]({doc}" in readme, f"README.md does not link {doc}"
