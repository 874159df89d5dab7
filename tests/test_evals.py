"""Kuhn poker's policy table read from reply log-likelihoods, scored by OpenSpiel."""

from __future__ import annotations

import math

import pytest

from selfplay.evals import KUHN_REPLIES, kuhn_policy_table
from selfplay.games import kuhn


def scorer(policy: dict[str, list[float]], legal_mass: float):
    """A model that puts `legal_mass` on the legal replies, split as `policy` says and
    evenly between cases ('p'/'P'), and the rest on illegal replies."""
    by_obs = {s.observation: s.key for s in kuhn.INFO_STATES}

    def score(observations, replies):
        out = []
        for obs, reply in zip(observations, replies):
            action = kuhn.Kuhn.parse_action(reply)
            p = legal_mass * policy[by_obs[obs]][action] / len(KUHN_REPLIES[action])
            out.append(math.log(p) if p > 0 else -math.inf)
        return out

    return score


def test_both_cases_of_each_move_count():
    assert KUHN_REPLIES == {0: ["p", "P"], 1: ["b", "B"]}


def test_a_nash_model_reads_back_as_nash_with_zero_exploitability():
    nash = kuhn.nash_policy(1 / 6)
    table = kuhn_policy_table(scorer(nash, legal_mass=0.8))
    assert table["illegal_mass"] == pytest.approx(0.2)
    for key, probs in nash.items():
        assert table["policy"][key] == pytest.approx(probs)
    assert kuhn.exploitability(table["policy"]) == pytest.approx(0.0, abs=1e-9)


def test_a_uniform_model_is_as_exploitable_as_uniform_random():
    uniform = {s.key: [0.5, 0.5] for s in kuhn.INFO_STATES}
    table = kuhn_policy_table(scorer(uniform, legal_mass=1.0))
    assert table["illegal_mass"] == pytest.approx(0.0, abs=1e-12)
    assert kuhn.exploitability(table["policy"]) == pytest.approx(11 / 24)
