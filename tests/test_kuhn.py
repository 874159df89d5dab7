"""Kuhn poker rules, text interface, OpenSpiel info states and exploitability, the Nash player."""

from __future__ import annotations

from collections import Counter

import pytest

from selfplay.games.kuhn import (
    INFO_STATES,
    NASH_ALPHA,
    Kuhn,
    NashPlayer,
    RandomPlayer,
    exploitability,
    nash_policy,
)

J, Q, K = 0, 1, 2
DEALS = [(J, Q), (J, K), (Q, J), (Q, K), (K, J), (K, Q)]  # (player 0's card, player 1's)


def play(cards: tuple[int, int], history: str) -> Kuhn:
    game = Kuhn()
    game.cards = cards
    for c in history:
        game.apply("pb".index(c))
    return game


# ---- rules -------------------------------------------------------------------------

# Player 0's chips for each deal in DEALS order (JQ, JK, QJ, QK, KJ, KQ).
PAYOFFS = {
    "pp": [-1, -1, 1, -1, 1, 1],  # check-check: showdown for the antes
    "bb": [-2, -2, 2, -2, 2, 2],  # bet-call: showdown for ante + bet
    "pbb": [-2, -2, 2, -2, 2, 2],  # check-bet-call: the same showdown
    "bp": [1, 1, 1, 1, 1, 1],  # player 1 folds: player 0 takes its ante
    "pbp": [-1, -1, -1, -1, -1, -1],  # player 0 folds: player 1 takes its ante
}


@pytest.mark.parametrize("history", PAYOFFS)
@pytest.mark.parametrize("deal_index", range(6))
def test_every_deal_and_betting_line_pays_the_standard_chips(history, deal_index):
    game = play(DEALS[deal_index], history)
    assert game.is_terminal
    r0 = float(PAYOFFS[history][deal_index])
    assert game.returns() == [r0, -r0]
    assert game.legal_actions() == []


@pytest.mark.parametrize("history, to_move", [("", 0), ("p", 1), ("b", 1), ("pb", 0)])
def test_player_0_opens_and_players_alternate(history, to_move):
    game = play((K, J), history)
    assert not game.is_terminal
    assert game.current_player == to_move
    assert game.legal_actions() == [0, 1]
    assert game.returns() == [0.0, 0.0]


def test_apply_on_finished_game_raises():
    game = play((K, J), "bb")
    with pytest.raises(ValueError, match="over"):
        game.apply(0)


def test_apply_rejects_an_action_that_is_not_pass_or_bet():
    with pytest.raises(ValueError, match="got 2"):
        Kuhn().apply(2)


def test_seed_deals_two_different_cards_and_every_deal_occurs():
    deals = Counter(Kuhn(seed=s).cards for s in range(300))
    assert set(deals) == set(DEALS)
    assert Kuhn(seed=5).cards == Kuhn(seed=5).cards


def test_game_replays_exactly_from_seed_and_reply_texts():
    for seed in range(50):
        game, players, replies = Kuhn(seed), (RandomPlayer(seed), RandomPlayer(seed + 1)), []
        while not game.is_terminal:
            replies.append(Kuhn.action_text(players[game.current_player].act(game)))
            assert game.apply_text(replies[-1])
        replay = Kuhn(seed)
        for text in replies:
            assert replay.apply_text(text)
        assert replay.cards == game.cards and replay.history == game.history
        assert replay.returns() == game.returns()


# ---- text interface ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, action",
    [
        ("p", 0),
        ("b", 1),
        ("P", 0),
        ("B", 1),
        (" \nb", 1),
        ("bet", 1),
        ("pass", 0),
        ("c", None),
        ("", None),
        ("  ", None),
        ("1", None),
        ("xb", None),
    ],
)
def test_parse_action_reads_first_non_space_character_any_case(text, action):
    assert Kuhn.parse_action(text) == action


def test_action_text_is_p_or_b_and_round_trips():
    assert [Kuhn.action_text(a) for a in (0, 1)] == ["p", "b"]
    assert [Kuhn.parse_action(Kuhn.action_text(a)) for a in (0, 1)] == [0, 1]


@pytest.mark.parametrize("history, mover", [("", 0), ("p", 1), ("b", 1), ("pb", 0)])
def test_unparsable_reply_ends_game_and_mover_loses_two(history, mover):
    game = play((K, J), history)
    assert not game.apply_text("call")
    assert game.illegal_by == mover
    assert game.is_terminal
    assert game.history == history  # the illegal move is not written
    assert game.returns() == ([-2.0, 2.0] if mover == 0 else [2.0, -2.0])


def test_illegal_reply_is_worse_for_the_mover_than_any_legal_line():
    # Player 0 holding K facing a bet would win 2 by calling; an illegal reply costs 2.
    game = play((K, J), "pb")
    assert not game.apply_text("?")
    assert game.returns() == [-2.0, 2.0]


def test_apply_text_on_finished_game_raises_and_keeps_result():
    game = play((J, K), "pp")
    with pytest.raises(ValueError, match="over"):
        game.apply_text("x")
    assert game.illegal_by is None
    assert game.returns() == [-1.0, 1.0]


def test_observation_shows_own_card_and_history():
    assert play((K, J), "").observation(0) == "kuhn K -:"
    assert play((K, J), "p").observation(1) == "kuhn J p:"
    assert play((Q, J), "pb").observation(0) == "kuhn Q pb:"


def test_twelve_info_states_have_distinct_keys_and_observations():
    assert len(INFO_STATES) == 12
    assert len({s.key for s in INFO_STATES}) == 12
    assert len({s.observation for s in INFO_STATES}) == 12
    assert max(len(s.observation) for s in INFO_STATES) <= 48
    by_key = {s.key: s for s in INFO_STATES}
    assert by_key["2pb"] == (0, K, "pb", "2pb", "kuhn K pb:")
    assert by_key["0b"] == (1, J, "b", "0b", "kuhn J b:")


def test_info_state_and_observation_match_the_game_at_each_decision_point():
    for s in INFO_STATES:
        other = (s.card + 1) % 3
        game = play((s.card, other) if s.player == 0 else (other, s.card), s.history)
        assert game.current_player == s.player
        assert game.info_state(s.player) == s.key
        assert game.observation(s.player) == s.observation


def test_info_state_equals_openspiel_information_state_string():
    import pyspiel

    spiel_game = pyspiel.load_game("kuhn_poker")
    for cards in DEALS:
        for history in ("", "p", "b", "pb", "pp", "bb", "pbb"):
            state = spiel_game.new_initial_state()
            for a in (*cards, *("pb".index(c) for c in history)):
                state.apply_action(a)
            game = play(cards, history)
            for p in (0, 1):
                assert game.info_state(p) == state.information_state_string(p)
            if state.is_terminal():
                assert game.returns() == state.returns()


# ---- exploitability --------------------------------------------------------------------


def test_uniform_random_exploitability_is_11_over_24():
    assert exploitability({s.key: [0.5, 0.5] for s in INFO_STATES}) == pytest.approx(11 / 24)


@pytest.mark.parametrize("alpha", [0.0, 1 / 6, 1 / 3])
def test_nash_family_is_unexploitable(alpha):
    assert abs(exploitability(nash_policy(alpha))) < 1e-9


def test_always_bet_exploitability_is_one_third():
    # Best response to always-bet, per card J/Q/K (each dealt 1/3 of the time):
    #   player 1 facing a bet: J folds -1, Q calls (wins 2 vs J, loses 2 vs K) 0, K calls +2 -> 1/3
    #   player 0 (player 1 bets after a check, calls a bet): J checks-folds -1, Q 0,
    #   K bets +2 -> 1/3
    # Always-bet against itself is worth 0 to each, so exploitability = (1/3 + 1/3) / 2.
    assert exploitability({s.key: [0.0, 1.0] for s in INFO_STATES}) == pytest.approx(1 / 3)


def test_always_pass_exploitability_is_one():
    # Always-pass never calls: each best responder bets at its first chance and wins the
    # opponent's ante (+1) with every card; on-policy value is 0 -> (1 + 1) / 2.
    assert exploitability({s.key: [1.0, 0.0] for s in INFO_STATES}) == pytest.approx(1.0)


def test_exploitability_names_a_missing_info_state():
    policy = nash_policy(0.0)
    del policy["1pb"]
    with pytest.raises(KeyError, match="'1pb'"):
        exploitability(policy)


def test_nash_policy_rejects_alpha_outside_the_family():
    with pytest.raises(ValueError, match="alpha"):
        nash_policy(0.5)


# ---- Nash player -----------------------------------------------------------------------


def bet_frequency(cards: tuple[int, int], history: str, n: int = 6000) -> float:
    player, game = NashPlayer(seed=0), play(cards, history)
    return sum(player.act(game) for _ in range(n)) / n


def test_nash_player_mixes_at_its_equilibrium_frequencies():
    assert NASH_ALPHA == pytest.approx(1 / 6)
    assert bet_frequency((K, J), "") == pytest.approx(0.5, abs=0.03)  # K opens with 3 * alpha
    assert bet_frequency((J, K), "") == pytest.approx(1 / 6, abs=0.03)  # J bluffs with alpha
    assert bet_frequency((Q, K), "pb") == pytest.approx(0.5, abs=0.03)  # Q calls with alpha + 1/3
    assert bet_frequency((J, Q), "p") == 0.0  # player 1 checks Q behind
    # Player 1 bluffs J after a check with 1/3.
    assert bet_frequency((K, J), "p") == pytest.approx(1 / 3, abs=0.03)


def test_nash_player_is_deterministic_given_seed():
    game = play((K, J), "")
    a, b = NashPlayer(seed=3), NashPlayer(seed=3)
    assert [a.act(game) for _ in range(50)] == [b.act(game) for _ in range(50)]


def test_nash_player_beats_random_in_both_seats():
    # Exact values (OpenSpiel policy_value, nash_policy(1/6) vs uniform): +1/9 in seat 0,
    # +1/6 in seat 1. Per-game returns have std about 1.4, so over 4000 games the
    # tolerance is about 3 standard errors (the games are seeded: the run is fixed).
    n = 4000
    for seat, value in ((0, 1 / 9), (1, 1 / 6)):
        total = 0.0
        for i in range(n):
            game = Kuhn(seed=i)
            players = [RandomPlayer(seed=i), RandomPlayer(seed=i)]
            players[seat] = NashPlayer(seed=i)
            while not game.is_terminal:
                game.apply(players[game.current_player].act(game))
            total += game.returns()[seat]
        assert total / n == pytest.approx(value, abs=0.07)
