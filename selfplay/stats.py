"""Small statistics shared by the report, the league, the evaluations and the driver."""

from __future__ import annotations

import math


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927):
    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def difference_interval(s1: float, n1: int, s2: float, n2: int, z: float = 1.96) -> tuple[float, float]:
    """The interval of p1 - p2 for two independent binomial proportions (s successes of n
    each): Newcombe's hybrid score interval (1998, method 10) from each one's Wilson
    interval. Two runs alike hold 0 in it 95% of the time; one run's figure inside the other's
    own interval did only about 83% of the time (it ignores the first figure's own noise).
    Nothing measured on a side (n 0): (-1, 1), any difference."""
    if n1 == 0 or n2 == 0:
        return (-1.0, 1.0)
    p1, p2 = s1 / n1, s2 / n2
    (l1, u1), (l2, u2) = wilson_interval(s1, n1, z), wilson_interval(s2, n2, z)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def points(wins: float, draws: float) -> float:
    """A game's points: a win 1, a draw 1/2, a loss 0. What Elo, promotion and every
    head-to-head score count; over n games, points / n is the score."""
    return wins + draws / 2


def mean_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """Normal-approximation interval of a mean: mean ± z·s/sqrt(n), s the sample standard
    deviation (n - 1); at least two values."""
    n = len(values)
    if n < 2:
        raise ValueError(f"mean_interval: needs at least two values, got {n}")
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return (mean - z * s / math.sqrt(n), mean + z * s / math.sqrt(n))


# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom 1-30 (Fisher and Yates)
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
T95 += (2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)
T95 += (2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def seeds_interval(values: list[float]) -> tuple[float, float]:
    """95% interval of a mean over a few runs (seeds): mean ± t·s/sqrt(n) with Student's t at
    n - 1 degrees of freedom (the normal 1.96 past 30), as the closing notes and README
    state spreads over seeds; at least two values."""
    n = len(values)
    if n < 2:
        raise ValueError(f"seeds_interval: needs at least two values, got {n}")
    return mean_interval(values, z=T95[n - 2] if n - 1 <= len(T95) else 1.96)


def mean_by_key(maps: list[dict[str, float]]) -> dict[str, float]:
    """Each key's mean over the maps that hold it (key order: first seen)."""
    values: dict[str, list[float]] = {}
    for m in maps:
        for key, value in m.items():
            values.setdefault(key, []).append(value)
    return {key: sum(vs) / len(vs) for key, vs in values.items()}


def isotonic(values: list[float]) -> list[float]:
    """The non-decreasing sequence nearest `values` in squared error (pool adjacent
    violators, Ayer et al. 1955): each run of values that falls is replaced by its mean,
    merged with the runs before it while their means still fall. A learning curve read this
    way lets a lucky high evaluation count only as much as the ones around it."""
    blocks: list[tuple[float, int]] = []  # (mean, count), their means strictly rising
    for value in values:
        mean, count = value, 1
        while blocks and blocks[-1][0] >= mean:
            before, n = blocks.pop()
            mean, count = (before * n + mean * count) / (n + count), n + count
        blocks.append((mean, count))
    return [mean for mean, count in blocks for _ in range(count)]
