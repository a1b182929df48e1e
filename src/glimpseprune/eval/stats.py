"""Paired comparison of two methods scored on the same items (exact McNemar test).

Two pruning methods run on the same records disagree on a few items only; an unpaired comparison of their
accuracies throws that pairing away and needs far more items to tell a real gap from noise. McNemar's test uses
just the discordant items: under "no difference" each is equally likely to favour either method, so the count
favouring one is Binomial(b + c, 1/2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def paired_exact_test(scores_a: Sequence[float], scores_b: Sequence[float]) -> dict:
    """Exact two-sided McNemar test on per-item 0/1 scores of methods A and B over the same items, in order.

    Returns ``{"n", "a_only", "b_only", "p_value"}``: items only A got right, items only B got right, and the
    two-sided exact binomial p-value (1.0 when they never disagree).
    """
    if len(scores_a) != len(scores_b):
        raise ValueError(f"paired scores need the same items: {len(scores_a)} vs {len(scores_b)} scores")
    for s in (*scores_a, *scores_b):
        if s not in (0, 1):
            raise ValueError(f"paired_exact_test needs 0/1 scores (exact match), got {s!r}")
    a_only = sum(1 for a, b in zip(scores_a, scores_b) if a and not b)
    b_only = sum(1 for a, b in zip(scores_a, scores_b) if b and not a)
    n = a_only + b_only
    tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1)) / 2**n
    return {"n": len(scores_a), "a_only": a_only, "b_only": b_only, "p_value": min(1.0, 2 * tail)}
