"""Functions the task YAMLs in ``tasks/`` reference with lm-eval's ``!function`` tag."""

from __future__ import annotations

from typing import Any


def answer_bits_per_byte(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, Any]:
    """lm-eval ``process_results`` for a log-likelihood task over instruction records: the answer's
    log-likelihood with its UTF-8 byte count (lm-eval's ``bits_per_byte`` aggregation divides the sums),
    and whether greedy decoding reproduces it. The separator scored before the answer (a newline or
    two) is in the log-likelihood but not in the byte count."""
    loglikelihood, is_greedy = results[0]
    return {"bits_per_byte": (loglikelihood, len(doc["output"].strip().encode("utf-8"))), "acc": float(is_greedy)}
