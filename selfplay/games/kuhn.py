"""Kuhn poker (Kuhn 1950) as a text game. Three cards J < Q < K; each player antes 1 and
gets one card; player 0 acts first. A move is 'p' (check, or fold facing a bet) or 'b'
(bet 1, or call facing a bet): the first non-space character of the reply, any case.
Anything else is an illegal move: the mover gets -2, the opponent +2 (never better for the
mover than a legal move: as bad as losing a called bet) and the game ends. Cards are dealt from the seed, so (seed, replies)
replays a game exactly. Card indices and info-state strings match OpenSpiel's
kuhn_poker, so a policy can be scored with OpenSpiel's exploitability."""

from __future__ import annotations

import random
from typing import NamedTuple

from selfplay.games.players import RandomPlayer
from selfplay.games.rules import IllegalReplyLoses

CARDS = "JQK"  # index 0, 1, 2 as in OpenSpiel
MOVES = "pb"  # action 0 = pass, 1 = bet
TERMINAL = ("pp", "bp", "bb", "pbp", "pbb")
ILLEGAL_PENALTY = 2.0


class Kuhn(IllegalReplyLoses):
    name = "kuhn"
    num_players = 2
    max_reply_chars = 1  # a longer reply is never needed: generation stops there

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.cards = tuple(random.Random(seed).sample(range(3), 2))  # (player 0's, player 1's)
        self.history = ""
        self.illegal_by: int | None = None

    @property
    def current_player(self) -> int:
        return len(self.history) % 2

    @property
    def is_terminal(self) -> bool:
        return self.illegal_by is not None or self.history in TERMINAL

    def returns(self) -> list[float]:
        if self.illegal_by is not None:
            r = ILLEGAL_PENALTY if self.illegal_by == 1 else -ILLEGAL_PENALTY
            return [r, -r]
        if not self.is_terminal:
            return [0.0, 0.0]
        if self.history == "bp":  # player 1 folded to player 0's bet
            return [1.0, -1.0]
        if self.history == "pbp":  # player 0 folded to player 1's bet
            return [-1.0, 1.0]
        stake = 2.0 if self.history.endswith("bb") else 1.0  # showdown: ante, plus a called bet
        return [stake, -stake] if self.cards[0] > self.cards[1] else [-stake, stake]

    def legal_actions(self) -> list[int]:
        return [] if self.is_terminal else [0, 1]

    def info_state(self, player: int) -> str:
        """OpenSpiel's information_state_string: card index then history, e.g. '2pb'."""
        return f"{self.cards[player]}{self.history}"

    def observation(self, player: int) -> str:
        """Own card and betting history ('-' when empty): 'kuhn K pb:' -> reply 'b'."""
        return observation_text(self.cards[player], self.history)

    @staticmethod
    def parse_action(text: str) -> int | None:
        text = text.lstrip().lower()
        if text and text[0] in MOVES:
            return MOVES.index(text[0])
        return None

    @staticmethod
    def action_text(action: int) -> str:
        return MOVES[action]

    def apply(self, action: int) -> None:
        if self.is_terminal:
            raise ValueError("game is over")
        if action not in (0, 1):
            raise ValueError(f"kuhn action must be 0 (pass) or 1 (bet), got {action!r}")
        self.history += MOVES[action]


def observation_text(card: int, history: str) -> str:
    return f"kuhn {CARDS[card]} {history or '-'}:"


class InfoState(NamedTuple):
    player: int
    card: int
    history: str
    key: str  # OpenSpiel information_state_string
    observation: str


INFO_STATES = tuple(
    InfoState(len(h) % 2, c, h, f"{c}{h}", observation_text(c, h))
    for h in ("", "p", "b", "pb")
    for c in range(3)
)


def nash_policy(alpha: float) -> dict[str, list[float]]:
    """Kuhn's one-parameter family of equilibria, alpha in [0, 1/3] (player 0's value -1/18).
    Player 0 bets J with alpha, K with 3*alpha, never Q; facing a bet calls Q with
    alpha + 1/3. Player 1 bets J after a pass with 1/3; facing a bet calls Q with 1/3.
    Maps OpenSpiel info-state keys to [p_pass, p_bet]."""
    if not 0.0 <= alpha <= 1 / 3:
        raise ValueError(f"nash_policy: alpha must be in [0, 1/3], got {alpha}")
    return {
        "0": [1 - alpha, alpha],
        "1": [1.0, 0.0],
        "2": [1 - 3 * alpha, 3 * alpha],
        "0pb": [1.0, 0.0],
        "1pb": [2 / 3 - alpha, alpha + 1 / 3],
        "2pb": [0.0, 1.0],
        "0p": [2 / 3, 1 / 3],
        "1p": [1.0, 0.0],
        "2p": [0.0, 1.0],
        "0b": [1.0, 0.0],
        "1b": [2 / 3, 1 / 3],
        "2b": [0.0, 1.0],
    }


def tabular_policy(policy: dict[str, list[float]]):
    """`policy` (info-state key -> [p_pass, p_bet], all 12 keys in INFO_STATES) as
    OpenSpiel's TabularPolicy for kuhn_poker, checked."""
    import pyspiel
    from open_spiel.python import policy as os_policy

    tabular = os_policy.TabularPolicy(pyspiel.load_game("kuhn_poker"))
    for key, row in tabular.state_lookup.items():
        if key not in policy:
            raise KeyError(f"kuhn policy has no entry for info state {key!r}")
        probs = policy[key]
        if len(probs) != 2 or min(probs) < 0 or abs(sum(probs) - 1) > 1e-9:
            raise ValueError(f"kuhn policy at {key!r}: want [p_pass, p_bet] summing to 1, got {probs}")
        tabular.action_probability_array[row] = probs
    return tabular


def exploitability(policy: dict[str, list[float]]) -> float:
    """OpenSpiel's exploitability (mean over players of the best-response gain, in chips)
    of `policy`: info-state key -> [p_pass, p_bet] for all 12 keys in INFO_STATES."""
    from open_spiel.python.algorithms import exploitability as os_exploitability

    tabular = tabular_policy(policy)
    return float(
        os_exploitability.exploitability(tabular.game, tabular)
    )  # a float, not numpy's: JSON takes it


def own_reach(policy: dict[str, list[float]], key: str) -> float:
    """The probability that the player to move at info state `key` ('<card><history>')
    plays its own way there under `policy`: the product of its own earlier actions'
    probabilities (the opponent's and the deal's are shared by every policy of the player)."""
    card, history = key[0], key[1:]
    player = len(history) % 2
    reach = 1.0
    for j in range(player, len(history), 2):
        reach *= policy[card + history[:j]][MOVES.index(history[j])]
    return reach


def average_policy(
    policies: list[dict[str, list[float]]], weights: list[float] | None = None
) -> dict[str, list[float]]:
    """The behaviour policy equal to playing, for a whole game, policies[i] with probability
    weights[i] (default: uniform): at each info state the policies' action probabilities
    weighted by weights[i] times the player's own reach of the state under policies[i]
    (the sequence-form average that fictitious play, CFR and NFSP report; a plain mean of
    the tables is a different, more exploitable policy). Where no policy reaches a state,
    the plain weighted mean. Exploitability is convex in this average, so it is at most the
    policies' weighted mean exploitability."""
    if not policies:
        raise ValueError("average_policy: no policies to average")
    weights = [1.0] * len(policies) if weights is None else list(weights)
    if len(weights) != len(policies) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(
            f"average_policy: want one weight >= 0 per policy, not all 0; got {weights} for {len(policies)}"
        )
    out = {}
    for s in INFO_STATES:
        reach = [w * own_reach(p, s.key) for p, w in zip(policies, weights)]
        if sum(reach) <= 0:
            reach = weights
        total = sum(reach)
        out[s.key] = [sum(r * p[s.key][a] for r, p in zip(reach, policies)) / total for a in (0, 1)]
    return out


NASH_ALPHA = 1 / 6  # mid-family: player 0 mixes at J, K and Q-facing-a-bet (1/6, 1/2, 1/2)


class NashPlayer:
    """Samples from nash_policy(NASH_ALPHA): unexploitable, and it mixes at every info
    state where the equilibrium family allows it."""

    name = "nash"

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.policy = nash_policy(NASH_ALPHA)

    def act(self, game: Kuhn) -> int:
        p_pass, _ = self.policy[game.info_state(game.current_player)]
        return 0 if self.rng.random() < p_pass else 1


SCRIPTED = {"nash": NashPlayer, "random": RandomPlayer}
GAME = Kuhn
