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
    own are fixed at the cause, so those still show); the libraries' housekeeping (datasets' map/filter bars,
    accelerate's checkpoint notes, lm-eval's task set-up, bitsandbytes' import notice) is off, their warnings and
    errors stay. When stderr is not a terminal (a log, CI, a piped `dvc repro`) a progress bar appears only for work
    that lasts over 10 s and then redraws once a minute, and download bars are off. Runs before tqdm is imported:
    tqdm reads its ``TQDM_*`` defaults once, at import.
    """
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module="langlift")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for name, level in (("bitsandbytes", logging.ERROR), ("accelerate", logging.WARNING), ("lm_eval", logging.WARNING)):
        logging.getLogger(name).setLevel(level)
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", "60")
        os.environ.setdefault("TQDM_DELAY", "10")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def hide_log_messages(logger: str, *fragments: str) -> None:
    """Drop the records of ``logger`` whose message contains one of ``fragments``: a library's notice about a
    choice langlift makes on purpose (its other records still show)."""
    logging.getLogger(logger).addFilter(lambda record: not any(f in record.getMessage() for f in fragments))


prepare_console()
TORCH_LOADED_FIRST = "torch" in sys.modules
OPENMP_POLICY_SET = prepare_openmp()
