"""A sweep through DVC's experiment queue: two queued experiments of the real pipeline both land in `dvc exp show`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import copy_repository, dvc, git_identity, sh

SWEEP = [40, 80]  # translate.limit: a cheap stage (memory backend) whose metrics move with a param
TIMEOUT_S = 240


def _experiments(ws: Path) -> dict[int | None, tuple[str, dict]]:
    """The finished experiments of HEAD by their translate.limit: name and metrics/translate.json."""
    found = {}
    for rev in json.loads(dvc(ws, "exp", "show", "--json")):
        for exp in rev.get("experiments") or []:
            for run in exp["revs"]:
                data = run["data"]
                limit = data["params"]["params.yaml"]["data"]["translate"].get("limit")
                metrics = data.get("metrics", {}).get("metrics/translate.json", {}).get("data")
                if metrics:
                    found[limit] = run["name"], metrics
    return found


def _wait_for_queue(ws: Path) -> str:
    """`dvc queue status` once nothing is queued or running (polled, with a timeout)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        status = dvc(ws, "queue", "status")
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(2)
    raise AssertionError(f"the queue did not finish in {TIMEOUT_S} s:\n{status}")


def test_two_queued_experiments_both_land_in_exp_show(tmp_path):
    ws = copy_repository(tmp_path)
    sh(ws, "git", "init", "-q")
    git_identity(ws)
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "clone")
    dvc(ws, "repro", "fetch")  # the baseline: the queued runs take fetch's outputs from the cache
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "baseline")
    grid = ",".join(map(str, SWEEP))  # one experiment per value (a grid with more -S); ++: set, in the file or not
    out = dvc(ws, "exp", "run", "--queue", "translate", "-S", f"++translate.limit={grid}",
              "-S", "hardware.num_threads=1")
    assert out.count("Queued experiment") == 2, out
    try:
        # the workers inherit stdout: captured, `dvc queue start` would wait for them to exit
        subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", "2"], cwd=ws, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        status = _wait_for_queue(ws)
    finally:
        dvc(ws, "queue", "stop", "--kill")  # the workers, whatever happened
    assert status.count("Success") == 2, status
    found = _experiments(ws)
    assert set(found) == set(SWEEP), found
    assert [found[n][1]["records_in"] for n in SWEEP] == SWEEP
    assert "records_in" in dvc(ws, "exp", "diff", found[SWEEP[0]][0], found[SWEEP[1]][0])
