"""What a person sees: third-party deprecation warnings hidden, ours shown, progress bars as bars in a terminal
and as a few lines in a log (langlift.prepare_console, run before any library loads)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from conftest import REPO

from langlift.cli import duration

PROBE = """
import warnings, langlift
from transformers import TrainingArguments
TrainingArguments(output_dir=".", gradient_checkpointing=True, use_cpu=True, report_to="none")
warnings.warn_explicit("langlift's own deprecation", FutureWarning, "langlift/x.py", 1, module="langlift.x")
import io, datasets
from tqdm import tqdm
bar = tqdm(total=1, file=io.StringIO())
print("mininterval", bar.mininterval, "delay", bar.delay, "datasets bars", datasets.utils.are_progress_bars_disabled())
"""


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "HF_HUB_DISABLE", "HF_DATASETS_DISABLE"))}
    env["PYTHONWARNINGS"] = ""
    return env


def test_in_a_log_third_party_deprecations_are_hidden_ours_shown_and_bars_slow(tmp_path):
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=_clean_env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "gradient_checkpointing" not in run.stderr  # transformers' FutureWarning, filtered
    assert "kernels-community" not in run.stderr  # bitsandbytes' import notice
    assert "langlift's own deprecation" in run.stderr  # ours still reach the user
    assert "mininterval 60.0 delay 10.0 datasets bars True" in run.stdout


def test_in_a_terminal_bars_redraw_as_usual(tmp_path):
    """Under a pseudo-terminal (what a person running `dvc repro` has) tqdm keeps its own defaults."""
    code = ("import langlift; from tqdm import tqdm; import io; bar = tqdm(total=1, file=io.StringIO()); "
            "print('mininterval', bar.mininterval, 'delay', bar.delay)")
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin/stdout/stderr are the terminal
        os.chdir(tmp_path)
        os.execve(sys.executable, [sys.executable, "-c", code], {**_clean_env(), "PYTHONPATH": str(REPO)})
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    assert "mininterval 0.1 delay 0.0" in out.decode()


def test_durations_read_at_a_persons_precision():
    assert [duration(s) for s in (0.04, 3.26, 12.4, 74, 3599.6, 7260)] == ["0.0s", "3.3s", "12s", "1m 14s", "1h 00m",
                                                                           "2h 01m"]
