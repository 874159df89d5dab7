"""TicTacToe as a text game. Cells are numbered 1-9, row by row. A move is the first
non-space character of the model's reply; anything else, or an occupied cell, is an
illegal move: the mover loses (-1), the opponent wins (+1) and the game ends."""

from __future__ import annotations

import functools
import random

from selfplay.games.players import RandomPlayer
from selfplay.games.rules import IllegalReplyLoses

LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
MARKS = "XO"


def place(board: str, cell: int, mark: str) -> str:
    """`board` with `mark` in `cell` (0-8); the board is a 9-character string, '.' free."""
    return board[:cell] + mark + board[cell + 1 :]


def winner(board: str) -> str | None:
    for a, b, c in LINES:
        if board[a] != "." and board[a] == board[b] == board[c]:
            return board[a]
    return None


def shown(board: str, player: int) -> str:
    """`board` as `player` is shown it: each cell's mark, or its number while it is free."""
    cells = "".join(c if c != "." else str(i + 1) for i, c in enumerate(board))
    return f"tictactoe {MARKS[player]} {cells}:"


class TicTacToe(IllegalReplyLoses):
    name = "tictactoe"
    num_players = 2
    max_reply_chars = 1  # a longer reply is never needed: generation stops there

    def __init__(self, seed: int = 0):
        self.seed = seed  # no chance nodes; kept so every game is replayable from (name, seed)
        self.board = "." * 9
        self.current_player = 0
        self.illegal_by: int | None = None

    @property
    def is_terminal(self) -> bool:
        return self.illegal_by is not None or winner(self.board) is not None or "." not in self.board

    def returns(self) -> list[float]:
        if self.illegal_by is not None:
            return [-1.0, 1.0] if self.illegal_by == 0 else [1.0, -1.0]
        w = winner(self.board)
        if w is None:
            return [0.0, 0.0]
        return [1.0, -1.0] if w == "X" else [-1.0, 1.0]

    def legal_actions(self) -> list[int]:
        return [i for i, c in enumerate(self.board) if c == "."]

    def observation(self, player: int) -> str:
        """One line, cells in move order, free cells shown by their number (as SPIRAL's
        TextArena observations list the valid moves): 'tictactoe O X2O456789:' -> reply '5'."""
        return shown(self.board, player)

    @staticmethod
    def parse_action(text: str) -> int | None:
        text = text.lstrip()
        if text and text[0] in "123456789":
            return int(text[0]) - 1
        return None

    @staticmethod
    def action_text(action: int) -> str:
        return str(action + 1)

    def apply(self, action: int) -> None:
        if self.is_terminal:
            raise ValueError("game is over")
        if action not in self.legal_actions():
            raise ValueError(f"cell {action + 1} is not free on board {self.board}")
        self.board = place(self.board, action, MARKS[self.current_player])
        self.current_player = 1 - self.current_player


def _symmetries() -> tuple[tuple[int, ...], ...]:
    """The board's 8 symmetries (rotations by 0-270 degrees, each alone and reflected), as
    permutations: view[i] is the cell shown at position i; the identity first."""
    rotate = (6, 3, 0, 7, 4, 1, 8, 5, 2)  # a quarter turn clockwise: position i shows cell rotate[i]
    mirror = (2, 1, 0, 5, 4, 3, 8, 7, 6)  # left-right
    views, view = [], tuple(range(9))
    for _ in range(4):
        views += [view, tuple(view[mirror[i]] for i in range(9))]
        view = tuple(view[rotate[i]] for i in range(9))
    return tuple(views)


SYMMETRIES = _symmetries()


@functools.lru_cache(maxsize=1 << 16)
def drawn_view(seed: int, moves: int) -> tuple[int, ...]:
    """The view a game of `seed` shows after `moves` moves (asked once per free cell a turn)."""
    return SYMMETRIES[random.Random(f"{seed}:{moves}").randrange(len(SYMMETRIES))]


class ViewedTicTacToe(TicTacToe):
    """TicTacToe whose every turn shows the board in one of its 8 symmetric orientations
    (`generator.board_symmetries`), drawn per turn from the game's seed, so a replay from
    (seed, replies) sees the same views; the reply names a cell as shown, and the move is
    made on the board as it is. The policy then meets each position in all its
    orientations, as AlphaGo Zero's training data did (there as augmentation after play;
    here at play time, so the behaviour log-probs are those of the prompt shown)."""

    def view(self) -> tuple[int, ...]:
        return drawn_view(self.seed, sum(c != "." for c in self.board))

    def observation(self, player: int) -> str:
        return shown("".join(self.board[c] for c in self.view()), player)  # numbered as shown

    def parse_action(self, text: str) -> int | None:
        position = TicTacToe.parse_action(text)
        return None if position is None else self.view()[position]

    def action_text(self, action: int) -> str:
        return TicTacToe.action_text(self.view().index(action))


@functools.cache
def minimax_value(board: str, mark: str) -> int:
    """Value of `board` for the side to move (`mark`): +1 win, 0 draw, -1 loss."""
    w = winner(board)
    if w is not None:
        return 1 if w == mark else -1
    if "." not in board:
        return 0
    other = "O" if mark == "X" else "X"
    return max(-minimax_value(place(board, i, mark), other) for i, c in enumerate(board) if c == ".")


class MinimaxPlayer:
    """Perfect play; picks uniformly among optimal moves so evaluation covers many lines."""

    name = "minimax"

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def act(self, game: TicTacToe) -> int:
        return self.rng.choice(best_moves(game.board, game.current_player))


def best_moves(board: str, player: int) -> list[int]:
    """The free cells of `board` whose minimax value for `player` (to move) is highest:
    every move that wins by force if one does, else every move that holds the draw."""
    mark, other = MARKS[player], MARKS[1 - player]
    scored = [(-minimax_value(place(board, i, mark), other), i) for i, c in enumerate(board) if c == "."]
    best = max(v for v, _ in scored)
    return [i for v, i in scored if v == best]


def optimal_moves() -> dict[tuple[str, int], list[int]]:
    """Every position a game can reach where someone is to move (4,520 of TicTacToe's 5,478
    legal positions; the rest are over), as (board, player to move) -> `best_moves`: the
    perfect labels a policy would imitate, in the order a depth-first walk from the empty
    board meets them."""
    labels: dict[tuple[str, int], list[int]] = {}

    def walk(board: str, player: int) -> None:
        if winner(board) is not None or "." not in board or (board, player) in labels:
            return
        labels[board, player] = best_moves(board, player)
        for i, c in enumerate(board):
            if c == ".":
                walk(place(board, i, MARKS[player]), 1 - player)

    walk("." * 9, 0)
    return labels


def exact_non_loss(policy, seat: int, opponent: str, board: str = "." * 9) -> float:
    """The probability that a deterministic `policy` ((board, player) -> cell) playing
    `seat` (0: X, 1: O) does not lose from `board` (X to move when the marks are even),
    over every game `opponent` can play: `minimax` uniform over its optimal moves (as
    MinimaxPlayer draws them), `random` uniform over the free cells. Each branch weighs its
    probability, so there is no sampling noise: what 100 games a seat estimate. A move
    onto a taken cell (an unmasked policy's illegal reply) loses, as in play."""
    return non_loss_values(policy, seat, opponent)(board)


def non_loss_values(policy, seat: int, opponent: str):
    """`exact_non_loss` as a cached function of the board, for callers that value many
    positions of one policy (each subtree is walked once)."""
    if opponent not in ("minimax", "random"):
        raise ValueError(f"exact evaluation: opponent must be minimax or random, got {opponent!r}")

    @functools.cache
    def value(board: str) -> float:
        won = winner(board)
        if won is not None:
            return 0.0 if won == MARKS[1 - seat] else 1.0
        if "." not in board:
            return 1.0
        player = board.count("X") - board.count("O")  # 0: X to move, 1: O
        if player == seat:
            cell = policy(board, player)
            return value(place(board, cell, MARKS[player])) if board[cell] == "." else 0.0
        cells = replies(board, player, opponent)
        return sum(value(place(board, i, MARKS[player])) for i in cells) / len(cells)

    return value


def replies(board: str, player: int, opponent: str) -> list[int]:
    """The cells `opponent` (minimax or random) plays from `board` with equal probability."""
    if opponent == "minimax":
        return best_moves(board, player)
    return [i for i, c in enumerate(board) if c == "."]


def exact_slips(policy, seat: int, opponent: str, board: str = "." * 9) -> dict[str, float]:
    """Where a deterministic `policy` playing `seat` first goes wrong by the one-move rule,
    exactly, over every game `opponent` can play from `board` (weighted as in
    `exact_non_loss`): `missed_win`, the probability that a game reaches a turn where the
    policy could complete a line and plays elsewhere; `missed_block`, one where it cannot
    win, the opponent could complete a line next, and it does not block. Each game counts
    once, at its first such slip; `*_lost` is the probability of a game that slips so and
    is then lost. Where non-loss falls short of 1 with no slip, the opponent won by a fork."""
    value = non_loss_values(policy, seat, opponent)
    mine, theirs = MARKS[seat], MARKS[1 - seat]
    out = dict.fromkeys(("missed_win", "missed_win_lost", "missed_block", "missed_block_lost"), 0.0)

    def walk(board: str, p: float) -> None:
        if winner(board) is not None or "." not in board:
            return
        player = board.count("X") - board.count("O")
        if player != seat:
            cells = replies(board, player, opponent)
            for i in cells:
                walk(place(board, i, theirs), p / len(cells))
            return
        cell = policy(board, player)
        wins, threats = completing(board, mine), completing(board, theirs)
        if wins:
            slip = "missed_win" if cell not in wins else None
        else:
            slip = "missed_block" if threats and cell not in threats else None
        legal = board[cell] == "."  # a taken cell loses on the spot, as in play
        if slip is None:
            if legal:
                walk(place(board, cell, mine), p)
            return
        lost = 1.0 - value(place(board, cell, mine)) if legal else 1.0
        out[slip] += p
        out[f"{slip}_lost"] += p * lost

    walk(board, 1.0)
    return out


def completing(board: str, mark: str) -> list[int]:
    """Free cells where `mark` would complete a line."""
    return [i for i, c in enumerate(board) if c == "." and winner(place(board, i, mark)) == mark]


class HeuristicPlayer:
    """The one-move rule a beginner learns: win if you can, else block the opponent's
    win, else a random free cell. It punishes a missed block but never sets up a fork, so
    unlike minimax it can be beaten; a training opponent that teaches defence without
    being the held-out evaluation's perfect player."""

    name = "heuristic"

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def act(self, game: TicTacToe) -> int:
        mark = MARKS[game.current_player]
        other = MARKS[1 - game.current_player]
        return self.rng.choice(self.rules(game.board, mark, other) or game.legal_actions())

    def rules(self, board: str, mark: str, other: str) -> list[int]:
        """The cells the first rule that applies allows ([]: none applies, any free cell)."""
        return completing(board, mark) or completing(board, other)


def forks(board: str, mark: str) -> list[int]:
    """Free cells where `mark` would threaten two lines at once (two cells completing a line
    for it): the opponent can block only one."""
    return [i for i, c in enumerate(board) if c == "." and len(completing(place(board, i, mark), mark)) >= 2]


class TacticianPlayer(HeuristicPlayer):
    """The heuristic's rules and one more a club player learns next: win, else block, else
    make a fork, else a random free cell. It punishes a reply that lets it fork (an O that
    answers a corner with a corner), which `heuristic` never does; it never sees a fork
    coming, never prefers the centre and plays its first moves at random, so unlike
    minimax it loses (and it is no stronger against minimax than `heuristic`: minimax
    never lets a fork arise)."""

    name = "tactician"

    def rules(self, board: str, mark: str, other: str) -> list[int]:
        return super().rules(board, mark, other) or forks(board, mark)


SCRIPTED = {
    "minimax": MinimaxPlayer,
    "random": RandomPlayer,
    "heuristic": HeuristicPlayer,
    "tactician": TacticianPlayer,
}
GAME = TicTacToe
