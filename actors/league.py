"""League: the snapshot population the learner trains against. Owns members, Elo ratings
and head-to-head results; answers each generator wave's matchmaking; keeps every member's
weights in the object store so generators load them through the broadcast path.
`League` is the plain class; `LeagueActor` its Ray shell."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import ray

from selfplay.config import LeagueConfig
from selfplay.files import write_atomic
from selfplay.league import (
    LEARNER,
    SELF,
    LeagueState,
    Member,
    assign_opponents,
    matchmaking_probs,
    skill_tier,
)
from selfplay.metrics import ray_metric

STATE_FILE = "league.json"
RNG_FILE = "league_rng.json"  # matchmaking's random state


def rng_state(saved: list):
    """random.Random's state from its JSON form (lists back to the tuples it wants)."""
    version, internal, gauss = saved
    return version, tuple(internal), gauss


class League:
    def __init__(self, cfg: LeagueConfig, seed: int, state: LeagueState | None = None):
        self.cfg = cfg
        self.state = state or LeagueState()
        self.rng = random.Random(seed)
        self.step = 0

    def matchmake(self, n_games: int) -> list[tuple[str, str, str]]:
        """(opponent, learner's skill tier, opponent's skill tier) for each game of a wave."""
        members = self.state.members
        ratings = [m.rating for m in members]
        probs = matchmaking_probs(
            self.cfg.mode,
            self.state.learner_rating,
            ratings,
            self.state.learner_scores(recent=self.cfg.pfsp_window > 0),
            self.cfg.pfsp_power,
            self.cfg.near_scale,
        )
        ids = assign_opponents(
            [m.id for m in members],
            probs,
            n_games,
            self.cfg.self_play_fraction,
            self.cfg.max_live_opponents,
            self.rng,
        )
        rating = {m.id: m.rating for m in members}
        out = []
        for opp in ids:
            diff = 0.0 if opp == SELF else rating[opp] - self.state.learner_rating
            out.append((opp, skill_tier(diff), skill_tier(-diff)))
        return out

    def record(self, results: list[tuple[str, str, float]]) -> None:
        """(game, member, learner's score) of finished learner-vs-member games: Elo of both."""
        for game, member, learner_score in results:
            self.state.record(
                LEARNER, member, learner_score, game, self.step, k=self.cfg.elo_k, window=self.cfg.pfsp_window
            )

    def latest(self) -> str | None:
        return self.state.members[-1].id if self.state.members else None


@ray.remote(num_cpus=0)
class LeagueActor:
    def __init__(
        self,
        cfg: LeagueConfig,
        seed: int,
        run_id: str,
        engine_dtype: str,
        resume_dir: str | None = None,
        run_dir: str | None = None,
    ):
        """`run_dir`: members' checkpoints under it are recorded relative to it, so a run
        directory that moved still resumes."""
        self.run_dir = Path(run_dir) if run_dir else None
        state = LeagueState.load(Path(resume_dir) / STATE_FILE) if resume_dir else None
        self.league = League(cfg, seed, state)
        if resume_dir and (Path(resume_dir) / RNG_FILE).exists():  # matchmaking goes on, not over
            self.league.rng.setstate(rng_state(json.loads((Path(resume_dir) / RNG_FILE).read_text())))
        self.engine_dtype = engine_dtype
        self.blobs: dict[str, ray.ObjectRef] = {}
        for m in self.league.state.members:  # resumed: weights again from each member's checkpoint
            self._restore_weights(m)
        self.elo = ray_metric("gauge", "league_elo", {"run": run_id}, ("player",))

    def _restore_weights(self, member: Member) -> None:
        """A resumed member's weights from its checkpoint, checked against the checksum the
        league recorded (one recorded in the older scheme is recognised, then replaced by
        today's, which the engines echo)."""
        from safetensors.torch import load as load_safetensors

        from selfplay.weights import export_checkpoint, same_weights

        path = Path(member.path)
        if not path.is_absolute() and self.run_dir is not None:
            path = self.run_dir / path
        blob, checksum = export_checkpoint(str(path), self.engine_dtype)
        if not same_weights(member.checksum, checksum, lambda: load_safetensors(blob)):
            raise RuntimeError(
                f"league member {member.id}: weights at {path} have checksum "
                f"{checksum}, the league recorded {member.checksum}; the snapshot changed"
            )
        member.checksum = checksum
        self.blobs[member.id] = ray.put(blob)

    def add_member(self, member: dict, blob: bytes) -> dict:
        path = Path(member["path"])
        if self.run_dir is not None and path.is_relative_to(self.run_dir.resolve()):
            member = {**member, "path": str(path.relative_to(self.run_dir.resolve()))}
        m = Member(**{**member, "rating": self.league.state.learner_rating, "created_at": time.time()})
        self.league.state.add_member(m, self.league.step)
        self.blobs[m.id] = ray.put(blob)
        return asdict(m)

    def weights(self, member_id: str) -> dict:
        """The member's weights as an object-store reference (wrapped in a list so Ray does
        not resolve it here), with the version and checksum the loader must echo."""
        m = self.league.state.member(member_id)
        return {"ref": [self.blobs[member_id]], "version": m.version, "checksum": m.checksum}

    def matchmake(self, n_games: int) -> list[tuple[str, str, str]]:
        return self.league.matchmake(n_games)

    def record(self, results: list[tuple[str, str, float]]) -> None:
        self.league.record(results)
        self.elo.set(self.league.state.learner_rating, tags={"player": LEARNER})

    def record_pair(self, a: str, b: str, wins: int, draws: int, losses: int, game: str) -> None:
        """Head-to-head between two members (e.g. a new snapshot vs the one before), unrated:
        the same games were already rated as the learner's."""
        for score, n in ((1.0, wins), (0.5, draws), (0.0, losses)):
            for _ in range(n):
                self.league.state.record(a, b, score, game, self.league.step, rate=False)

    def set_step(self, step: int) -> None:
        self.league.step = step

    def latest(self) -> str | None:
        return self.league.latest()

    def ratings(self) -> dict:
        """Learner and member Elo ratings (cheap: the full state carries every result)."""
        state = self.league.state
        return {"learner": state.learner_rating, "members": {m.id: m.rating for m in state.members}}

    def state(self) -> dict:
        return self.league.state.to_dict()

    def save(self, directory: str) -> None:
        self.league.state.save(Path(directory) / STATE_FILE)
        write_atomic(Path(directory) / RNG_FILE, json.dumps(self.league.rng.getstate()))
