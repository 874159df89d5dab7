"""Two-player zero-sum text games. `make_game(name, seed)` is the one way in."""
from __future__ import annotations

from selfplay.games.tictactoe import TicTacToe

GAMES = {"tictactoe": TicTacToe}


def make_game(name: str, seed: int = 0):
    if name not in GAMES:
        raise ValueError(f"game: unknown game {name!r}; known: {sorted(GAMES)}")
    return GAMES[name](seed=seed)
