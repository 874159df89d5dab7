"""SPIRAL's role-conditioned advantage estimation (RAE), on the returns the verifier
attaches (`selfplay/rewards.py`).

SPIRAL (Liu et al., 2025, "SPIRAL: Self-Play on Zero-Sum Games Incentivizes Reasoning"):
    b_{G,p} <- alpha * b_{G,p} + (1 - alpha) * R_p        (one EMA per game G and role p)
    A_{G,p}(tau) = R_p(tau) - b_{G,p}
Separate baselines matter because zero-sum games are not symmetric (X wins more often
than O in TicTacToe), and one shared baseline would bias both roles' gradients."""

from __future__ import annotations

from collections import defaultdict

Key = tuple[str, int]  # (game, role)


def update_baselines(
    baselines: dict[Key, float], keys: list[Key], returns: list[float], alpha: float
) -> dict[Key, float]:
    """One EMA step per (game, role) present in the batch, towards that key's mean return.
    A key seen for the first time starts at its batch mean."""
    groups: dict[Key, list[float]] = defaultdict(list)
    for k, r in zip(keys, returns):
        groups[k].append(r)
    new = dict(baselines)
    for k, rs in groups.items():
        mean = sum(rs) / len(rs)
        new[k] = alpha * baselines[k] + (1 - alpha) * mean if k in baselines else mean
    return new


def role_conditioned_advantages(
    keys: list[Key], returns: list[float], baselines: dict[Key, float]
) -> list[float]:
    return [r - baselines[k] for k, r in zip(keys, returns)]
