import math

import pytest

from selfplay import schema
from selfplay.evals import summarize
from selfplay.league import LEARNER
from tests.rows import make_row


def turn(traj, turn_index, role, policy, opponent, outcome, illegal=False):
    return make_row(
        traj_id=traj,
        turn=turn_index,
        role=role,
        policy_id=policy,
        opponent_id=opponent,
        outcome=outcome,
        illegal=illegal,
    )


def test_a_game_the_learner_never_moved_in_still_counts():
    table = schema.from_rows(
        [
            # g1: learner is X and wins
            turn("g1", 0, 0, LEARNER, "minimax", 1.0),
            turn("g1", 1, 1, "minimax", LEARNER, -1.0),
            # g2: the opponent (X) opens with an illegal move; the learner (O) wins unplayed
            turn("g2", 0, 0, "other", LEARNER, -1.0, illegal=True),
            # g3: learner is O and plays an illegal move
            turn("g3", 0, 0, "minimax", LEARNER, 1.0),
            turn("g3", 1, 1, LEARNER, "minimax", -1.0, illegal=True),
        ]
    )
    s = summarize(table)
    assert s["games"] == 3 and s["first_games"] == 1 and s["second_games"] == 2
    assert s["win"] == 2 / 3 and s["loss"] == 1 / 3 and s["illegal"] == 1 / 3
    assert s["second_win"] == 0.5 and s["second_illegal"] == 0.5 and s["first_win"] == 1.0


def test_diversity_metrics_on_hand_counted_replies():
    from selfplay.metrics import action_entropy, distinct_n

    assert distinct_n(["ab", "ab", "c"], 1) == 3 / 5  # a, b, c of a b a b c
    assert distinct_n(["ab", "ab", "c"], 2) == 1 / 2  # ab of ab ab
    assert distinct_n(["a"], 2) == 0.0
    assert action_entropy(["5", "5", "5"]) == 0.0
    assert action_entropy(["1", "2", "1", "2"]) == pytest.approx(math.log(2))


def test_game_points_for_elo():
    from selfplay.evals import game_points

    assert (game_points(2.0), game_points(0.0), game_points(-1.0)) == (1.0, 0.5, 0.0)


def test_summarize_from_either_policys_side():
    table = schema.from_rows(
        [
            turn("g1", 0, 0, "snap-1", "snap-0", 2.0),
            turn("g1", 1, 1, "snap-0", "snap-1", -2.0),
            turn("g2", 0, 0, "snap-0", "snap-1", 0.0),
            turn("g2", 1, 1, "snap-1", "snap-0", 0.0),
        ]
    )
    s = summarize(table, policy="snap-1")
    assert (s["games"], s["win"], s["draw"], s["return"]) == (2, 0.5, 0.5, 1.0)
    assert summarize(table, policy="snap-0")["return"] == -1.0


def test_slot_plan_never_evicts_what_the_play_needs():
    from actors.generator import slot_plan

    # loaded LRU-first [a, b]; needed {b, c}: c takes a's engine, not b's (b is needed)
    assert slot_plan(["a", "b"], {"b", "c"}, 2) == [("c", "a")]
    assert slot_plan(["b", "a"], {"b", "c"}, 2) == [("c", "a")]
    assert slot_plan(["a"], {"b", "c"}, 3) == [("b", None), ("c", None)]
    assert slot_plan(["a"], {"b", "c"}, 2) == [("b", None), ("c", "a")]
    assert slot_plan(["a", "b"], {"a"}, 2) == []
    with pytest.raises(ValueError, match="league.max_live_opponents"):
        slot_plan([], {"a", "b", "c"}, 2)
