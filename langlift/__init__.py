"""langlift: turn an English instruction set and a monolingual corpus into an instruction-following
LLM for a low-resource language, as a DVC pipeline."""

import os
import sys

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


TORCH_LOADED_FIRST = "torch" in sys.modules
OPENMP_POLICY_SET = prepare_openmp()
