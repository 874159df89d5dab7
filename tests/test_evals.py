"""Kuhn poker's policy table read from reply log-likelihoods, scored by OpenSpiel."""

from __future__ import annotations

import math

import pytest

from selfplay import schema
from selfplay.evals import KUHN_REPLIES, kuhn_policy_table, stop_reached
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


def test_the_table_is_the_policy_sampled_at_the_training_temperature():
    # One state's legal replies at T = 1: pass 0.6 (p 0.3, P 0.3), bet 0.2 (b 0.1, B 0.1),
    # illegal 0.2. At T = 0.5 each reply weighs p^2: pass 0.09 + 0.09 = 0.18, bet 0.01 + 0.01
    # = 0.02, so P(pass) = 0.18 / 0.20 = 0.9.
    skewed = {s.key: [0.75, 0.25] for s in kuhn.INFO_STATES}
    table = kuhn_policy_table(scorer(skewed, legal_mass=0.8), temperature=0.5)
    for probs in table["policy"].values():
        assert probs == pytest.approx([0.9, 0.1])
    assert table["illegal_mass"] == pytest.approx(0.2)  # reported at T = 1
    assert kuhn_policy_table(scorer(skewed, legal_mass=0.8))["policy"]["0"] == pytest.approx([0.75, 0.25])


def test_acceptance_figures_read_the_final_evaluation():
    from selfplay.evals import acceptance

    after = {
        "tictactoe/minimax": {"non_loss": 0.915, "illegal": 0.0},
        "kuhn/exploitability": {"exploitability": 0.07},
    }
    figures = acceptance(
        after,
        {
            "tictactoe/minimax/non_loss": ">= 0.90",
            "kuhn/exploitability/exploitability": "<= 0.05",
            "tictactoe/random/non_loss": ">= 0.98",
        },
    )
    assert figures == {
        "tictactoe/minimax/non_loss": {"value": 0.915, "target": ">= 0.90", "met": True},
        "kuhn/exploitability/exploitability": {"value": 0.07, "target": "<= 0.05", "met": False},
        "tictactoe/random/non_loss": {"value": None, "target": ">= 0.98", "met": False},
    }


def test_an_evaluation_of_no_games_meets_no_target():
    """Every game too long for the model's context: the rates read 0 over no games, which
    met '<= 0.01'; the summary shows how many were left out."""
    from selfplay.evals import acceptance, eval_summary, summarize

    result = {"game": "tictactoe", "opponent": "random", "too_long": 200, **summarize(schema.empty())}
    assert result["games"] == 0 and result["illegal"] == 0.0
    figures = acceptance({"tictactoe/random": eval_summary(result)}, {"tictactoe/random/illegal": "<= 0.01"})
    assert figures == {"tictactoe/random/illegal": {"value": None, "target": "<= 0.01", "met": False}}
    assert eval_summary(result)["too_long"] == 200
    task = {"accuracy": 0.0, "pass_at_k": 0.0, "sample_accuracy": 0.0, "valid": 0.0, "problems": 0}
    assert (
        acceptance({"arithmetic/held_out": task}, {"arithmetic/held_out/accuracy": "<= 0.5"})[
            "arithmetic/held_out/accuracy"
        ]["met"]
        is False
    )


def test_acceptance_figures_go_to_json_from_the_real_exploitability():
    """summary.json is written with json: a numpy bool or float would lose the run's summary
    at its very end (it did: a Kuhn run, 2026-11-30)."""
    import json

    from selfplay.evals import acceptance

    value = kuhn.exploitability(kuhn.nash_policy(1 / 6))
    assert type(value) is float
    figures = acceptance(
        {"kuhn/exploitability": {"exploitability": value}}, {"kuhn/exploitability/exploitability": "<= 0.05"}
    )
    assert json.loads(json.dumps(figures))["kuhn/exploitability/exploitability"]["met"] is True


def test_stop_when_reads_the_mean_of_each_metrics_last_window_of_values():
    values = {"batch_reward": [0.9, 0.5, 0.6], "eval/acc": [0.7]}
    assert stop_reached(values, {"batch_reward": ">= 0.55"}, 2) == {
        "metric": "batch_reward",
        "mean": pytest.approx(0.55),
        "target": ">= 0.55",
    }
    assert stop_reached(values, {"batch_reward": ">= 0.6"}, 2) is None  # 0.55, the 0.9 before is not read
    assert stop_reached(values, {"batch_reward": ">= 0.6"}, 3) is not None  # 0.667
    assert stop_reached(values, {"eval/acc": ">= 0.5"}, 2) is None  # one value of two
    assert stop_reached(values, {"eval/acc": "<= 0.5"}, 2) is None  # ...which 0.7 / 2 would meet
    assert stop_reached(values, {"eval/acc": ">= 0.6"}, 2) is None  # ...and 0.7 / 1 too
    assert stop_reached(values, {"missing": "<= 1"}, 1) is None
    met = stop_reached(values, {"batch_reward": "> 0.99", "eval/acc": "> 0.6"}, 1)
    assert met["metric"] == "eval/acc"  # the first condition met, in the config's order


def test_a_figure_landing_on_its_bound_meets_it_despite_float_error():
    from selfplay.evals import meets

    gain = 0.6 - 0.5  # 0.09999999999999998: a gain of 40 of 400 problems
    assert gain < 0.1 and meets(gain, ">= 0.10")
    assert meets(0.95 - 1.0, ">= -0.05")  # -0.050000000000000044: the final within 0.05 of the best
    assert not meets(0.0999, ">= 0.10") and not meets(gain, "> 0.10") and meets(0.1, "<= 0.10")
    assert not meets(None, ">= 0.10")
