"""Deal-or-no-deal item splitting (Lewis et al. 2017), zero-sum as in SPIRAL's negotiation:
the player whose share is worth more to itself wins.

A pool holds 1-3 items of each of 3 types. Each player values the items privately (0-9 per
item, so a valuation is one digit; the whole pool is worth exactly 10 to each player).
Players alternate, player 0 first. A move is a proposal, digits saying how many of each
type the mover takes ('201'; types left out take 0, so '2' is '200'), or 'a', accepting
the opponent's standing proposal. (Short proposals are legal so that a randomly initialised
policy finds legal moves often enough to learn from: three exact digits by chance is ~1e-4.) On
accept the proposer gets what it asked for and the acceptor the rest: the higher value wins
(+1/-1), equal values draw. No deal after MAX_TURNS moves is a draw. An unparsable or
illegal reply (a digit above the count, 'a' with nothing to accept) loses (-1/+1).
Counts and valuations are drawn from the seed at construction."""

from __future__ import annotations

import functools
import itertools
import random

from selfplay.games.players import RandomPlayer
from selfplay.games.rules import IllegalReplyLoses

NUM_TYPES = 3
MAX_COUNT = 3
TOTAL_VALUE = 10
MAX_TURNS = 6
ACCEPT = 0  # action 0; action 1 + k is proposals(counts)[k]


def value(values: tuple[int, ...], items: tuple[int, ...]) -> int:
    return sum(v * n for v, n in zip(values, items))


@functools.cache
def proposals(counts: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Every split, as what the proposer takes, in itertools.product order."""
    return tuple(itertools.product(*(range(c + 1) for c in counts)))


@functools.cache
def valuations(counts: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Every per-item valuation (0-9 each) worth exactly TOTAL_VALUE for the pool `counts`."""
    return tuple(v for v in itertools.product(range(10), repeat=NUM_TYPES) if value(v, counts) == TOTAL_VALUE)


def digits(items: tuple[int, ...]) -> str:
    return "".join(map(str, items))


class Negotiation(IllegalReplyLoses):
    name = "negotiation"
    num_players = 2
    max_reply_chars = 3  # a longer reply is never needed: generation stops there

    def __init__(self, seed: int = 0):
        self.seed = seed
        rng = random.Random(seed)
        while True:  # (3, 3, 3) admits no valuation worth 10: draw again
            counts = tuple(rng.randint(1, MAX_COUNT) for _ in range(NUM_TYPES))
            if valuations(counts):
                break
        self.counts = counts
        self.values = tuple(rng.choice(valuations(counts)) for _ in range(2))  # per player
        self.moves: list[int] = []
        self.illegal_by: int | None = None

    @property
    def current_player(self) -> int:
        return len(self.moves) % 2

    @property
    def accepted(self) -> bool:
        return bool(self.moves) and self.moves[-1] == ACCEPT

    @property
    def is_terminal(self) -> bool:
        return self.illegal_by is not None or self.accepted or len(self.moves) >= MAX_TURNS

    def deal(self, player: int) -> tuple[int, ...] | None:
        """What `player` gets under the standing (or accepted) proposal; None if none stands."""
        i = len(self.moves) - (2 if self.accepted else 1)
        if i < 0:
            return None
        take = proposals(self.counts)[self.moves[i] - 1]
        return take if i % 2 == player else tuple(c - t for c, t in zip(self.counts, take))

    def returns(self) -> list[float]:
        if self.illegal_by is not None:
            return [-1.0, 1.0] if self.illegal_by == 0 else [1.0, -1.0]
        if not self.accepted:
            return [0.0, 0.0]
        v0, v1 = (value(self.values[p], self.deal(p)) for p in (0, 1))
        if v0 == v1:
            return [0.0, 0.0]
        return [1.0, -1.0] if v0 > v1 else [-1.0, 1.0]

    def legal_actions(self) -> list[int]:
        if self.is_terminal:
            return []
        offers = list(range(1, len(proposals(self.counts)) + 1))
        return [ACCEPT] + offers if self.moves else offers

    def observation(self, player: int) -> str:
        """Counts, own valuations, own share under the standing proposal ('-': none), moves
        left: 'nego n123 v402 get020 left5:' -> reply 'a' or e.g. '103'."""
        get = self.deal(player)
        return (
            f"nego n{digits(self.counts)} v{digits(self.values[player])} "
            f"get{'-' if get is None else digits(get)} left{MAX_TURNS - len(self.moves)}:"
        )

    def proposal_action(self, take: tuple[int, ...]) -> int:
        return 1 + proposals(self.counts).index(tuple(take))

    def parse_action(self, text: str) -> int | None:
        """'a' (any case) accepts; otherwise the leading digits (up to three) are what the
        mover takes of each type in order, types left out taking 0 ('2' = '200'); the rest
        of the reply is ignored. Each digit must be within its type's count."""
        text = text.lstrip().lower()
        if text[:1] == "a":
            return ACCEPT
        lead = ""
        for ch in text[:NUM_TYPES]:
            if ch not in "0123456789":
                break
            lead += ch
        if not lead:
            return None
        take = tuple(int(d) for d in lead) + (0,) * (NUM_TYPES - len(lead))
        if any(t > c for t, c in zip(take, self.counts)):
            return None
        return self.proposal_action(take)

    def action_text(self, action: int) -> str:
        return "a" if action == ACCEPT else digits(proposals(self.counts)[action - 1])

    def apply(self, action: int) -> None:
        if self.is_terminal:
            raise ValueError("game is over")
        if action not in self.legal_actions():
            if action == ACCEPT:
                raise ValueError("nothing to accept: no proposal stands")
            n = len(proposals(self.counts))
            raise ValueError(
                f"proposal action {action} is out of range 1..{n} for counts {digits(self.counts)}"
            )
        self.moves.append(action)


GREEDY_ACCEPT = 7
FAIR_SHARE = TOTAL_VALUE // 2


class GreedyPlayer:
    """Accepts a standing proposal worth >= GREEDY_ACCEPT (7) to it; otherwise proposes to
    take everything but one item of the type it values least (the first such type on a
    tie). Deterministic; the seed is unused."""

    name = "greedy"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def act(self, game: Negotiation) -> int:
        values = game.values[game.current_player]
        get = game.deal(game.current_player)
        if get is not None and value(values, get) >= GREEDY_ACCEPT:
            return ACCEPT
        take = list(game.counts)
        take[values.index(min(values))] -= 1
        return game.proposal_action(tuple(take))


class FairPlayer:
    """Accepts a standing proposal worth >= FAIR_SHARE (5) to it; otherwise proposes the
    split whose value to it is closest to 5, preferring above 5 to below, then the fewest
    items taken, then a seeded random choice among what is still tied."""

    name = "fair"

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def act(self, game: Negotiation) -> int:
        values = game.values[game.current_player]
        get = game.deal(game.current_player)
        if get is not None and value(values, get) >= FAIR_SHARE:
            return ACCEPT
        scored = {}
        for take in proposals(game.counts):
            v = value(values, take)
            scored[take] = (abs(v - FAIR_SHARE), v < FAIR_SHARE, sum(take))
        best = min(scored.values())
        return game.proposal_action(self.rng.choice([t for t, s in scored.items() if s == best]))


SCRIPTED = {"fair": FairPlayer, "greedy": GreedyPlayer, "random": RandomPlayer}
GAME = Negotiation
