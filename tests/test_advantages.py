"""Returns-to-go, SPIRAL's role-conditioned advantages and GAE, against hand-worked numbers."""

from __future__ import annotations

import pytest

from learner.advantages import gae_advantages, role_conditioned_advantages, update_baselines
from selfplay.rewards import returns_to_go

X, O = ("tictactoe", 0), ("tictactoe", 1)


def test_returns_to_go_undiscounted():
    # G_2 = 1; G_1 = 0 + 1 = 1; G_0 = 0.5 + 1 = 1.5
    assert returns_to_go([0.5, 0.0, 1.0]) == [1.5, 1.0, 1.0]


def test_returns_to_go_half_discount():
    # G_3 = 4; G_2 = 0 + 0.5*4 = 2; G_1 = 2 + 0.5*2 = 3; G_0 = 1 + 0.5*3 = 2.5
    assert returns_to_go([1.0, 2.0, 0.0, 4.0], gamma=0.5) == [2.5, 3.0, 2.0, 4.0]


def test_returns_to_go_of_terminal_reward_only():
    assert returns_to_go([0.0, 0.0, -1.0]) == [-1.0, -1.0, -1.0]
    assert returns_to_go([]) == []


def test_first_sighting_of_key_starts_at_batch_mean():
    # X returns 1, 1, -1 -> mean 1/3; O returns -1, 0 -> mean -0.5
    new = update_baselines({}, [X, X, X, O, O], [1.0, 1.0, -1.0, -1.0, 0.0], alpha=0.9)
    assert new == pytest.approx({X: 1 / 3, O: -0.5})


def test_second_update_is_ema_towards_batch_mean():
    # X: 0.9 * 0.2 + 0.1 * mean(1, -1, -1) = 0.18 + 0.1 * (-1/3) = 0.14666...
    new = update_baselines({X: 0.2}, [X, X, X], [1.0, -1.0, -1.0], alpha=0.9)
    assert new[X] == pytest.approx(0.18 - 1 / 30)
    # alpha 0.5: 0.5 * 0.2 + 0.5 * 1.0 = 0.6
    assert update_baselines({X: 0.2}, [X], [1.0], alpha=0.5)[X] == pytest.approx(0.6)


def test_keys_absent_from_batch_keep_their_baseline_and_input_is_not_mutated():
    old = {X: 0.2, O: -0.4, ("other", 0): 0.7}
    snapshot = dict(old)
    new = update_baselines(old, [X, X], [1.0, 0.0], alpha=0.75)
    # X: 0.75 * 0.2 + 0.25 * 0.5 = 0.15 + 0.125 = 0.275
    assert new[X] == pytest.approx(0.275)
    assert new[O] == -0.4
    assert new[("other", 0)] == 0.7
    assert old == snapshot


def test_alpha_zero_jumps_to_batch_mean():
    assert update_baselines({O: 0.9}, [O, O], [1.0, -1.0], alpha=0.0)[O] == 0.0


def test_role_conditioned_advantages_use_each_roles_baseline():
    keys = [X, X, X, O, O]
    returns = [1.0, 1.0, -1.0, -1.0, 1.0]
    baselines = {X: 0.2, O: -0.5}
    # X: 1 - 0.2, 1 - 0.2, -1 - 0.2; O: -1 + 0.5, 1 + 0.5
    assert role_conditioned_advantages(keys, returns, baselines) == pytest.approx([0.8, 0.8, -1.2, -0.5, 1.5])


def test_a_role_never_seen_has_baseline_zero():
    assert role_conditioned_advantages([O, X], [1.0, -1.0], {X: 0.5}) == pytest.approx([1.0, -1.5])


def test_each_game_counts_once_however_many_of_its_turns_were_sampled():
    # Game g1 (X won, +1) has three sampled X turns, g2 (X lost, -1) one: per turn the
    # mean would be (3 - 1) / 4 = 0.5; per game it is (1 - 1) / 2 = 0.
    keys, returns = [X, X, X, X], [1.0, 1.0, 1.0, -1.0]
    assert update_baselines({}, keys, returns, 0.9, games=["g1", "g1", "g1", "g2"])[X] == 0.0
    assert update_baselines({}, keys, returns, 0.9)[X] == 0.5  # rows as games
    # EMA step: 0.9 * 0.4 + 0.1 * 0 = 0.36
    assert update_baselines({X: 0.4}, keys, returns, 0.9, games=["g1", "g1", "g1", "g2"])[X] == pytest.approx(
        0.36
    )


# ---- GAE over a player's turns --------------------------------------------------------


def test_gae_on_a_won_game_by_hand():
    # One player's three turns, reward 1 at the end (return-to-go 1 throughout), V = .2 .5 .8,
    # lam .5. delta_2 = 1 - .8 = .2; delta_1 = .8 - .5 = .3; delta_0 = .5 - .2 = .3
    # A_2 = .2; A_1 = .3 + .5 * .2 = .4; A_0 = .3 + .5 * .4 = .5; targets G = A + V
    adv, target = gae_advantages(["g"] * 3, [0, 2, 4], [1.0, 1.0, 1.0], [0.2, 0.5, 0.8], lam=0.5)
    assert adv == pytest.approx([0.5, 0.4, 0.2])
    assert target == pytest.approx([0.7, 0.9, 1.0])


def test_gae_sorts_each_players_turns_and_keeps_players_apart():
    # rows out of order, two players of one game: X (turns 0, 2) won, O (turns 1, 3) lost
    groups = [("t", 1), ("t", 0), ("t", 1), ("t", 0)]
    turns = [3, 2, 1, 0]
    adv, _ = gae_advantages(groups, turns, [-1.0, 1.0, -1.0, 1.0], [0.0, 0.5, -0.5, 0.25], lam=0.0)
    # lam 0: A_k = r_k + V_{k+1} - V_k, r_k = 0 between turns; a player's last turn: ret - V
    # O: turn 3: -1 - 0 = -1; turn 1: 0 + 0 - (-.5) = .5.  X: turn 2: 1 - .5 = .5; turn 0: .5 - .25
    assert adv == pytest.approx([-1.0, 0.5, 0.5, 0.25])


def test_gae_lambda_one_is_return_minus_value_and_zero_is_one_step_td():
    returns, values = [0.5, 0.5, 0.0], [0.1, 0.2, 0.3]  # reward .5 at turn 1, none at 0 and 2
    mc, _ = gae_advantages(["g"] * 3, [0, 1, 2], returns, values, lam=1.0)
    assert mc == pytest.approx([0.4, 0.3, -0.3])
    td, _ = gae_advantages(["g"] * 3, [0, 1, 2], returns, values, lam=0.0)
    # r_0 = 0, r_1 = .5 - 0 = .5: A_0 = 0 + .2 - .1; A_1 = .5 + .3 - .2; A_2 = 0 - .3
    assert td == pytest.approx([0.1, 0.6, -0.3])


def test_gae_discount_makes_a_sooner_win_worth_more():
    # one player's 3 turns, the win (+1) at the last; V = .5, .6, .7
    returns, values = [1.0, 1.0, 1.0], [0.5, 0.6, 0.7]
    adv, target = gae_advantages(["g"] * 3, [0, 1, 2], returns, values, lam=0.5, gamma=0.9)
    # G_2 = 1; G_1 = 0 + .9 * (.5 * .7 + .5 * 1) = .765; G_0 = .9 * (.5 * .6 + .5 * .765) = .61425
    assert target == pytest.approx([0.61425, 0.765, 1.0])
    assert adv == pytest.approx([0.11425, 0.165, 0.3])
    # lam 1: G_k = gamma^(n-k) * 1, a win two own turns ahead is worth .81
    _, mc = gae_advantages(["g"] * 3, [0, 1, 2], returns, values, lam=1.0, gamma=0.9)
    assert mc == pytest.approx([0.81, 0.9, 1.0])
    # gamma 1 (the default), undiscounted: G_1 = .5 * .7 + .5 * 1 = .85, G_0 = .5 * .6 + .5 * .85
    adv, target = gae_advantages(["g"] * 3, [0, 1, 2], returns, values, lam=0.5)
    assert target == pytest.approx([0.725, 0.85, 1.0])
    assert adv == pytest.approx([0.225, 0.25, 0.3])


def test_gae_with_a_missing_later_turn_bootstraps_from_the_next_one_present():
    # turns 0 and 4 of a player present, turn 2 missing: turn 4 is turn 0's successor
    adv, target = gae_advantages(["g", "g"], [4, 0], [1.0, 1.0], [0.6, 0.2], lam=0.5)
    assert target == pytest.approx([1.0, 0.5 * 0.6 + 0.5 * 1.0])
    assert adv == pytest.approx([0.4, 0.8 - 0.2])
