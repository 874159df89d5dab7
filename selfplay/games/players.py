"""Scripted players that work for any game: they read only `legal_actions()`."""

from __future__ import annotations

import random


class RandomPlayer:
    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def act(self, game) -> int:
        return self.rng.choice(game.legal_actions())
