"""Rewards and returns: what a verifier attaches to the turns it accepts and the learner
turns into advantages. Pure; shared by `actors/` (verifiers) and `learner/`."""

from __future__ import annotations


def returns_to_go(rewards: list[float], gamma: float = 1.0) -> list[float]:
    """G_t = r_t + gamma * G_{t+1}, for one role's turns in order."""
    out, acc = [0.0] * len(rewards), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = rewards[t] + gamma * acc
        out[t] = acc
    return out
