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


def overlong_penalty(length: int, max_length: int, buffer: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), a length guard added to a
    reply's reward: 0 up to max_length - buffer tokens, then falling linearly to -1 at
    max_length, and -1 beyond (a reply cut off by the token limit). buffer 0: none."""
    if buffer <= 0:
        return 0.0
    free = max_length - buffer
    if length <= free:
        return 0.0
    return -1.0 if length > max_length else (free - length) / buffer
