"""Packed pretraining data: documents tokenised, joined with EOS into one stream and cut into
equal blocks, so no position is spent on padding. Batches are drawn from a seeded permutation per
epoch, which makes the data position a pure function of the step (exact resumes)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from langlift import records
from langlift.errors import DataError, LangliftError

log = logging.getLogger(__name__)


def read_texts(path: str | Path) -> list[str]:
    """The ``text`` of every corpus record in ``path``; an empty corpus is an error."""
    path = Path(path)
    if not path.exists():
        raise LangliftError(f"{path}: not found (run the split stage first: dvc repro split)")
    texts = [rec["text"] for _, rec in records.read(path, "corpus")]
    if not texts:
        raise DataError(path, None, None, "the corpus is empty: pretraining needs documents")
    return texts


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], chunk: int = 1000) -> np.ndarray:
    """One token stream: ``<s> doc </s> <s> doc </s> …`` (BOS only if the tokenizer has one)."""
    dtype = np.uint16 if len(tokenizer) <= 2**16 else np.int32
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id]
    parts = []
    for i in tqdm(range(0, len(texts), chunk), desc="tokenize", unit="chunk", leave=False):
        for ids in tokenizer(list(texts[i : i + chunk]), add_special_tokens=False, verbose=False)["input_ids"]:
            parts.append(np.asarray(bos + ids + eos, dtype=dtype))
    return np.concatenate(parts)


def blocks(stream: np.ndarray, length: int, path: str | Path, allow_short: bool = False) -> torch.Tensor:
    """Cut ``stream`` into ``[n, length]`` blocks (the remainder is dropped).

    A stream shorter than one block is an error naming ``path``; with ``allow_short`` (validation)
    it becomes a single shorter block instead.
    """
    n = len(stream) // length
    if n == 0:
        if allow_short and len(stream) >= 2:
            return torch.from_numpy(stream.astype(np.int64))[None]
        raise DataError(path, None, None, f"the corpus has {len(stream)} tokens, fewer than one sequence of "
                                          f"{length}: lower pretrain.model.context or add text")
    return torch.from_numpy(stream[: n * length].astype(np.int64)).view(n, length)


class BatchPlan:
    """Which blocks make up global micro-batch ``i``: epoch-wise seeded permutations, sharded by rank."""

    def __init__(self, n_blocks: int, micro_batch: int, world: int, rank: int, seed: int):
        if n_blocks < micro_batch * world:
            raise LangliftError(f"the corpus gives {n_blocks} sequences, fewer than one batch of "
                                f"{micro_batch * world}: lower pretrain.batch_size or add text")
        self.n_blocks, self.micro_batch, self.world, self.rank, self.seed = n_blocks, micro_batch, world, rank, seed
        self.per_epoch = n_blocks // (micro_batch * world)
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, i: int) -> torch.Tensor:
        """Block indices of this rank's share of global micro-batch ``i`` (0-based, over all epochs)."""
        epoch, j = divmod(i, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n_blocks, generator=g)
        start = (j * self.world + self.rank) * self.micro_batch
        return self._perm[start : start + self.micro_batch]


def doc_position_ids(batch: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Positions restarting at each document, for padding-free attention (flash-attention varlen)."""
    starts = torch.zeros_like(batch, dtype=torch.bool)
    starts[:, 1:] = batch[:, :-1] == eos_id
    starts[:, 0] = True
    idx = torch.arange(batch.shape[1]).expand_as(batch)
    last_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - last_start


def padded_batches(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], length: int,
                   batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The unpacked baseline: one document per row, truncated to ``length``, padded to the batch's longest."""
    for i in range(0, len(texts) - batch_size + 1, batch_size):
        enc = tokenizer(list(texts[i : i + batch_size]), truncation=True, max_length=length,
                        padding="longest", return_tensors="pt")
        yield enc["input_ids"], enc["attention_mask"]
