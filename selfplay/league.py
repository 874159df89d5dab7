"""League math: Elo ratings, matchmaking probabilities, opponent assignment for a wave,
the promotion test, and the league's saved state (members, head-to-head, rating history).

Elo (Elo 1978, "The Rating of Chessplayers"): E_a = 1 / (1 + 10^((r_b - r_a) / 400)),
    r_a' = r_a + k (S_a - E_a), r_b' = r_b - k (S_a - E_a).
PFSP (Vinyals et al. 2019, "Grandmaster level in StarCraft II", AlphaStar): opponents are
drawn with weight f_hard(x) = (1 - x)^p, x = the learner's expected score against them."""

from __future__ import annotations

import json
import math
import random
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from selfplay.config import MatchmakingMode
from selfplay.files import write_atomic
from selfplay.stats import points, wilson_interval

DEFAULT_RATING = 1000.0
SELF = "self"  # the learner playing itself
LEARNER = "learner"  # the learner's id in results and rating_history
OPENING = "opening"  # the random opening moves' player (generator.opening_moves): no one's play
BLUNDER = "blunder"  # a random move later in a game (generator.blunder_share): no one's play either
MODES = typing.get_args(MatchmakingMode)
LEAGUE_VERSION = 1
# Skill-conditioned prompts: the seed model's tokens, prefixed by how strong the opponent is.
SKILL_TOKENS = {"novice": "<novice>", "intermediate": "<intermediate>", "expert": "<expert>"}
SCRIPTED_TIERS = {"random": "novice", "minimax": "expert", "nash": "expert"}


def skill_tier(opponent_minus_learner: float, band: float = 100.0) -> str:
    """The tier of an opponent rated `opponent_minus_learner` Elo above the learner: outside
    +-band it is an expert (stronger) or a novice (weaker)."""
    if opponent_minus_learner > band:
        return "expert"
    if opponent_minus_learner < -band:
        return "novice"
    return "intermediate"


def scripted_tier(name: str) -> str:
    return SCRIPTED_TIERS.get(name, "intermediate")


def elo_expected(ra: float, rb: float) -> float:
    # E_a = 1 / (1 + 10^((r_b - r_a) / 400))  (Elo 1978)
    return 1.0 / (1.0 + 10.0 ** ((rb - ra) / 400.0))


def elo_update(ra: float, rb: float, score_a: float, k: float = 32.0) -> tuple[float, float]:
    # r_a' = r_a + k (S_a - E_a); b moves by the same amount the other way (zero-sum)
    delta = k * (score_a - elo_expected(ra, rb))
    return ra + delta, rb - delta


def _normalise(weights: list[float]) -> list[float]:
    total = sum(weights)
    if total <= 0:
        return [1.0 / len(weights)] * len(weights)
    return [w / total for w in weights]


def pfsp_weights(scores: list[float], power: float = 2.0) -> list[float]:
    # f_hard(x) = (1 - x)^p on the learner's expected score x  (Vinyals et al. 2019)
    if not scores:
        return []
    return _normalise([(1.0 - x) ** power for x in scores])


def near_skill_weights(learner_rating: float, ratings: list[float], scale: float = 200.0) -> list[float]:
    # w_i = exp(-0.5 ((r_i - r_learner) / scale)^2): a Gaussian around the learner's rating
    if not ratings:
        return []
    return _normalise([math.exp(-0.5 * ((r - learner_rating) / scale) ** 2) for r in ratings])


def latest_weights(n: int) -> list[float]:
    return [0.0] * (n - 1) + [1.0] if n > 0 else []


def matchmaking_probs(
    mode: str,
    learner_rating: float,
    ratings: list[float],
    scores: list[float],
    power: float = 2.0,
    scale: float = 200.0,
) -> list[float]:
    if len(ratings) != len(scores):
        raise ValueError(
            f"matchmaking_probs: {len(ratings)} ratings but {len(scores)} scores; "
            "pass one of each per league member"
        )
    if mode == "pfsp":
        return pfsp_weights(scores, power)
    if mode == "near":
        return near_skill_weights(learner_rating, ratings, scale)
    if mode == "latest":
        return latest_weights(len(ratings))
    raise ValueError(f"unknown matchmaking mode {mode!r}; expected one of {MODES}")


def assign_opponents(
    member_ids: list[str],
    probs: list[float],
    n_games: int,
    self_fraction: float,
    max_distinct: int,
    rng: random.Random,
) -> list[str]:
    """One opponent per game of a wave: SELF or a member id, in shuffled order. A generator
    holds at most max_distinct opponent engines, so the wave first picks that many distinct
    members (weighted, without replacement), then draws each game's opponent from them."""
    if len(member_ids) != len(probs):
        raise ValueError(f"assign_opponents: {len(member_ids)} members but {len(probs)} probs")
    if not 0.0 <= self_fraction <= 1.0:
        raise ValueError(f"self_fraction must be in [0, 1], got {self_fraction}")
    if any(p < 0 for p in probs):
        raise ValueError(f"probs must be non-negative, got {probs}")
    n_self = n_games if not member_ids else round(n_games * self_fraction)
    out = [SELF] * n_self
    if n_games > n_self:
        if max_distinct < 1:
            raise ValueError(f"max_distinct must be >= 1 to play members, got {max_distinct}")
        remaining = [(m, p) for m, p in zip(member_ids, probs) if p > 0]
        if not remaining:
            raise ValueError("assign_opponents: every member has probability 0")
        pool: list[tuple[str, float]] = []
        while remaining and len(pool) < max_distinct:
            i = rng.choices(range(len(remaining)), weights=[p for _, p in remaining])[0]
            pool.append(remaining.pop(i))
        out += rng.choices([m for m, _ in pool], weights=[p for _, p in pool], k=n_games - n_self)
    rng.shuffle(out)
    return out


@dataclass
class PromotionResult:
    promote: bool
    score: float
    lo: float
    hi: float
    games: int


def promotion(
    wins: int, draws: int, losses: int, threshold: float = 0.6, min_games: int = 1
) -> PromotionResult:
    """Score counts draws half: in TicTacToe between decent players draws dominate, so a pure
    win rate would never pass. The 95% Wilson interval treats the score as a proportion."""
    games = wins + draws + losses
    won = points(wins, draws)
    score = won / games if games else 0.0
    lo, hi = wilson_interval(won, games)
    return PromotionResult(games >= min_games and score > threshold, score, lo, hi, games)


def refreshes_reference(promotions: int, every: int) -> bool:
    """Whether the promotion that made the league's promotions-th snapshot also makes it
    DPO's reference: every `every` promotions (1: each); 0: never, the supervised policy
    (snapshot 0) stays the reference."""
    return every > 0 and promotions > 0 and promotions % every == 0


@dataclass
class Member:
    id: str
    version: int
    step: int
    path: str
    checksum: str
    rating: float = DEFAULT_RATING
    created_at: float = 0.0


@dataclass
class LeagueState:
    learner_rating: float = DEFAULT_RATING
    members: list[Member] = field(default_factory=list)
    # (a, b, game) -> [a_wins, draws, a_losses]; one key per unordered pair and game
    results: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)
    rating_history: list[tuple[int, str, float]] = field(default_factory=list)  # (step, id, rating)
    games_played: int = 0
    # (member, game) -> the learner's points in its most recent games against the member,
    # oldest first (at most the `window` given to `record`): what PFSP weighs members by
    recent: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def member(self, member_id: str) -> Member:
        for m in self.members:
            if m.id == member_id:
                return m
        ids = [m.id for m in self.members]
        raise KeyError(f"no league member {member_id!r}; members are {ids}")

    def add_member(self, member: Member, step: int) -> None:
        if member.id in (LEARNER, SELF):
            raise ValueError(f"member id {member.id!r} is reserved")
        if any(m.id == member.id for m in self.members):
            raise ValueError(f"league already has a member {member.id!r}")
        self.members.append(member)
        self.rating_history.append((step, member.id, member.rating))

    def _rating(self, pid: str) -> float:
        return self.learner_rating if pid == LEARNER else self.member(pid).rating

    def _set_rating(self, pid: str, rating: float, step: int) -> None:
        if pid == LEARNER:
            self.learner_rating = rating
        else:
            self.member(pid).rating = rating
        self.rating_history.append((step, pid, rating))

    def record(
        self,
        a: str,
        b: str,
        score_a: float,
        game: str,
        step: int,
        k: float = 32.0,
        rate: bool = True,
        window: int = 0,
    ) -> None:
        """One finished game: a scored `score_a` against b. Rated games move both Elo
        ratings; a learner-vs-member game also joins the member's recent results (the last
        `window` per game; 0 keeps them all)."""
        if a == b or SELF in (a, b):
            raise ValueError(f"cannot record {a!r} vs {b!r}: games against oneself are not recorded")
        if score_a not in (0.0, 0.5, 1.0):
            raise ValueError(f"score_a must be 0, 0.5 or 1, got {score_a}")
        ra, rb = self._rating(a), self._rating(b)  # KeyError for an unknown id
        col = {1.0: 0, 0.5: 1, 0.0: 2}[score_a]  # a's win, draw, loss
        if (b, a, game) in self.results:  # stored from b's side: a's win is b's loss
            self.results[(b, a, game)][2 - col] += 1
        else:
            self.results.setdefault((a, b, game), [0, 0, 0])[col] += 1
        self.games_played += 1
        if rate:
            ra, rb = elo_update(ra, rb, score_a, k)
            self._set_rating(a, ra, step)
            self._set_rating(b, rb, step)
        if LEARNER in (a, b):
            member, learner_points = (b, score_a) if a == LEARNER else (a, 1.0 - score_a)
            history = self.recent.setdefault((member, game), [])
            history.append(learner_points)
            if window and len(history) > window:
                del history[: len(history) - window]

    def head_to_head(self, a: str, b: str, game: str | None = None) -> tuple[int, int, int]:
        w = d = l = 0
        for (x, y, g), (xw, xd, xl) in self.results.items():
            if game is not None and g != game:
                continue
            if (x, y) == (a, b):
                w, d, l = w + xw, d + xd, l + xl
            elif (x, y) == (b, a):
                w, d, l = w + xl, d + xd, l + xw
        return w, d, l

    def learner_scores(self, recent: bool = False) -> list[float]:
        """The learner's expected score against each member, with a Laplace prior
        ((points + 1) / (n + 2), so an unplayed member scores 0.5): over all games
        (recent=False), or over the recent results `record` kept, per game, then averaged
        over the games played, so the mix's proportions do not tilt it and a member the
        learner has since learned to beat stops counting as hard (PFSP's intent)."""
        out = []
        for m in self.members:
            if not recent:
                w, d, l = self.head_to_head(LEARNER, m.id)
                out.append((points(w, d) + 1) / (w + d + l + 2))
                continue
            per_game = [
                (sum(h) + 1) / (len(h) + 2) for (mid, _), h in self.recent.items() if mid == m.id and h
            ]
            out.append(sum(per_game) / len(per_game) if per_game else 0.5)
        return out

    def to_dict(self) -> dict:
        return {
            "league_version": LEAGUE_VERSION,
            "learner_rating": self.learner_rating,
            "members": [asdict(m) for m in self.members],
            "results": [[a, b, g, list(v)] for (a, b, g), v in self.results.items()],
            "rating_history": [list(h) for h in self.rating_history],
            "games_played": self.games_played,
            "recent": [[m, g, list(h)] for (m, g), h in self.recent.items()],
        }

    @classmethod
    def from_dict(cls, d: dict) -> LeagueState:
        version = d.get("league_version")
        if version != LEAGUE_VERSION:
            raise ValueError(
                f"league state has league_version {version!r}; this code reads "
                f"{LEAGUE_VERSION}. Start a fresh league or convert the file."
            )
        return cls(
            learner_rating=d["learner_rating"],
            members=[Member(**m) for m in d["members"]],
            results={(a, b, g): list(v) for a, b, g, v in d["results"]},
            rating_history=[(s, i, r) for s, i, r in d["rating_history"]],
            games_played=d["games_played"],
            recent={(m, g): list(h) for m, g, h in d.get("recent", [])},  # absent in files before it
        )

    def save(self, path: str | Path) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> LeagueState:
        return cls.from_dict(json.loads(Path(path).read_text()))
