"""Deduplication and filtering of instruction data and corpus (the ``dedupe`` stage)."""

from langlift.dedupe.pipeline import Outputs, run

__all__ = ["Outputs", "run"]
