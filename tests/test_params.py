"""params.yaml is read through one typed schema: typos, bad types and bad ranges are one-line errors."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, link_languages
from pydantic import BaseModel

from langlift import params as P
from langlift.errors import LangliftError

RAW = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def error_for(edit) -> str:
    raw = copy.deepcopy(RAW)
    edit(raw)
    with pytest.raises(LangliftError) as e:
        P.validate(raw)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_shipped_params_are_valid():
    params = P.load(REPO / "params.yaml")
    assert params.finetune.lora.r == RAW["finetune"]["lora"]["r"]
    assert params.language.code == RAW["language"] == "az"


@pytest.mark.parametrize("section, typo, suggestion", [
    ("finetune.lora", "rank", "finetune.lora.r"),
    ("finetune", "batchsize", "finetune.batch_size"),
    ("split", "vall", "split.val"),
    ("fetch", "strickt", "fetch.strict"),
    ("generate.budget", "max_request", "generate.budget.max_requests"),
    ("", "languag", "language"),
])
def test_a_typo_is_an_error_naming_the_nearest_key(section, typo, suggestion):
    def edit(raw):
        node = raw
        for part in filter(None, section.split(".")):
            node = node[part]
        node[typo] = 4

    message = error_for(edit)
    where = f"{section}.{typo}" if section else typo
    assert message == f"params.yaml: unknown key {where} (did you mean {suggestion}?)"


def test_a_typo_in_a_list_entry_names_its_position():
    message = error_for(lambda raw: raw["fetch"]["sources"][0].update(knd="corpus"))
    assert "fetch.sources[0].knd (did you mean fetch.sources[0].kind?)" in message


def test_numbers_written_as_yaml_strings_are_coerced():
    raw = copy.deepcopy(RAW)
    raw["lr"] = "3e-3"  # YAML 1.1 reads 3e-3 (no dot) as a string
    assert P.validate(raw).lr == pytest.approx(0.003)


@pytest.mark.parametrize("key, value, words", [
    ("lr", -1, "greater than 0"),
    ("lr", "fast", "valid number"),
    ("split.english_share", 1.0, "less than 1"),
    ("hardware.num_threads", "lots", "'auto' or a valid integer"),
    ("finetune.method", "lorra", "'full', 'lora', 'qlora' or 'lora-8bit'"),
    ("pretrain.steps", 0, "greater than or equal to 1"),
])
def test_bad_values_are_one_line_errors(key, value, words):
    def edit(raw):
        *parents, name = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[name] = value

    message = error_for(edit)
    assert message.startswith(f"params.yaml: {key}: ") and words in message, message


def test_parallel_sources_need_both_languages():
    pair = {"name": "p", "kind": "parallel", "uri": "a.txt", "tgt_uri": "b.txt", "tgt_lang": "az"}
    message = error_for(lambda raw: raw["fetch"]["sources"].append(pair))
    assert "fetch.sources[1]: parallel sources need src_lang and tgt_lang" in message


def walk_defaults(model: type[BaseModel], node: dict, prefix: str = ""):
    """(dotted key, schema default, shipped value) for every key of params.yaml that has a schema default."""
    for name, field in model.model_fields.items():
        if name not in node:
            continue
        inner = P._model_in(field.annotation)
        if inner is not None and isinstance(node[name], dict) and field.annotation is inner:
            yield from walk_defaults(inner, node[name], f"{prefix}{name}.")
        elif not field.is_required():
            default = field.get_default(call_default_factory=True)
            default = default.model_dump() if isinstance(default, BaseModel) else default
            if isinstance(default, list):
                default = [d.model_dump() if isinstance(d, BaseModel) else d for d in default]
            yield f"{prefix}{name}", default, node[name]


def test_schema_defaults_agree_with_the_shipped_params():
    """One default per key: the schema's, which params.yaml repeats for the reader and must not contradict."""
    differ = {}
    for key, default, shipped in walk_defaults(P.Params, RAW):
        if isinstance(default, tuple):
            default = list(default)
        if default != shipped and key not in SHIPPED_DIFFERS:
            differ[key] = (default, shipped)
    assert not differ, differ


# keys whose shipped value is the embedded Azerbaijani sample's, not a general default
SHIPPED_DIFFERS = {"fetch.sources", "generate.filters.blocked_keywords", "generate.filters.refusals",
                   "generate.prompts"}


def test_check_command_reports_ok_and_errors(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "langlift", "check"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and "params.yaml: ok" in ok.stdout
    link_languages(tmp_path)
    bad = tmp_path / "params.yaml"
    bad.write_text((REPO / "params.yaml").read_text(encoding="utf-8").replace("  r: 16", "  rank: 4"), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "langlift", "check", "--params", str(bad)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {bad}: unknown key finetune.lora.rank (did you mean finetune.lora.r?)"
