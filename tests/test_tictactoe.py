"""TicTacToe rules, text interface and the scripted opponents (minimax, heuristic, tactician)."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from selfplay.games import make_game
from selfplay.games.tictactoe import (
    LINES,
    MARKS,
    SYMMETRIES,
    HeuristicPlayer,
    MinimaxPlayer,
    RandomPlayer,
    TacticianPlayer,
    TicTacToe,
    ViewedTicTacToe,
    best_moves,
    completing,
    exact_non_loss,
    exact_slips,
    forks,
    minimax_value,
    optimal_moves,
    place,
    winner,
)


def play(moves: list[int]) -> TicTacToe:
    """A game after `moves` (0-based cells), alternating X, O, X, ..."""
    game = TicTacToe()
    for m in moves:
        game.apply(m)
    return game


def board_of(cells: dict[int, str]) -> str:
    return "".join(cells.get(i, ".") for i in range(9))


# ---- rules -------------------------------------------------------------------------


@pytest.mark.parametrize("line", LINES)
@pytest.mark.parametrize("mark", MARKS)
def test_winner_is_found_on_every_row_column_and_diagonal(line, mark):
    assert winner(board_of({i: mark for i in line})) == mark


def test_no_winner_on_empty_or_mixed_line():
    assert winner("." * 9) is None
    assert winner("XXO......") is None
    assert winner("XOXXOOOXX") is None  # full board, no line


def test_x_row_win_ends_game_with_x_plus_one():
    # X: 0,1,2 (top row); O: 3,4
    game = play([0, 3, 1, 4, 2])
    assert game.board == "XXXOO...."
    assert game.is_terminal
    assert game.returns() == [1.0, -1.0]
    assert game.illegal_by is None


def test_o_column_win_gives_o_plus_one():
    # X: 1,2,4; O: 0,3,6 (left column)
    game = play([1, 0, 2, 3, 4, 6])
    assert game.board == "OXXOX.O.."
    assert winner(game.board) == "O"
    assert game.is_terminal
    assert game.returns() == [-1.0, 1.0]


def test_x_diagonal_win():
    # X: 2,4,6 (anti-diagonal); O: 0,1
    game = play([2, 0, 4, 1, 6])
    assert game.board == "OOX.X.X.."
    assert game.returns() == [1.0, -1.0]


def test_full_board_without_line_is_draw():
    # X O X
    # X O O
    # O X X
    game = play([0, 1, 2, 4, 3, 5, 7, 6, 8])
    assert game.board == "XOXXOOOXX"
    assert winner(game.board) is None
    assert game.is_terminal
    assert game.returns() == [0.0, 0.0]


def test_game_in_progress_is_not_terminal_and_alternates_players():
    game = TicTacToe()
    assert not game.is_terminal
    assert game.current_player == 0
    game.apply(4)
    assert game.current_player == 1
    assert game.legal_actions() == [0, 1, 2, 3, 5, 6, 7, 8]


def test_apply_on_finished_game_raises():
    game = play([0, 3, 1, 4, 2])  # X has won
    with pytest.raises(ValueError, match="over"):
        game.apply(8)


def test_apply_on_occupied_cell_raises():
    game = play([4])
    with pytest.raises(ValueError, match="cell 5"):
        game.apply(4)


# ---- text interface ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, action",
    [
        ("5", 4),
        (" 5", 4),
        ("\n 9", 8),
        ("1", 0),
        ("5abc", 4),
        ("12", 0),
        ("0", None),
        ("x", None),
        ("", None),
        ("   ", None),
        ("a5", None),
        ("-1", None),
    ],
)
def test_parse_action_reads_first_non_space_character(text, action):
    assert TicTacToe.parse_action(text) == action


def test_action_text_is_one_based_cell_number():
    assert [TicTacToe.action_text(a) for a in (0, 4, 8)] == ["1", "5", "9"]


def test_legal_text_move_is_applied():
    game = TicTacToe()
    assert game.apply_text(" 5 because centre")
    assert game.board == "....X...."
    assert game.current_player == 1


@pytest.mark.parametrize("reply", ["5", "x", "", "0"])
def test_illegal_or_unparsable_reply_ends_game_and_mover_loses(reply):
    game = play([4])  # X took cell 5; O to move
    assert not game.apply_text(reply)
    assert game.illegal_by == 1
    assert game.is_terminal
    assert game.returns() == [1.0, -1.0]  # O (the mover) -1, X +1
    assert game.board == "....X...."  # the illegal move is not written


def test_illegal_reply_by_x_gives_x_minus_one():
    game = TicTacToe()
    assert not game.apply_text("no idea")
    assert game.illegal_by == 0
    assert game.returns() == [-1.0, 1.0]


def test_apply_text_on_finished_game_raises():
    # Like apply(): a reply after the game ended must not rewrite its result. Here a
    # drawn game would otherwise become an O-illegal-move loss, [1.0, -1.0].
    game = play([0, 1, 2, 4, 3, 5, 7, 6, 8])
    assert game.returns() == [0.0, 0.0]
    with pytest.raises(ValueError):
        game.apply_text("x")
    assert game.illegal_by is None
    assert game.returns() == [0.0, 0.0]


def test_observation_text_format():
    game = play([0, 4])  # X in cell 1, O in cell 5; X to move
    assert game.observation(0) == "tictactoe X X234O6789:"
    assert game.observation(1) == "tictactoe O X234O6789:"


# ---- make_game -----------------------------------------------------------------------


def test_make_game_builds_fresh_tictactoe():
    game = make_game("tictactoe", seed=7)
    assert isinstance(game, TicTacToe)
    assert game.seed == 7
    assert game.board == "." * 9


def test_make_game_unknown_name_raises_naming_it():
    with pytest.raises(ValueError, match="'chess'"):
        make_game("chess")


# ---- symmetric views (generator.board_symmetries) -------------------------------------


def test_the_eight_symmetries_map_lines_to_lines():
    assert len(set(SYMMETRIES)) == 8 and SYMMETRIES[0] == tuple(range(9))
    for view in SYMMETRIES:
        assert sorted(view) == list(range(9)) and view[4] == 4  # the centre stays
        assert {tuple(sorted(view[i] for i in line)) for line in LINES} == {tuple(line) for line in LINES}
    # a quarter turn clockwise shows the bottom-left corner top-left, and the top row on the right
    assert SYMMETRIES[2][:3] == (6, 3, 0) and [SYMMETRIES[2][i] for i in (2, 5, 8)] == [0, 1, 2]


def test_a_viewed_game_shows_each_turn_a_symmetry_of_the_board_and_reads_replies_in_it():
    views = set()
    for seed in range(20):
        viewed, plain = make_game("tictactoe", seed, symmetric_views=True), TicTacToe(seed)
        assert isinstance(viewed, ViewedTicTacToe) and not isinstance(
            make_game("tictactoe", seed), ViewedTicTacToe
        )
        while not plain.is_terminal:
            view = viewed.view()
            views.add(view)
            shown = viewed.observation(viewed.current_player)[len("tictactoe X ") : -1]
            # position i shows cell view[i]: its mark, or the number i + 1 to name it by
            assert shown == "".join(
                plain.board[c] if plain.board[c] != "." else str(i + 1) for i, c in enumerate(view)
            )
            cell = RandomPlayer(seed).act(plain)  # a move on the board as it is
            text = viewed.action_text(cell)  # named as this turn shows the board
            assert viewed.parse_action(text) == cell and shown[int(text) - 1] == text  # a free cell, as shown
            assert viewed.apply_text(text) and plain.apply_text(TicTacToe.action_text(cell))
            assert viewed.board == plain.board
        assert viewed.returns() == plain.returns()
    assert len(views) == 8  # every orientation turns up
    # the same seed shows the same views: a replay from (seed, replies) sees what was played
    a, b = make_game("tictactoe", 3, True), make_game("tictactoe", 3, True)
    for text in ("5", "1", "9"):
        assert a.observation(a.current_player) == b.observation(b.current_player)
        assert a.apply_text(text) == b.apply_text(text)
    assert make_game("kuhn", 3, symmetric_views=True).name == "kuhn"  # no symmetries: as it is


# ---- minimax ---------------------------------------------------------------------------


def test_empty_board_is_a_draw():
    assert minimax_value("." * 9, "X") == 0


def test_corner_then_adjacent_edge_is_forced_win_for_x():
    # X in 0, O in 1 (the edge beside X's corner), X to move.
    # X 4 threatens 0-4-8, O must take 8; X 6 then forks 0-3-6 and 2-4-6.
    board = "XO......."
    assert all(winner(place(board, i, "X")) is None for i in range(2, 9))  # no mate in 1
    assert minimax_value(board, "X") == 1


def test_immediate_win_is_plus_one_and_finished_position_is_scored():
    assert minimax_value("XX.OO....", "X") == 1
    assert minimax_value("XXXOO....", "O") == -1  # O to move after X already won


def test_best_moves_are_every_move_of_the_best_value():
    assert best_moves("." * 9, 0) == list(range(9))  # every opening holds the draw
    # X X . / O O . / . . X, O to move: 5 wins now, 2 wins by force (it threatens 3-4-5 and
    # 2-4-6 at once); every other move lets X complete 0-1-2.
    assert best_moves("XX.OO...X", 1) == [2, 5]


def test_optimal_moves_label_every_position_with_a_mover():
    labels = optimal_moves()
    assert len(labels) == 4520  # 5,478 legal positions, 958 of them over
    assert labels["." * 9, 0] == list(range(9))
    assert labels["XX.OO...X", 1] == [2, 5]
    for (board, player), moves in labels.items():
        assert board.count("X") - board.count("O") == player and winner(board) is None
        assert moves and all(board[m] == "." for m in moves)
    # a corner opening is answered by the centre alone (any other reply loses by force)
    assert labels["X........", 1] == [4]


def test_minimax_blocks_the_only_threat():
    # X X . / . O . / . . .  -- O to move must take cell 3 (index 2); blocking draws.
    board = "XX..O...."
    assert minimax_value(board, "O") == 0
    game = TicTacToe()
    game.board, game.current_player = board, 1
    assert {MinimaxPlayer(seed=s).act(game) for s in range(20)} == {2}


def test_minimax_takes_a_win_over_a_block():
    # X X . / O O . / . . .  -- X to move wins at index 2 instead of blocking at 5.
    game = TicTacToe()
    game.board = "XX.OO...."
    assert {MinimaxPlayer(seed=s).act(game) for s in range(20)} == {2}


def run_game(x, o) -> list[float]:
    game = TicTacToe()
    players = (x, o)
    while not game.is_terminal:
        game.apply(players[game.current_player].act(game))
    return game.returns()


def test_minimax_never_loses_to_random_in_either_seat():
    for i in range(200):
        assert run_game(MinimaxPlayer(seed=i), RandomPlayer(seed=1000 + i))[0] >= 0
        assert run_game(RandomPlayer(seed=2000 + i), MinimaxPlayer(seed=i))[1] >= 0


def test_minimax_against_itself_always_draws():
    for i in range(50):
        assert run_game(MinimaxPlayer(seed=i), MinimaxPlayer(seed=100 + i)) == [0.0, 0.0]


def reachable_positions() -> dict[str, int]:
    """Every non-terminal position reachable from the empty board -> player to move."""
    seen: dict[str, int] = {}
    stack = [TicTacToe()]
    while stack:
        game = stack.pop()
        if game.is_terminal or game.board in seen:
            continue
        seen[game.board] = game.current_player
        for a in game.legal_actions():
            child = TicTacToe()
            child.board, child.current_player = game.board, game.current_player
            child.apply(a)
            stack.append(child)
    return seen


LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]


@functools.cache
def solved(board: str, mark: str) -> int:
    """The game's value for `mark`, to move, by a solver of its own (not the module's)."""
    other = "O" if mark == "X" else "X"
    if any(all(board[i] == other for i in line) for line in LINES):
        return -1  # the last move won
    free = [i for i, c in enumerate(board) if c == "."]
    if not free:
        return 0
    return max(-solved(board[:i] + mark + board[i + 1 :], other) for i in free)


def test_minimax_values_and_best_moves_match_an_independent_solver_everywhere():
    positions = reachable_positions()
    assert len(positions) == 4520  # 5478 legal positions minus 958 terminal ones
    player = MinimaxPlayer(seed=0)
    for board, to_move in positions.items():
        mark, other = MARKS[to_move], MARKS[1 - to_move]
        value = solved(board, mark)
        assert minimax_value(board, mark) == value, board
        kept = {i for i, c in enumerate(board) if c == "." and -solved(place(board, i, mark), other) == value}
        assert set(best_moves(board, to_move)) == kept, board  # every move that keeps it, no other
        game = TicTacToe()
        game.board, game.current_player = board, to_move
        assert player.act(game) in kept
    assert solved("." * 9, "X") == 0  # perfect play draws


# ---- the heuristic opponent -----------------------------------------------------------


def at(board: str, player: int) -> TicTacToe:
    game = TicTacToe()
    game.board, game.current_player = board, player
    return game


def test_heuristic_takes_a_win_over_a_block():
    # X X . / O O . / . . .  X to move: wins at index 2 (a block would be 5)
    assert {HeuristicPlayer(seed=s).act(at("XX.OO....", 0)) for s in range(20)} == {2}


def test_heuristic_blocks_when_it_cannot_win():
    # X X . / . O . / . . .  O to move, no win of its own: blocks at index 2
    assert {HeuristicPlayer(seed=s).act(at("XX..O....", 1)) for s in range(20)} == {2}


def test_heuristic_plays_any_free_cell_otherwise():
    assert {HeuristicPlayer(seed=s).act(at("X........", 1)) for s in range(200)} == set(range(1, 9))


def test_heuristic_falls_to_forks_that_minimax_sets_up():
    # X 1, O 5 (centre), X 9, O 3 (a corner), X 7 (forced block): X threatens 4 and 8 at once
    game = play([0, 4, 8, 2, 6])
    assert len(completing(game.board, "X")) == 2 and not completing(game.board, "O")
    lost = sum(run_game(MinimaxPlayer(seed=i), HeuristicPlayer(seed=100 + i))[1] == -1 for i in range(100))
    assert lost > 0  # and minimax never loses (above): a teacher, not the examiner


# ---- the tactician opponent ----------------------------------------------------------


def test_tactician_makes_a_fork_where_the_heuristic_plays_anywhere():
    # X O . / . X . / . . O  X to move, nothing to win or block: 3 and 6 each open two lines
    board = "XO..X...O"
    assert forks(board, "X") == [3, 6] and not completing(board, "X") and not completing(board, "O")
    assert {TacticianPlayer(seed=s).act(at(board, 0)) for s in range(50)} == {3, 6}
    assert {HeuristicPlayer(seed=s).act(at(board, 0)) for s in range(200)} == {2, 3, 5, 6, 7}


def test_tactician_wins_then_blocks_before_it_forks():
    assert {TacticianPlayer(seed=s).act(at("XX.OO....", 0)) for s in range(20)} == {2}  # win
    # X . . / . X . / O . O  X to move: O threatens 7; X's own fork (1) comes after the block
    assert forks("X...X.O.O", "X") == [1]
    assert {TacticianPlayer(seed=s).act(at("X...X.O.O", 0)) for s in range(20)} == {7}


def test_tactician_beats_a_corner_reply_that_the_heuristic_lets_pass():
    # X 1, O 3: every X reply the tactician then picks at random; once it has a fork it takes it
    wins = {"tactician": 0, "heuristic": 0}
    for name, cls in (("tactician", TacticianPlayer), ("heuristic", HeuristicPlayer)):
        for s in range(400):
            x, o = cls(seed=s), HeuristicPlayer(seed=10_000 + s)
            game = play([0, 2])
            while not game.is_terminal:
                game.apply((x, o)[game.current_player].act(game))
            wins[name] += game.returns()[0] == 1
    assert wins["tactician"] > wins["heuristic"] + 40  # more than 10 points more wins out of 400
    lost = sum(run_game(MinimaxPlayer(seed=i), TacticianPlayer(seed=100 + i))[1] == -1 for i in range(100))
    assert lost > 0  # beatable: a teacher, not the examiner


# ---- exact evaluation: every game an opponent can play, weighted by its probability


def lowest_free(board: str, player: int) -> int:
    return board.index(".")


def perfect(board: str, player: int) -> int:
    return best_moves(board, player)[0]


@pytest.mark.parametrize("opponent", ["minimax", "random"])
def test_perfect_play_never_loses_in_either_seat(opponent):
    assert exact_non_loss(perfect, 0, opponent) == 1.0
    assert exact_non_loss(perfect, 1, opponent) == 1.0


def test_exact_non_loss_on_hand_computed_lines():
    # X always takes the lowest free cell. Against minimax: X 1, O 5 (a corner's only
    # drawing reply), X 2, O 3 (the forced block), X 4, and O wins on 3-5-7: never a draw
    assert exact_non_loss(lowest_free, 0, "minimax") == 0.0
    # From X 1 4 9, O 2 5, O (random) to move over 3, 6, 7, 8. O 8 wins (2-5-8): 0.
    # O 7: X 3, then O 8 wins or O 6 and X 8 draws: 1/2. O 3: X 6, then O 8 wins or O 7
    # wins (3-5-7): 0. O 6: X 3, then O 8 wins or O 7 and X 8 draws: 1/2. Mean: 1/4.
    board = "XO.XO...X"
    assert exact_non_loss(lowest_free, 0, "random", board) == pytest.approx(0.25)
    assert exact_non_loss(lowest_free, 0, "minimax", board) == 0.0  # minimax takes 8
    # a policy that plays a taken cell (cell 1 again) loses there, as in play
    assert exact_non_loss(lambda board, player: 0, 0, "random") == 0.0
    with pytest.raises(ValueError, match="minimax or random"):
        exact_non_loss(lowest_free, 0, "heuristic")


def test_exact_slips_on_hand_computed_lines():
    # O (lowest free cell) to move on X 2 3 7, O 5 6: O wins on 4 but plays 1 (a block).
    # Random X then plays 4 (O 8, missing 9's win again, X 9: a draw), 8 or 9 (O takes 4
    # and wins): the game slips once, at its first miss, and is never lost
    slips = exact_slips(lowest_free, 1, "random", ".XX.OOX..")
    assert slips == {"missed_win": 1.0, "missed_win_lost": 0.0, "missed_block": 0.0, "missed_block_lost": 0.0}
    # O to move on X 1 5, O 2: no win for O, X completes 1-5-9 next. O plays 3, and
    # whatever random X plays it ends with 9 (every line above, by hand): a lost block
    for opponent in ("random", "minimax"):  # minimax wins by force from there (9, or a fork)
        slips = exact_slips(lowest_free, 1, opponent, "XO..X....")
        assert slips == {
            "missed_win": 0.0,
            "missed_win_lost": 0.0,
            "missed_block": 1.0,
            "missed_block_lost": 1.0,
        }
    # perfect play never misses a block and loses nothing; where it can complete a line it
    # may still play another move that wins by force (the first optimal one): a missed win
    for seat in (0, 1):
        slips = exact_slips(perfect, seat, "random")
        assert slips["missed_block"] == slips["missed_win_lost"] == slips["missed_block_lost"] == 0.0
    assert exact_slips(perfect, 0, "random")["missed_win"] > 0
    with pytest.raises(ValueError, match="minimax or random"):
        exact_slips(lowest_free, 0, "heuristic")


@pytest.mark.parametrize("seat", [0, 1])
def test_exact_slips_are_what_played_games_count(seat):
    """4,000 games of the lowest free cell against RandomPlayer: the share that first miss
    a win (or a block), and the share that do so and lose, land within 0.03 of the exact
    figures."""
    opponent, counts = RandomPlayer(seed=seat), dict.fromkeys(exact_slips(lowest_free, seat, "random"), 0)
    mine, theirs = "XO"[seat], "XO"[1 - seat]
    for _ in range(4000):
        game, slip = TicTacToe(), None
        while not game.is_terminal:
            mover = game.current_player
            if mover != seat:
                game.apply(opponent.act(game))
                continue
            cell = lowest_free(game.board, mover)
            wins, threats = completing(game.board, mine), completing(game.board, theirs)
            if slip is None and wins and cell not in wins:
                slip = "missed_win"
            elif slip is None and not wins and threats and cell not in threats:
                slip = "missed_block"
            game.apply(cell)
        if slip is not None:
            counts[slip] += 1
            counts[f"{slip}_lost"] += game.returns()[seat] < 0
    exact = exact_slips(lowest_free, seat, "random")
    assert exact["missed_win"] + exact["missed_block"] > 0.3  # the check has something to count
    for name, count in counts.items():
        assert count / 4000 == pytest.approx(exact[name], abs=0.03), name


@pytest.mark.parametrize("seat", [0, 1])
def test_exact_non_loss_is_what_played_games_estimate(seat):
    """4,000 games against RandomPlayer, played by the game's own rules, land within
    0.03 of the exact figure (about 4 standard errors)."""
    opponent = RandomPlayer(seed=seat)
    kept = 0
    for _ in range(4000):
        game = TicTacToe()
        while not game.is_terminal:
            mover = game.current_player
            game.apply(lowest_free(game.board, mover) if mover == seat else opponent.act(game))
        kept += game.returns()[seat] >= 0
    assert kept / 4000 == pytest.approx(exact_non_loss(lowest_free, seat, "random"), abs=0.03)


def test_eval_exact_plays_a_checkpoint_greedily_on_the_free_cells(tiny_model, capsys):
    from selfplay.cli import greedy_tictactoe, main

    policy = greedy_tictactoe(tiny_model)
    for board, player in list(optimal_moves())[::40]:
        assert board[policy(board, player)] == "."
    # greedy: the free cell whose move token the model rates highest, read here on its own
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for board, player in list(optimal_moves())[::200]:
        game = TicTacToe()
        game.board, game.current_player = board, player
        with torch.no_grad():
            logits = model(torch.tensor([tokenizer(game.observation(player)).input_ids])).logits[0, -1]
        rated = {a: logits[tokenizer.convert_tokens_to_ids(str(a + 1))].item() for a in game.legal_actions()}
        assert policy(board, player) == max(rated, key=rated.get)
    assert main(["eval", "--checkpoint", tiny_model, "--exact", "--opponent", "minimax", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["non_loss"] == pytest.approx((result["X"] + result["O"]) / 2)
    assert result["X"] == exact_non_loss(policy, 0, "minimax")
    assert result["X_missed_block"] == exact_slips(policy, 0, "minimax")["missed_block"]
    assert main(["eval", "--checkpoint", tiny_model, "--exact", "--opponent", "heuristic"]) == 2
    assert "minimax or random only" in capsys.readouterr().err
