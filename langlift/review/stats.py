"""Agreement statistics of the folded reviews: Cohen's and Fleiss' kappa (intervals: langlift.stats)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels of the same items; None when chance agreement is 1 (undefined)."""
    if len(a) != len(b) or not a:
        raise ValueError("cohen_kappa: need two equally long, non-empty label lists")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    return None if expected >= 1 else (observed - expected) / (1 - expected)


def pairwise_agreement(items: Sequence[Sequence[str]]) -> float:
    """The share of agreeing rater pairs, averaged over items (each item: the labels of its >= 2 raters)."""
    return sum(_item_agreement(labels) for labels in items) / len(items)


def _item_agreement(labels: Sequence[str]) -> float:
    n = len(labels)
    return sum(c * (c - 1) for c in Counter(labels).values()) / (n * (n - 1))


def fleiss_kappa(items: Sequence[Sequence[str]]) -> float | None:
    """Fleiss' kappa, in its form for a varying number of raters per item; None when chance agreement is 1."""
    if not items or any(len(labels) < 2 for labels in items):
        raise ValueError("fleiss_kappa: every item needs at least 2 ratings")
    observed = pairwise_agreement(items)
    totals = Counter(label for labels in items for label in labels)
    ratings = sum(totals.values())
    expected = sum((c / ratings) ** 2 for c in totals.values())
    return None if expected >= 1 else (observed - expected) / (1 - expected)
