"""langlift: turn an English instruction set and a monolingual corpus into an instruction-following
LLM for a low-resource language, as a DVC pipeline."""

import logging
import os
import sys
import warnings

__version__ = "0.1.0"


def prepare_openmp() -> bool:
    """Ask OpenMP for passive waiting (``OMP_WAIT_POLICY=PASSIVE``) unless the environment chooses already.

    It must happen before torch is imported: torch's libgomp reads the policy once, when torch loads it
    (set afterwards, it changes nothing, measured), and spinning idle threads are what makes two trainings
    on one machine 10-30x slower. Every stage imports langlift before torch. Returns whether it set the policy.
    """
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def prepare_console() -> None:
    """Output a person can read, in a terminal or a log. Third-party deprecation warnings are hidden (langlift's
    own are fixed at the cause, so those still show); the libraries' housekeeping bars (datasets' map/filter) and bitsandbytes'
    import notice are off; when stderr is not a terminal (a log, CI, a piped `dvc repro`) progress bars redraw at most once a minute
    and download bars are off. Runs before tqdm is imported: tqdm reads its ``TQDM_*`` defaults once, at import.
    """
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module="langlift")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU-kernel notice when peft imports it
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", "60")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


prepare_console()
TORCH_LOADED_FIRST = "torch" in sys.modules
OPENMP_POLICY_SET = prepare_openmp()
