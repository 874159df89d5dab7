"""Kuhn poker rules, text interface, OpenSpiel info states and exploitability, the Nash player,
the average policy."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from selfplay.average import AVERAGE, POLICIES, KuhnAverage
from selfplay.games.kuhn import (
    INFO_STATES,
    NASH_ALPHA,
    Kuhn,
    NashPlayer,
    RandomPlayer,
    average_policy,
    exploitability,
    nash_policy,
    own_reach,
    tabular_policy,
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


def test_an_illegal_reply_is_never_better_for_the_mover_than_a_legal_one():
    """Every deal and every point where someone is to move: the illegal reply's return is
    at most the worst outcome of the mover's legal lines from there (as bad as losing a
    called bet)."""

    def worst(cards, history, player) -> float:  # `player`'s worst over every line from here
        game = play(cards, history)
        if game.is_terminal:
            return game.returns()[player]
        return min(worst(cards, history + move, player) for move in "pb")

    for cards in [(a, b) for a in range(3) for b in range(3) if a != b]:
        for history in ("", "p", "b", "pb"):
            game = play(cards, history)
            mover = game.current_player
            assert not game.apply_text("?")
            assert game.returns()[mover] == -2.0 <= worst(cards, history, mover)
    assert worst((J, K), "pb", 0) == -2.0  # J facing a bet: calling loses as much


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


ALWAYS_PASS = {s.key: [1.0, 0.0] for s in INFO_STATES}
ALWAYS_BET = {s.key: [0.0, 1.0] for s in INFO_STATES}


def random_policy(rng) -> dict[str, list[float]]:
    out = {}
    for s in INFO_STATES:
        p = rng.random()
        out[s.key] = [p, 1 - p]
    return out


def test_own_reach_is_the_product_of_the_players_own_earlier_actions():
    policy = {s.key: [0.5, 0.5] for s in INFO_STATES}
    policy["1"] = [0.3, 0.7]  # player 0 passes Q with 0.3
    assert own_reach(policy, "1") == 1.0  # nothing played yet
    assert own_reach(policy, "1pb") == pytest.approx(0.3)  # its own pass at '1'
    assert own_reach(policy, "1p") == own_reach(policy, "1b") == 1.0  # player 1's first move


def test_average_weighs_each_policy_by_its_own_reach_of_the_state():
    # Half always-pass, half always-bet. Player 0's first move: half each. After
    # pass-bet only always-pass has passed, so there it is always-pass's (a plain mean of
    # the tables would say [0.5, 0.5]). Player 1 reaches '1p' and '1b' under both: half each.
    avg = average_policy([ALWAYS_PASS, ALWAYS_BET])
    assert avg["0"] == avg["2"] == [0.5, 0.5]
    assert avg["0pb"] == avg["2pb"] == [1.0, 0.0]
    assert avg["1p"] == avg["1b"] == [0.5, 0.5]
    weighted = average_policy([ALWAYS_PASS, ALWAYS_BET], [1.0, 3.0])
    assert weighted["0"] == [0.25, 0.75] and weighted["0pb"] == [1.0, 0.0]


def test_average_of_one_policy_or_of_copies_is_that_policy():
    policy = random_policy(random.Random(0))
    for avg in (average_policy([policy]), average_policy([policy, policy, policy], [1, 2, 3])):
        for key, probs in policy.items():
            assert avg[key] == pytest.approx(probs)


def test_average_matches_openspiels_policy_aggregator():
    import pyspiel
    from open_spiel.python.algorithms.policy_aggregator import PolicyAggregator

    rng = random.Random(1)
    policies = [random_policy(rng) for _ in range(4)]
    policies[0]["0"] = [0.0, 1.0]  # never passes J: never reaches '0pb', which the others reach
    policies[1]["2"] = [1.0, 0.0]  # always passes K: its own reach of '2pb' is 1, the others' less
    weights = [0.1, 0.4, 0.2, 0.3]
    tabular = [tabular_policy(p) for p in policies]
    aggregated = PolicyAggregator(pyspiel.load_game("kuhn_poker")).aggregate(
        [0, 1], [tabular, tabular], [weights, weights]
    )
    ours = average_policy(policies, weights)
    for s in INFO_STATES:
        theirs = aggregated.policy[s.player][s.key]
        assert ours[s.key] == pytest.approx([theirs[0], theirs[1]], abs=1e-9)


def test_average_is_no_more_exploitable_than_its_policies_on_average():
    # Exploitability is convex in the sequence-form average: the mixture of an
    # always-pass and an always-bet player is far less exploitable than either.
    mix = exploitability(average_policy([ALWAYS_PASS, ALWAYS_BET]))
    assert mix < (exploitability(ALWAYS_PASS) + exploitability(ALWAYS_BET)) / 2
    rng = random.Random(2)
    for _ in range(5):
        policies = [random_policy(rng) for _ in range(3)]
        mean = sum(exploitability(p) for p in policies) / 3
        assert exploitability(average_policy(policies)) <= mean + 1e-12


def test_average_refuses_mismatched_or_empty_weights():
    with pytest.raises(ValueError, match="no policies"):
        average_policy([])
    with pytest.raises(ValueError, match="one weight >= 0 per policy"):
        average_policy([ALWAYS_PASS, ALWAYS_BET], [1.0])
    with pytest.raises(ValueError, match="one weight >= 0 per policy"):
        average_policy([ALWAYS_PASS], [0.0])


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
    # tolerance is about 3 standard errors (the games are seeded: the run is fixed). The deal
    # and each player draw from streams of their own (one seed for all three made the
    # games' draws alike, and the standard-error argument void).
    n = 4000
    for seat, value in ((0, 1 / 9), (1, 1 / 6)):
        total = 0.0
        for i in range(n):
            game = Kuhn(seed=i)
            players = [RandomPlayer(seed=10**6 + 2 * i), RandomPlayer(seed=10**6 + 2 * i + 1)]
            players[seat] = NashPlayer(seed=2 * 10**6 + i)
            while not game.is_terminal:
                game.apply(players[game.current_player].act(game))
            total += game.returns()[seat]
        assert total / n == pytest.approx(value, abs=0.07)


# ---- the average over a run ------------------------------------------------------------


def test_run_average_spans_the_newest_share_and_survives_a_resume(tmp_path):
    rng = random.Random(3)
    policies = [random_policy(rng) for _ in range(6)]
    keeper = KuhnAverage(tmp_path, tail=0.5)
    for i, p in enumerate(policies[:3]):
        got = keeper.add(step=10 * i, version=i, policy=p, checksum=f"w{i}")
    # 3 evaluations: the newest ceil(1.5) = 2, steps 10 and 20
    assert (got["evaluations"], got["from_step"], got["to_step"]) == (2, 10, 20)
    assert got["exploitability"] == pytest.approx(exploitability(average_policy(policies[1:3])))
    assert json.loads((tmp_path / AVERAGE).read_text()) == got
    assert keeper.add(step=10, version=1, policy=policies[3], checksum="w1") == got  # measured again: once
    # a resume from step 10 keeps the evaluations up to it, and its average says so at once
    resumed = KuhnAverage(tmp_path, tail=0.5, keep_until=10)
    assert [r["step"] for r in resumed.rows] == [0, 10]
    assert json.loads((tmp_path / AVERAGE).read_text())["to_step"] == 10
    # evaluations finishing out of order go in by step
    resumed.add(step=40, version=4, policy=policies[5], checksum="w4")
    got = resumed.add(step=30, version=3, policy=policies[4], checksum="w3")
    assert [r["step"] for r in resumed.rows] == [0, 10, 30, 40]
    assert (got["evaluations"], got["from_step"], got["to_step"]) == (2, 30, 40)
    assert got["exploitability"] == pytest.approx(exploitability(average_policy(policies[4:6])))
    lines = (tmp_path / POLICIES).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 10, 30, 40]
    assert KuhnAverage(tmp_path, tail=1.0).rows == []  # a new run in the same directory starts empty
    assert not (tmp_path / AVERAGE).exists()


def test_the_average_knows_weights_by_their_checksum_not_their_version(tmp_path):
    """With learner.broadcast_every > 1, evaluations between two broadcasts measure other
    weights under one version (both count), and the final settle re-broadcasts the last
    weights under a new version (they count once)."""
    rng = random.Random(4)
    policies = [random_policy(rng) for _ in range(3)]
    keeper = KuhnAverage(tmp_path, tail=1.0)
    keeper.add(step=10, version=5, policy=policies[0], checksum="a")
    got = keeper.add(step=15, version=5, policy=policies[1], checksum="b")
    assert (got["evaluations"], got["from_step"], got["to_step"]) == (2, 10, 15)
    assert keeper.add(step=15, version=6, policy=policies[2], checksum="b") == got
    assert keeper.add(step=20, version=7, policy=policies[2], checksum="b") == got  # at another step too
    # a row written before checksums were kept (a resumed older run) is known by its version
    keeper.rows[0].pop("checksum")
    assert keeper.add(step=30, version=5, policy=policies[2], checksum="c") == got


def test_run_average_refuses_a_tail_outside_0_1(tmp_path):
    for tail in (0.0, 1.5):
        with pytest.raises(ValueError, match="eval.kuhn_average_tail"):
            KuhnAverage(tmp_path, tail=tail)
