"""MinHash signatures and LSH banding for near-duplicate search.

The signatures are datasketch's ``affine32`` MinHash (same permutations for the same seed, same
MurmurHash3 pre-mix, ``a * h + b mod 2**32``), computed for all shingles of a document in one
vectorised torch call instead of datasketch's per-document Python hashing: ``signature(hashes)``
equals ``datasketch.MinHash(num_perm, seed, hashfunc=int).update_batch(hashes)`` (a test checks it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from datasketch import MinHash

from langlift.text import char_ngram_hashes

_SIGN = np.uint32(0x80000000)


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def shingles(text: str, k: int) -> set[str]:
    """The character ``k``-grams of ``text`` (the whole text when it is shorter than ``k``)."""
    return {text[i : i + k] for i in range(max(1, len(text) - k + 1))}


def shingle_hashes(text: str, k: int) -> np.ndarray:
    """Deterministic 32-bit hashes of the character ``k``-grams of ``text``, one per position."""
    return (_fmix64(char_ngram_hashes(text, k)) >> np.uint64(32)).astype(np.uint32)


def jaccard(a: set[str], b: set[str]) -> float:
    """Exact Jaccard similarity of two shingle sets."""
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class MinHasher:
    """``num_perm`` datasketch ``affine32`` permutations applied to shingle hashes with torch."""

    def __init__(self, num_perm: int = 128, seed: int = 1):
        a, b = MinHash(num_perm=num_perm, seed=seed).permutations
        # int32 arithmetic wraps like uint32; adding 2**31 to b makes signed order equal unsigned order
        self.a = torch.from_numpy(a.astype(np.uint32).view(np.int32))
        self.b = torch.from_numpy((b.astype(np.uint32) ^ _SIGN).view(np.int32))
        self.num_perm = num_perm

    def __call__(self, hashes: np.ndarray) -> np.ndarray:
        """The signature (``num_perm`` uint32 minima) of one document's shingle hashes."""
        h = torch.from_numpy(_fmix32(hashes).view(np.int32))
        return torch.addcmul(self.b, h[:, None], self.a).amin(0).numpy().view(np.uint32) ^ _SIGN


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: a document's signature is too small to split, and handing it to a
    second OpenMP thread on a busy machine made it ~30x slower (600 us instead of 17 us)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def lsh_params(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """Bands and rows: the most rows per band (fewest spurious candidates) whose ``num_perm // rows``
    bands still make a pair at exactly ``threshold`` a candidate with probability >= ``recall``.

    Candidates are verified with the exact Jaccard similarity afterwards, so missing a pair costs
    recall while a spurious candidate only costs a comparison; datasketch's optimiser weighs both
    alike and finds only ~40% of the pairs at the threshold (9 bands x 13 rows for 0.8 / 128).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    for rows in range(num_perm // 2, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    raise ValueError(f"num_perm={num_perm} is too small for threshold {threshold}")


class LSH:
    """Banded LSH buckets mapping each band of a signature to the items inserted with it."""

    def __init__(self, bands: int, rows: int):
        self.bands, self.rows = bands, rows
        self._mult = np.random.default_rng(0).integers(0, 2**63, rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._tables: list[dict[int, int | list[int]]] = [{} for _ in range(bands)]

    def keys(self, signature: np.ndarray) -> list[int]:
        """One 60-bit key per band (a multiply-add hash of its rows)."""
        v = signature[: self.bands * self.rows].reshape(self.bands, self.rows).astype(np.uint64)
        return ((v * self._mult).sum(axis=1) >> np.uint64(4)).tolist()

    def query(self, keys: list[int]) -> set[int]:
        """Items sharing at least one band with ``keys``."""
        found: set[int] = set()
        for table, key in zip(self._tables, keys):
            hit = table.get(key)
            if hit is not None:
                found.update(hit) if isinstance(hit, list) else found.add(hit)
        return found

    def insert(self, keys: list[int], item: int) -> None:
        for table, key in zip(self._tables, keys):
            hit = table.get(key)
            if hit is None:
                table[key] = item  # most buckets hold one item: store it bare to save memory
            elif isinstance(hit, list):
                hit.append(item)
            else:
                table[key] = [hit, item]
