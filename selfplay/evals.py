"""Evaluations read from a policy's probabilities rather than from played games."""
from __future__ import annotations

import math
import string
from collections.abc import Callable

from selfplay.games import kuhn

# Every one-character reply that Kuhn poker accepts, grouped by the action it means.
KUHN_REPLIES = {a: [c for c in string.printable if kuhn.Kuhn.parse_action(c) == a] for a in (0, 1)}


def kuhn_policy_table(score: Callable[[list[str], list[str]], list[float]]) -> dict:
    """The policy at Kuhn poker's 12 information states, for OpenSpiel's exploitability.
    `score(observations, replies)` gives each reply's log-likelihood after its observation.
    P(action) sums the one-character replies that parse to it ('p'/'P', 'b'/'B'); the mass
    on anything else (an illegal reply) is reported as illegal_mass and renormalised away,
    which is exact for one-token replies (the demo's setting)."""
    pairs = [(s, a, c) for s in kuhn.INFO_STATES for a, chars in KUHN_REPLIES.items() for c in chars]
    logps = score([s.observation for s, _, _ in pairs], [c for _, _, c in pairs])
    mass = {s.key: [0.0, 0.0] for s in kuhn.INFO_STATES}
    for (s, a, _), lp in zip(pairs, logps):
        mass[s.key][a] += math.exp(lp)
    policy = {}
    for key, (p_pass, p_bet) in mass.items():
        total = p_pass + p_bet
        policy[key] = [p_pass / total, p_bet / total] if total > 0 else [0.5, 0.5]
    illegal = sum(1 - sum(m) for m in mass.values()) / len(mass)
    return {"policy": policy, "illegal_mass": illegal}
