"""What a person sees: third-party deprecation warnings hidden, ours shown, progress bars as bars in a terminal
and as a few lines in a log (langlift.prepare_console, run before any library loads)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from conftest import REPO

PROBE = """
import warnings, langlift
from transformers import TrainingArguments
TrainingArguments(output_dir=".", gradient_checkpointing=True, use_cpu=True, report_to="none")
warnings.warn_explicit("langlift's own deprecation", FutureWarning, "langlift/x.py", 1, module="langlift.x")
import io, datasets
from tqdm import tqdm
print("mininterval", tqdm(total=1, file=io.StringIO()).mininterval, "datasets bars", datasets.utils.are_progress_bars_disabled())
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
    assert "mininterval 60.0 datasets bars True" in run.stdout


def test_in_a_terminal_bars_redraw_as_usual(tmp_path):
    """Under a pseudo-terminal (what a person running `dvc repro` has) tqdm keeps its own defaults."""
    code = "import langlift; from tqdm import tqdm; import io; print('mininterval', tqdm(total=1, file=io.StringIO()).mininterval)"
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
    assert "mininterval 0.1" in out.decode()
