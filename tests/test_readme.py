"""The README stays true: its params reference names every key of params.yaml, and it documents every stage."""

from __future__ import annotations

import yaml
from conftest import REPO


def key_paths(node: object, prefix: str = "") -> list[str]:
    """Dotted paths of every mapping key (list entries, such as fetch.sources, are documented separately)."""
    if not isinstance(node, dict):
        return []
    paths = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        paths += [path] + key_paths(value, path + ".")
    return paths


def test_params_reference_covers_every_key():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    missing = [p for p in key_paths(params) if f"`{p}`" not in readme]
    assert not missing, f"README.md params reference lacks: {missing}"
    source_fields = ["name", "kind", "uri", "license", "lang", "src_lang", "tgt_lang", "tgt_uri", "format", "fields",
                     "limit", "unit", "detokenize", "split", "config", "revision", "streaming"]
    from langlift.fetch import Source

    assert sorted(source_fields) == sorted(Source.__dataclass_fields__)
    assert all(f"`{f}`" in readme for f in source_fields)


def test_every_stage_is_documented():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name in stages:
        assert f"`{name}`" in readme, name
        if "foreach" not in stages[name]:
            assert f"stages/{name}.py" in readme, name
