"""Negotiation rules, seeded deals, text interface, and the greedy and fair players."""

from __future__ import annotations

import itertools

import pytest

from selfplay.games.negotiation import (
    ACCEPT,
    MAX_TURNS,
    FairPlayer,
    GreedyPlayer,
    Negotiation,
    RandomPlayer,
    proposals,
    valuations,
    value,
)

ALL_COUNTS = list(itertools.product((1, 2, 3), repeat=3))


def game_with(counts=(1, 2, 3), v0=(4, 0, 2), v1=(2, 1, 2), replies=()) -> Negotiation:
    """Pool 1/2/3 items; player 0 values them 4/0/2 (4+0+6 = 10), player 1 2/1/2 (2+2+6 = 10)."""
    game = Negotiation()
    game.counts, game.values = counts, (v0, v1)
    for text in replies:
        assert game.apply_text(text), text
    return game


# ---- seeded deals ----------------------------------------------------------------------


def test_every_seed_draws_counts_1_to_3_and_valuations_worth_10():
    for seed in range(2000):
        game = Negotiation(seed)
        assert all(1 <= c <= 3 for c in game.counts)
        for v in game.values:
            assert all(0 <= x <= 9 for x in v)
            assert value(v, game.counts) == 10


def test_only_the_all_threes_pool_has_no_valuation_worth_10():
    # 3a + 3b + 3c = 10 has no integer solution; every other pool has one.
    assert [c for c in ALL_COUNTS if not valuations(c)] == [(3, 3, 3)]
    assert set(valuations((1, 1, 1))) >= {(4, 3, 3), (0, 1, 9)}
    assert (10, 0, 0) not in valuations((1, 1, 1))  # one digit per item


def test_deal_is_fixed_by_seed_and_varies_across_seeds():
    assert [(Negotiation(s).counts, Negotiation(s).values) for s in range(20)] == [
        (Negotiation(s).counts, Negotiation(s).values) for s in range(20)
    ]
    assert len({Negotiation(s).counts for s in range(200)}) == 26
    assert len({Negotiation(s).values for s in range(200)}) > 150


# ---- rules -------------------------------------------------------------------------


def test_accepted_proposal_gives_proposer_its_take_and_higher_value_wins():
    game = game_with(replies=["103", "a"])
    # Player 0 takes 1,0,3: 4 + 0 + 3*2 = 10. Player 1 gets 0,2,0: 2*1 = 2.
    assert game.deal(0) == (1, 0, 3) and game.deal(1) == (0, 2, 0)
    assert game.is_terminal
    assert game.returns() == [1.0, -1.0]
    game = game_with(replies=["111", "a"])
    # Player 0 takes 1,1,1: 4 + 0 + 2 = 6. Player 1 gets 0,1,2: 1 + 4 = 5. One point is enough.
    assert game.returns() == [1.0, -1.0]


def test_equal_values_on_accept_are_a_draw():
    game = game_with(replies=["101", "a"])
    # Player 0 takes 1,0,1: 4 + 2 = 6. Player 1 gets 0,2,2: 2 + 4 = 6.
    assert game.returns() == [0.0, 0.0]
    game = game_with(replies=["022", "a"])
    # Player 0 takes 0,2,2: 0 + 4 = 4. Player 1 gets 1,0,1: 2 + 2 = 4.
    assert game.returns() == [0.0, 0.0]


def test_accepting_a_generous_proposal_wins_for_the_acceptor():
    game = game_with(replies=["123", "001", "a"])
    # Player 1 took 0,0,1 (worth 2 to it); player 0 accepts 1,2,2: 4 + 0 + 4 = 8.
    assert game.deal(0) == (1, 2, 2)
    assert game.returns() == [1.0, -1.0]


def test_player_1_proposer_wins_when_its_take_is_worth_more():
    game = game_with(replies=["123", "122", "a"])
    # Player 1 takes 1,2,2: 2 + 2 + 4 = 8; player 0 gets 0,0,1: 2.
    assert game.returns() == [-1.0, 1.0]


def test_six_proposals_without_accept_end_in_a_draw():
    game = game_with(replies=["123"] * (MAX_TURNS - 1))
    assert not game.is_terminal
    assert game.apply_text("000")
    assert len(game.moves) == MAX_TURNS
    assert game.is_terminal
    assert game.returns() == [0.0, 0.0]
    with pytest.raises(ValueError, match="over"):
        game.apply(ACCEPT)


def test_accept_on_the_last_move_still_makes_the_deal():
    game = game_with(replies=["123"] * (MAX_TURNS - 1) + ["a"])
    # Player 0 made the last proposal (move 5) and takes everything: 10 vs 0.
    assert game.returns() == [1.0, -1.0]


def test_players_alternate_and_accept_is_legal_only_facing_a_proposal():
    game = game_with()
    assert game.current_player == 0
    assert ACCEPT not in game.legal_actions()
    assert game.legal_actions() == list(range(1, 25))  # 2 * 3 * 4 splits
    game.apply_text("000")
    assert game.current_player == 1
    assert game.legal_actions() == [ACCEPT] + list(range(1, 25))


def test_apply_accept_without_a_standing_proposal_raises():
    with pytest.raises(ValueError, match="nothing to accept"):
        game_with().apply(ACCEPT)


def test_apply_out_of_range_proposal_raises():
    with pytest.raises(ValueError, match="out of range 1..24"):
        game_with().apply(25)


@pytest.mark.parametrize(
    "prefix, mover, reply",
    [
        ([], 0, "a"),  # nothing to accept yet
        ([], 0, "203"),  # only 1 item of type 1
        (["123"], 1, "124"),  # only 3 items of type 3
        (["123"], 1, "4"),  # only 1 item of type 1
        (["123"], 1, "deal"),
        (["123", "000"], 0, ""),
    ],
)
def test_illegal_reply_ends_game_and_mover_loses(prefix, mover, reply):
    game = game_with(replies=prefix)
    assert not game.apply_text(reply)
    assert game.illegal_by == mover
    assert game.is_terminal
    assert len(game.moves) == len(prefix)  # the illegal move is not written
    assert game.returns() == ([-1.0, 1.0] if mover == 0 else [1.0, -1.0])


def test_apply_text_on_finished_game_raises_and_keeps_result():
    game = game_with(replies=["101", "a"])
    with pytest.raises(ValueError, match="over"):
        game.apply_text("x")
    assert game.illegal_by is None
    assert game.returns() == [0.0, 0.0]


# ---- text interface ------------------------------------------------------------------


def test_actions_follow_itertools_product_order():
    game = game_with()
    assert game.action_text(1) == "000"
    assert game.action_text(2) == "001"
    assert game.action_text(5) == "010"
    assert game.action_text(16) == "103"  # (1 * 3 + 0) * 4 + 3 = 15th split, 0-based
    assert game.action_text(24) == "123"
    assert game.action_text(ACCEPT) == "a"


@pytest.mark.parametrize("counts", ALL_COUNTS)
def test_parse_action_inverts_action_text_for_every_action(counts):
    game = game_with(counts=counts)
    actions = [ACCEPT] + list(range(1, len(proposals(counts)) + 1))
    assert [game.parse_action(game.action_text(a)) for a in actions] == actions


@pytest.mark.parametrize(
    "text, action",
    [
        ("a", ACCEPT),
        (" A", ACCEPT),
        ("accept", ACCEPT),
        ("103", 16),
        ("\n103", 16),
        ("1034", 16),
        ("103 please", 16),
        ("000", 1),
        ("10", 13),
        ("1x3", 13),
        ("1", 13),
        ("12", 21),
        ("0-", 1),  # types left out take 0: 100, 100, 100, 120, 000
        ("203", None),
        ("104", None),
        ("2", None),
        ("", None),
        ("-", None),
        ("b", None),
        ("x12", None),
    ],
)
def test_parse_action_reads_accept_or_leading_digits_within_counts(text, action):
    assert game_with().parse_action(text) == action


def test_observation_shows_counts_own_values_own_share_and_moves_left():
    game = game_with()
    assert game.observation(0) == "nego n123 v402 get- left6:"
    game.apply_text("103")
    assert game.observation(1) == "nego n123 v212 get020 left5:"  # what player 1 gets by accepting
    assert game.observation(0) == "nego n123 v402 get103 left5:"  # player 0's own proposal
    game.apply_text("000")
    assert game.observation(0) == "nego n123 v402 get123 left4:"


# ---- scripted players ------------------------------------------------------------------


def test_greedy_leaves_one_item_of_its_least_valued_type():
    game = game_with()  # player 0 values 4/0/2: gives up one type-2 item (value 0)
    assert game.action_text(GreedyPlayer().act(game)) == "113"
    game.apply_text("113")  # player 1 values 2/1/2: least is type 2 (value 1)
    assert game.action_text(GreedyPlayer().act(game)) == "113"
    # the least valued type elsewhere than type 2; a tie goes to the first type
    for v0, proposal in (((4, 3, 0), "122"), ((0, 5, 0), "023")):
        game = game_with(v0=v0)
        assert game.action_text(GreedyPlayer().act(game)) == proposal


def test_greedy_accepts_only_at_7_or_more():
    game = game_with(replies=["000", "001"])  # player 0 would get 1,2,2: 4 + 4 = 8
    assert GreedyPlayer().act(game) == ACCEPT
    game = game_with(replies=["011"])  # player 1 would get 1,1,2: 2 + 1 + 4 = 7
    assert GreedyPlayer().act(game) == ACCEPT
    game = game_with(replies=["000", "002"])  # player 0 would get 1,2,1: 4 + 2 = 6
    assert game.action_text(GreedyPlayer().act(game)) == "113"


def test_fair_proposes_closest_to_5_preferring_more_then_fewer_items():
    # Player 0 (4/0/2) can reach 4 or 6, never 5: 6 via 1,0,1 (2 items) or 0,0,3 (3 items).
    game = game_with()
    assert {game.action_text(FairPlayer(seed=s).act(game)) for s in range(20)} == {"101"}


def test_fair_breaks_remaining_ties_by_seed():
    # Player 1 (2/1/2) gets exactly 5 with 3 items as 1,1,1 or 0,1,2.
    game = game_with(replies=["123"])
    picks = [game.action_text(FairPlayer(seed=s).act(game)) for s in range(40)]
    assert set(picks) == {"111", "012"}
    assert picks == [game.action_text(FairPlayer(seed=s).act(game)) for s in range(40)]


def test_fair_accepts_at_5_or_more():
    game = game_with(replies=["123", "012"])  # player 0 would get 1,1,1: 4 + 2 = 6
    assert FairPlayer().act(game) == ACCEPT
    game = game_with(replies=["111"])  # player 1 would get 0,1,2: 1 + 4 = 5
    assert FairPlayer().act(game) == ACCEPT
    game = game_with(replies=["022"])  # player 1 would get 1,0,1: 2 + 2 = 4
    assert game.action_text(FairPlayer().act(game)) in ("111", "012")


def playout(seed: int, players) -> tuple[Negotiation, list[str]]:
    game, replies = Negotiation(seed), []
    while not game.is_terminal:
        for p in (0, 1):
            assert len(game.observation(p)) <= 48, game.observation(p)
        replies.append(game.action_text(players[game.current_player].act(game)))
        game.apply(game.parse_action(replies[-1]))
    return game, replies


@pytest.mark.parametrize("pair", ["random-random", "greedy-fair", "fair-greedy"])
def test_playouts_are_zero_sum_short_and_replay_from_text(pair):
    kinds = {"random": RandomPlayer, "greedy": GreedyPlayer, "fair": FairPlayer}
    a, b = pair.split("-")
    outcomes = set()
    for seed in range(300):
        game, replies = playout(seed, (kinds[a](seed), kinds[b](seed + 1)))
        r = game.returns()
        assert r[0] + r[1] == 0 and r[0] in (-1.0, 0.0, 1.0)
        assert game.illegal_by is None and len(game.moves) <= MAX_TURNS
        outcomes.add(r[0])
        replay = Negotiation(seed)
        for text in replies:
            assert replay.apply_text(text)
        assert (replay.moves, replay.returns()) == (game.moves, r)
    assert len(outcomes) >= 2  # the games are not all decided the same way
