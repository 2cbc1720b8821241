"""The GPU benchmark stays runnable without a GPU: `benchmarks/gpu.py --dry` runs every path on tiny shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_shapes as G  # noqa: E402

SECTIONS = ["pretrain-az150m", "lora-qwen2.5-0.5b", "lora-llama-2-7b", "qlora-mistral-7b", "cpt-llama-3.2-1b",
            "translate-nllb-600m", "llm-qwen2.5-0.5b", "lmeval-qwen2.5-0.5b"]


def bench(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu") / "gpu-dry.json"
    proc = bench("--dry", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_dry_runs_every_path_with_numbers(dry):
    result, _ = dry
    assert result["dry"] is True and result["peak_flops"] > 0
    for section in SECTIONS:
        rows = [r for r in result["rows"] if r["section"] == section]
        ok = [r for r in rows if r["status"] == "ok"]
        assert ok, f"{section}: no row ran: {[r['status'] for r in rows]}"
        for r in ok:
            for key in ("tokens_per_s", "mfu", "peak_gib", "seconds"):
                assert isinstance(r[key], (int, float)) and r[key] > 0, (section, r["variant"], key, r[key])
        assert sum(r["default"] for r in rows) == 1, section
    for section in ("lora-qwen2.5-0.5b", "lora-llama-2-7b"):  # the finetune path against its plain loop
        default = next(r for r in result["rows"] if r["section"] == section and r["default"])
        assert default["vs_plain"] > 0
        assert any(r["variant"].startswith("plain") and r["status"] == "ok" for r in result["rows"]
                   if r["section"] == section)
    translate = next(r for r in result["rows"] if r["section"] == "translate-nllb-600m")
    assert translate["items_per_s"] > 0 and translate["translated"] == translate["sentences"]
    qlora = next(r for r in result["rows"] if r["section"] == "qlora-mistral-7b")
    assert "quantisation off" in qlora["note"] and qlora["lora_r"] == 64 and qlora["checkpointing"] is True
    variants = {r["variant"] for r in result["rows"] if r["section"] == "pretrain-az150m" and r["status"] == "ok"}
    assert {"attn eager", "checkpointing on"} <= variants


def test_dry_prints_the_table_and_the_targets(dry):
    result, stdout = dry
    assert "section" in stdout and "MFU" in stdout and "peak GiB" in stdout
    for section in SECTIONS:
        assert section in stdout
    names = [c["check"] for c in result["checks"]]
    assert any("LLaMA-Factory" in n for n in names) and any("peak memory" in n for n in names)
    assert any("MFU" in n for n in names) and any("plain loop" in n for n in names)
    for c in result["checks"]:
        assert c["pass"] in (True, False) and c["value"] is not None, c
        assert ("PASS" if c["pass"] else "MISS") + "  " + c["check"] in stdout


def test_a_section_over_its_guard_is_killed_and_reported(tmp_path):
    out = tmp_path / "guard.json"
    proc = bench("--dry", "--isolate", "--guard-seconds", "1", "--only", "cpt-llama-3.2-1b", "--out", str(out),
                 timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]  # rows made before the kill are kept, then the timeout's
    assert rows[-1]["status"] == "timeout: killed after 1 s (the section's guard)"
    assert {r["section"] for r in rows} == {"cpt-llama-3.2-1b"}


def test_peak_table_and_anchor_scaling():
    assert G.table_peak("NVIDIA H200")[0] == 989e12
    assert G.table_peak("NVIDIA H100 PCIe")[0] == 756e12  # PCIe before the SXM entry
    assert G.table_peak("NVIDIA A100-SXM4-80GB")[0] == 312e12
    assert G.table_peak("NVIDIA L40S")[0] == 362e12 and G.table_peak("NVIDIA L4")[0] == 121e12
    assert G.table_peak("Some Future GPU") is None
    assert G.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    # 6N + 12LHS on the az150m shape: N counts the LM head, not the input embedding
    shape = G.CAUSAL["az150m"]
    n = 12 * (2 * 768 * 768 + 2 * 768 * 256 + 3 * 768 * 3072) + 32000 * 768
    assert G.matmul_params(shape) == n
    assert G.train_flops_per_token(shape, 2048) == 6 * n + 12 * 12 * 768 * 2048
    assert G.train_flops_per_token(shape, 2048, trainable=10) == 4 * n + 60 + 12 * 12 * 768 * 2048
