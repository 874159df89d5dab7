"""TextArena games behind the game surface: outcomes, invalid moves, observations that
match TextArena's own, and replay from (name, seed) plus the reply texts."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import textarena as ta

from actors.verifier import Verifier
from selfplay import schema
from selfplay.games import make_game
from selfplay.games.textarena_game import TextArenaGame
from tests.rows import make_row

REPO = Path(__file__).resolve().parents[1]
KUHN_FOLDS = ["[bet]", "[fold]"] * 3  # player 1 opens rounds 1 and 3, player 0 round 2


def play(env_id: str, moves: list[str], seed: int = 0) -> TextArenaGame:
    """A game after `moves`, each of which must be valid."""
    game = TextArenaGame(env_id, seed)
    for move in moves:
        assert game.apply_text(move), f"{move!r} judged invalid: {game.reason}"
    return game


def transcript(env_id: str, seed: int, moves: list[str]) -> dict:
    """Everything a replay must reproduce: both players' prompts after every reply, the
    validity of each reply and the returns."""
    game = TextArenaGame(env_id, seed)
    steps = [[game.current_player, game.observation(0), game.observation(1)]]
    for move in moves:
        if game.is_terminal:
            break
        legal = game.apply_text(move)
        steps.append([legal, game.current_player, game.observation(0), game.observation(1)])
    return {"steps": steps, "returns": game.returns() if game.is_terminal else None}


# ---- outcomes ----------------------------------------------------------------------


def test_tictactoe_row_wins_for_player_0():
    game = play("TicTacToe-v0", ["[0]", "[3]", "[1]", "[4]", "[2]"])
    assert game.is_terminal and game.illegal_by is None
    assert game.returns() == [1.0, -1.0]
    assert game.reason == "Player 0 has won!"
    assert " O | O | O " in game.observation(1)  # the loser is shown the final board


def test_tictactoe_full_board_without_a_line_is_a_draw():
    # O X O / O X X / X O O
    game = play("TicTacToe-v0", ["[0]", "[1]", "[2]", "[4]", "[7]", "[5]", "[3]", "[6]", "[8]"])
    assert game.is_terminal
    assert game.returns() == [0.0, 0.0]


def test_connect_four_vertical_win_for_player_0():
    game = play("ConnectFour-v0", ["[col 0]", "[col 1]"] * 3 + ["[col 0]"])
    assert game.is_terminal
    assert game.returns() == [1.0, -1.0]


def test_connect_four_win_for_player_1():
    # player 0 builds 4-5-6 on the bottom row (three, not four) while player 1 stacks column 0
    game = play(
        "ConnectFour-v0",
        ["[col 6]", "[col 0]", "[col 6]", "[col 0]", "[col 5]", "[col 0]", "[col 4]", "[col 0]"],
    )
    assert game.is_terminal
    assert game.returns() == [-1.0, 1.0]
    assert game.reason == "Player 1 wins by connecting four!"


@pytest.mark.parametrize("seed", range(4))
def test_kuhn_poker_folds_decide_the_match_whatever_the_deal(seed):
    game = play("KuhnPoker-v0", KUHN_FOLDS, seed)  # player 1 wins rounds 1 and 3
    assert game.is_terminal
    assert game.returns() == [-1.0, 1.0]


@pytest.mark.parametrize("seed", range(4))
def test_kuhn_poker_showdowns_follow_the_private_cards(seed):
    game = play("KuhnPoker-v0", ["[check]", "[check]"] * 3, seed)
    assert game.is_terminal
    rank = {"J": 0, "Q": 1, "K": 2}
    cards = [
        dict(
            re.findall(r"Starting round (\d) out of 3 rounds\. Your card is: '([JQK])'", game.observation(p))
        )
        for p in (0, 1)
    ]
    rounds_won_by_0 = sum(rank[cards[0][r]] > rank[cards[1][r]] for r in "123")
    assert game.returns() == ([1.0, -1.0] if rounds_won_by_0 >= 2 else [-1.0, 1.0])


@pytest.mark.parametrize("seed", range(3))
def test_negotiation_trade_of_wheat_for_ore_wins_for_the_buyer(seed):
    # values are drawn per seed, but Wheat is worth 5-6 and Ore 32-40 to both players
    game = TextArenaGame("SimpleNegotiation-v0", seed)
    assert game.apply_text("[Offer: 1 Wheat -> 1 Ore]")
    assert game.apply_text("[Accept]")
    while not game.is_terminal:
        assert game.apply_text("[Deny]")
    assert game.returns() == [1.0, -1.0]


def test_negotiation_without_trades_is_a_draw():
    game = TextArenaGame("SimpleNegotiation-v0", 0)
    replies = 0
    while not game.is_terminal:
        assert game.apply_text("[Deny]")
        replies += 1
    assert replies == 11  # TextArena's 10-turn limit is checked before the turn counter moves
    assert game.returns() == [0.0, 0.0]


# ---- invalid moves -----------------------------------------------------------------


@pytest.mark.parametrize(
    "env_id, before, bad, mover",
    [
        ("TicTacToe-v0", [], "hello", 0),  # no cell in the reply
        ("TicTacToe-v0", ["[4]"], "[4]", 1),  # occupied cell
        ("ConnectFour-v0", ["[col 3]"], "[col 9]", 1),  # no such column
        ("KuhnPoker-v0", [], "[call]", 1),  # nothing to call yet
        ("SimpleNegotiation-v0", [], "[Offer: 100 Ore -> 1 Wheat]", 0),  # more Ore than owned
    ],
)
def test_first_invalid_move_ends_the_game_and_the_mover_loses(env_id, before, bad, mover):
    game = play(env_id, before)
    assert game.current_player == mover
    assert game.apply_text(bad) is False
    assert game.is_terminal and game.illegal_by == mover
    expected = [-1.0, 1.0] if mover == 0 else [1.0, -1.0]
    assert game.returns() == expected
    with pytest.raises(ValueError, match="game is over"):
        game.apply_text("[0]")


def test_apply_raises_on_an_invalid_move_after_ending_the_game():
    game = TextArenaGame("TicTacToe-v0", 0)
    with pytest.raises(ValueError, match="invalid move"):
        game.apply("[9]")
    assert game.is_terminal and game.illegal_by == 0


def test_moves_are_free_text_without_a_legal_action_list():
    game = TextArenaGame("TicTacToe-v0", 0)
    with pytest.raises(NotImplementedError, match="free text"):
        game.legal_actions()
    assert game.parse_action("  [4]\n") == "[4]"
    assert game.action_text("[4]") == "[4]"
    game.apply("4")  # ActionFormattingWrapper brackets a bare reply
    assert " O " in game.observation(1) and game.current_player == 1


# ---- observations ------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_id, seed, moves",
    [
        ("TicTacToe-v0", 0, ["[0]", "[1]", "[2]", "[4]", "[7]", "[5]", "[3]", "[6]", "[8]"]),
        ("KuhnPoker-v0", 3, ["[check]", "[bet]", "[call]", "[bet]", "[fold]", "[check]", "[check]"]),
        ("TicTacToe-v0-train", 0, ["[0]", "[3]", "[1]", "[4]", "[2]"]),
    ],
)
def test_observation_is_what_textarena_shows_the_player_to_move(env_id, seed, moves):
    env = ta.make(env_id)
    env.reset(num_players=2, seed=seed)
    env.state.error_allowance = 0
    game = TextArenaGame(env_id, seed)
    for move in moves:
        player, expected = env.get_observation()
        assert (game.current_player, game.observation(game.current_player)) == (player, expected)
        env.step(move)
        assert game.apply_text(move)
    assert game.is_terminal and env.state.done
    assert game.returns() == [float(np.sign(env.close()[0][p])) for p in (0, 1)]


def test_players_see_only_their_own_card():
    game = TextArenaGame("KuhnPoker-v0", 0)
    mine = [re.search(r"Your card is: '([JQK])'", game.observation(p)).group(1) for p in (0, 1)]
    assert mine[0] != mine[1]
    assert f"'{mine[1]}'" not in game.observation(0)


# ---- replay ------------------------------------------------------------------------

KUHN_MIXED = ["[check]", "[bet]", "[call]", "[bet]", "[fold]", "[check]", "[check]"]


def test_same_seed_and_replies_give_the_same_game():
    assert transcript("KuhnPoker-v0", 7, KUHN_MIXED) == transcript("KuhnPoker-v0", 7, KUHN_MIXED)


def test_seed_sets_the_deal():
    deals = {json.dumps(transcript("KuhnPoker-v0", seed, [])) for seed in range(8)}
    assert len(deals) > 1


def test_interleaved_games_and_global_rng_use_do_not_change_a_game():
    solo = [transcript("KuhnPoker-v0", s, KUHN_MIXED) for s in (1, 2)]
    games = [TextArenaGame("KuhnPoker-v0", s) for s in (1, 2)]
    steps = [[[g.current_player, g.observation(0), g.observation(1)]] for g in games]
    random.seed(99)
    for move in KUHN_MIXED:
        for game, out in zip(games, steps):
            random.random(), np.random.random()  # the caller keeps using the global RNGs
            if not game.is_terminal:
                legal = game.apply_text(move)
                out.append([legal, game.current_player, game.observation(0), game.observation(1)])
    assert [{"steps": s, "returns": g.returns()} for s, g in zip(steps, games)] == solo


def test_games_leave_the_global_rng_states_alone():
    random.seed(5)
    np.random.seed(5)
    before = random.getstate(), np.random.get_state()
    play("KuhnPoker-v0", KUHN_FOLDS, seed=11)
    after = random.getstate(), np.random.get_state()
    assert after[0] == before[0]
    assert all(np.array_equal(a, b) for a, b in zip(after[1], before[1]))


REPLAY = """
import json, sys
sys.path.insert(0, {repo!r})
from tests.test_textarena import transcript
print(json.dumps([transcript(*case) for case in json.loads(sys.argv[1])]))
"""


def test_replay_in_a_fresh_process_gives_the_same_game():
    cases = [
        ["KuhnPoker-v0", 7, KUHN_MIXED],
        ["SimpleNegotiation-v0", 3, ["[Offer: 2 Wheat -> 1 Brick]", "[Accept]"] + ["[Deny]"] * 9],
        ["TicTacToe-v0", 0, ["[4]", "[0]", "[8]", "[4]"]],
    ]
    here = [transcript(*case) for case in cases]
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", REPLAY.format(repo=str(REPO)), json.dumps(cases)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == json.loads(json.dumps(here))


def test_verifier_replays_a_textarena_game_and_catches_a_forged_outcome():
    seed, replies = 4, KUHN_MIXED
    game = TextArenaGame("KuhnPoker-v0", seed)
    rows = []
    for turn, text in enumerate(replies):
        if game.is_terminal:
            break
        role = game.current_player
        legal = game.apply_text(text)
        rows.append(
            make_row(
                traj_id="kuhn",
                game=game.name,
                seed=seed,
                turn=turn,
                role=role,
                response_text=text,
                illegal=not legal,
                trainable=False,
            )
        )
    returns = game.returns()
    for row in rows:
        row["outcome"] = returns[row["role"]]
    verifier = Verifier(decode=lambda ids: "")
    assert verifier.verify(schema.from_rows(rows)).num_rows == len(rows)
    forged = [dict(row, traj_id="forged", outcome=-row["outcome"]) for row in rows]
    assert verifier.verify(schema.from_rows(forged)).num_rows == 0
    assert verifier.stats() == {
        "accepted": 1,
        "accepted_turns": len(rows),
        "forwarded_turns": 0,
        "received": 2,
        "received_by": {rows[0]["generator_id"]: 2},
        "rejected_outcome_mismatch": 1,
    }


# ---- construction ------------------------------------------------------------------


def test_make_game_reaches_textarena():
    game = make_game("textarena:TicTacToe-v0", seed=3)
    assert isinstance(game, TextArenaGame)
    assert (game.name, game.seed, game.num_players, game.current_player) == (
        "textarena:TicTacToe-v0",
        3,
        2,
        0,
    )
    assert not game.is_terminal and game.illegal_by is None


def test_unknown_env_id_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown env id 'NoSuchGame-v0'"):  # ours, not TextArena's
        make_game("textarena:NoSuchGame-v0", seed=0)


def test_single_player_env_is_refused():
    with pytest.raises(ValueError, match="TowerOfHanoi-v0 is not a two-player game"):
        TextArenaGame("TowerOfHanoi-v0", 0)
