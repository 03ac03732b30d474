"""Paired statistics for "did the policy get better on the same questions?".

Two evals of the same held-out questions (the starting policy, a later round) are paired: a question the later
policy gets right and the earlier one wrong is a *win*, the reverse a *loss*; questions both get right or both get
wrong carry no information about the change. McNemar's exact test asks whether wins and losses could be a fair
coin's split: under "no change" each discordant question is a win with probability 1/2, so

    p = min(1, 2 · P[Binomial(w + l, 1/2) ≤ min(w, l)])      (two-sided)

It is exact for small counts (no χ² approximation), which is what a few hundred CPU-sized questions need.
"""
from __future__ import annotations

import math
from collections.abc import Mapping


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value of `wins` against `losses` (1.0 when there is no discordant question)."""
    if wins < 0 or losses < 0:
        raise ValueError("wins and losses are counts")
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_change(before: Mapping[str, bool], after: Mapping[str, bool]) -> dict:
    """The change from `before` to `after` (question id -> right?) on the questions both answered: accuracy of
    each, the difference, its paired standard error, wins, losses and McNemar's exact p."""
    ids = sorted(set(before) & set(after))
    n = len(ids)
    wins = sum(after[i] and not before[i] for i in ids)
    losses = sum(before[i] and not after[i] for i in ids)
    if not n:
        return {"n": 0, "before": None, "after": None, "delta": None, "se": None, "wins": 0, "losses": 0, "p": 1.0}
    d = [int(after[i]) - int(before[i]) for i in ids]
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else None
    return {"n": n, "before": sum(before[i] for i in ids) / n, "after": sum(after[i] for i in ids) / n,
            "delta": mean, "se": se, "wins": wins, "losses": losses, "p": mcnemar_exact(wins, losses)}
