"""CPU threads on a shared machine (langlift.hardware): usable cores, their load, the OpenMP wait policy."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import langlift

from langlift import hardware
from langlift.hardware import CpuState, busy_cores, cgroup_quota, choose_threads, cpu_times

REPO = Path(__file__).resolve().parents[1]
FIXED = {"device": "cpu", "precision": "fp32", "attn_implementation": "sdpa", "gradient_checkpointing": False}


@pytest.mark.parametrize(
    ("cpu", "threads", "reason"),
    [
        (CpuState(2, None, 0.1), 2, "2 of 2 cores, load 0.1"),
        (CpuState(2, None, 1.9), 1, "1 of 2 cores, load 1.9"),  # another training on the machine
        (CpuState(2, None, 6.0), 1, "1 of 2 cores, load 6.0"),  # never fewer than one
        (CpuState(8, None, 3.4), 5, "5 of 8 cores, load 3.4"),  # 4.6 free cores round to 5
        (CpuState(8, None, 3.6), 4, "4 of 8 cores, load 3.6"),
        (CpuState(16, 2.0, 0.0), 2, "2 of 2 cores (cgroup quota 2 of 16 CPUs), load 0.0"),
        (CpuState(16, 1.5, 0.0), 1, "1 of 1 cores (cgroup quota 1.5 of 16 CPUs), load 0.0"),  # no throttled thread
        (CpuState(16, 0.5, 0.0), 1, "1 of 1 cores (cgroup quota 0.5 of 16 CPUs), load 0.0"),
        (CpuState(16, 4.0, 14.6), 1, "1 of 4 cores (cgroup quota 4 of 16 CPUs), load 14.6"),  # quota, busy host
        (CpuState(4, 8.0, 0.0), 4, "4 of 4 cores, load 0.0"),  # a quota above the mask changes nothing
    ],
)
def test_threads_follow_usable_and_free_cores(cpu: CpuState, threads: int, reason: str) -> None:
    assert choose_threads(cpu) == (threads, reason)


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n", "cpu/cpu.cfs_quota_us": "-1\n"}, 1.5),  # v2 first
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "lots\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota(tmp_path: Path, files: dict[str, str], quota: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_quota(tmp_path) == quota


def test_busy_cores_from_proc_stat_counts_only_the_allowed_cpus(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    head = "cpu  9 9 9 9 9 9 9 9 0 0\n"
    stat.write_text(head + "cpu0 100 0 0 900 0 0 0 0 0 0\ncpu1 100 0 0 900 0 0 0 0 0 0\nintr 1 2 3\n")
    before = cpu_times({0}, stat)
    # cpu0: 75 of 100 ticks busy (user 60, system 10, steal 5; iowait counts as idle); cpu1 fully busy
    stat.write_text(head + "cpu0 160 0 10 920 5 0 0 5 0 0\ncpu1 200 0 0 900 0 0 0 0 0 0\n")
    after = cpu_times({0}, stat)
    assert set(before) == set(after) == {0}
    assert busy_cores(before, after) == pytest.approx(0.75)
    assert busy_cores(cpu_times({0, 1}, tmp_path / "missing"), after) == 0.0
    assert cpu_times({0, 1}, tmp_path / "missing") == {}


def test_cpu_state_reads_this_machine() -> None:
    cpu = hardware.cpu_state(window=0.05)
    assert cpu.cores == len(os.sched_getaffinity(0))
    assert cpu.busy >= 0.0 and cpu.quota in (None, cgroup_quota())


def test_explicit_thread_count_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_state", lambda: pytest.fail("the machine was measured"))
    s = hardware.choose({**FIXED, "num_threads": 3})
    assert s.num_threads == 3 and s.cpu_busy is None
    assert s.reasons["num_threads"] == f"set in params, OpenMP {s.openmp_wait_policy}"


def test_auto_threads_are_logged_in_one_line_and_recorded(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr(hardware, "cpu_state", lambda: CpuState(2, None, 1.9))
    s = hardware.choose({**FIXED, "num_threads": "auto"})
    assert (s.num_threads, s.cpu_busy) == (1, 1.9)
    metrics = s.as_metrics()
    assert metrics["num_threads"] == 1 and metrics["cpu_busy"] == 1.9
    assert metrics["openmp_wait_policy"] == s.openmp_wait_policy
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="langlift.hardware"):
            hardware.apply(s)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    line = f"hardware: num_threads = 1 (1 of 2 cores, load 1.9, OpenMP {s.openmp_wait_policy})"
    assert line in caplog.messages


def test_prepare_openmp_only_before_torch_and_only_if_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert langlift.prepare_openmp() is False  # torch is loaded in this process
    monkeypatch.delitem(sys.modules, "torch")
    assert langlift.prepare_openmp() is False and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert langlift.prepare_openmp() is True and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_start_env_is_the_environment_the_process_started_with(monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path("/proc/self/environ").exists():
        pytest.skip("no /proc")
    monkeypatch.setenv("LANGLIFT_TEST_LATE", "1")
    assert hardware._start_env("LANGLIFT_TEST_LATE") is None  # set after start: libraries never saw it
    assert hardware._start_env("LANGLIFT_NOT_SET_ANYWHERE") is None


@pytest.mark.parametrize(
    ("imports", "env", "expected"),
    [
        ("from langlift import hardware", {}, "PASSIVE passive"),
        ("import torch; from langlift import hardware", {}, "None default"),  # too late to change OpenMP
        ("import torch; from langlift import hardware", {"OMP_WAIT_POLICY": "active"}, "active active"),
    ],
)
def test_wait_policy_in_a_fresh_process(imports: str, env: dict[str, str], expected: str) -> None:
    code = f"{imports}; import os; print(os.environ.get('OMP_WAIT_POLICY'), hardware.openmp_wait_policy()[0])"
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == expected
