"""Generator: plays many games at once on one vLLM engine. Every pending model turn of
every game goes into one engine call; scripted opponents move between calls. Finished
trajectories go to the verifier (and on to the buffer) without touching the driver."""
from __future__ import annotations

import functools
import random
import threading
import time
import uuid

import pyarrow as pa
import ray

from actors.engine import Engine
from selfplay import schema
from selfplay.config import GeneratorConfig, ModelConfig
from selfplay.games import make_game
from selfplay.games.tictactoe import SCRIPTED

LEARNER = "learner"


class Generator:
    def __init__(self, generator_id: str, run_id: str, game: str, model_path: str,
                 model_cfg: ModelConfig, gen_cfg: GeneratorConfig, seed: int, version: int = 0):
        self.id, self.run_id, self.game, self.cfg = generator_id, run_id, game, gen_cfg
        self.model_cfg, self.seed = model_cfg, seed
        self.engines = {LEARNER: Engine(model_path, model_cfg, gen_cfg, seed)}
        self.versions = {LEARNER: version}
        self.encode = functools.lru_cache(maxsize=1 << 16)(
            lambda text: tuple(self.engines[LEARNER].encode(text)))
        self.rng = random.Random(seed)
        self.checksum: str | None = None
        self.lock = threading.Lock()  # weights change only between engine calls
        self.counts = {"games": 0, "turns": 0, "tokens": 0, "engine_s": 0.0, "illegal": 0}

    @property
    def version(self) -> int:
        return self.versions[LEARNER]

    def add_opponent(self, name: str, model_path: str, version: int = 0) -> None:
        """Load another policy on its own engine; it can then sit at a seat by `name`.
        It must share the learner's tokenizer (prompts are encoded once)."""
        if name == LEARNER or name in SCRIPTED:
            raise ValueError(f"opponent name {name!r} is reserved")
        self.engines[name] = Engine(model_path, self.model_cfg, self.cfg, self.seed)
        self.versions[name] = version

    def set_weights(self, blob: bytes, version: int, policy: str = LEARNER) -> str:
        with self.lock:
            checksum = self.engines[policy].load_weights(blob)
            self.versions[policy] = version
        if policy == LEARNER:
            self.checksum = checksum
        return checksum

    def play(self, seats: list[tuple[str, str]], temperature: float) -> pa.Table:
        """Play one game per entry of `seats` (who sits as player 0 and 1: LEARNER, a
        scripted player's name or an added opponent's name) to the end; returns all turns.
        Pending turns of all games for the same policy go into one engine call."""
        games = [make_game(self.game, seed=self.rng.getrandbits(31)) for _ in seats]
        players = [[SCRIPTED[s](self.rng.getrandbits(31)) if s in SCRIPTED else None for s in pair]
                   for pair in seats]
        traj_ids = [uuid.uuid4().hex for _ in seats]
        turns: list[list[dict]] = [[] for _ in seats]
        while True:
            live = [i for i, g in enumerate(games) if not g.is_terminal]
            if not live:
                break
            model_turns: dict[str, list[int]] = {}
            for i in live:
                scripted = players[i][games[i].current_player]
                if scripted is None:
                    model_turns.setdefault(seats[i][games[i].current_player], []).append(i)
                    continue
                role, action = games[i].current_player, scripted.act(games[i])
                games[i].apply(action)
                turns[i].append(self._row(seats[i], role, (), (), [], games[i].action_text(action),
                                          False, self.versions, 0.0))
            for policy, idx in model_turns.items():
                self._model_moves(policy, games, seats, turns, idx, temperature)
        rows = []
        for i, g in enumerate(games):
            returns = g.returns()
            for t, row in enumerate(turns[i]):
                row.update(traj_id=traj_ids[i], seed=g.seed, turn=t, outcome=returns[row["role"]])
                rows.append(row)
        self.counts["games"] += len(games)
        return schema.from_rows(rows)

    def _model_moves(self, policy, games, seats, turns, idx: list[int], temperature: float) -> None:
        prompts = [list(self.encode(games[i].observation(games[i].current_player))) for i in idx]
        with self.lock:
            start = time.perf_counter()
            outs = self.engines[policy].generate(prompts, self.cfg.max_response_tokens, temperature)
            elapsed = time.perf_counter() - start
            versions = dict(self.versions)
        for i, prompt, out in zip(idx, prompts, outs):
            role = games[i].current_player
            legal = games[i].apply_text(out.text)
            turns[i].append(self._row(seats[i], role, prompt, out.token_ids, out.logprobs, out.text,
                                      not legal, versions, elapsed))
            self.counts["illegal"] += not legal
        self.counts["turns"] += len(idx)
        self.counts["tokens"] += sum(len(o.token_ids) for o in outs)
        self.counts["engine_s"] += elapsed

    def _row(self, seat_pair, role, prompt, response, logprobs, text, illegal, versions, elapsed) -> dict:
        mover, other = seat_pair[role], seat_pair[1 - role]
        is_learner = mover == LEARNER
        return {
            "run_id": self.run_id, "game": self.game, "role": role,
            "policy_id": mover, "policy_version": versions.get(mover, 0),
            "opponent_id": "self" if is_learner and other == LEARNER else other,
            "opponent_version": versions.get(other, 0),
            "prompt_ids": list(prompt), "response_ids": list(response),
            "behaviour_logprobs": list(logprobs), "response_text": text,
            "reward": None, "ret": None, "illegal": illegal, "trainable": is_learner,
            "generator_id": self.id, "gen_time_s": elapsed, "created_at": time.time(),
        }

    def self_play(self, n_games: int) -> pa.Table:
        return self.play([(LEARNER, LEARNER)] * n_games, self.cfg.temperature)

    def evaluate(self, opponent: str, n_games: int) -> dict:
        """Greedy policy vs a scripted or added opponent, n_games in each seat."""
        seats = [(LEARNER, opponent)] * n_games + [(opponent, LEARNER)] * n_games
        table = self.play(seats, temperature=0.0)
        return {"opponent": opponent, "version": self.version, **summarize(table)}


def summarize(table: pa.Table) -> dict:
    """Win/draw/loss/illegal rates of the learner's policy against a non-learner opponent,
    overall and per seat. A game counts even if the learner never moved (the opponent
    opened with an illegal move): its seat is read from the opponent's rows."""
    games: dict[str, dict] = {}
    for row in table.select(["traj_id", "role", "policy_id", "opponent_id", "outcome", "illegal"]).to_pylist():
        if row["policy_id"] == LEARNER:
            role, outcome, illegal = row["role"], row["outcome"], row["illegal"]
        elif row["opponent_id"] == LEARNER:  # two-player zero-sum: the learner got -outcome
            role, outcome, illegal = 1 - row["role"], -row["outcome"], False
        else:
            continue
        g = games.setdefault(row["traj_id"], {"role": role, "outcome": outcome, "illegal": False})
        g["illegal"] |= illegal
    stats: dict = {}
    for label, subset in (("", list(games.values())),
                          ("first_", [g for g in games.values() if g["role"] == 0]),
                          ("second_", [g for g in games.values() if g["role"] == 1])):
        n = max(len(subset), 1)
        stats[f"{label}games"] = len(subset)
        stats[f"{label}win"] = sum(g["outcome"] > 0 for g in subset) / n
        stats[f"{label}draw"] = sum(g["outcome"] == 0 for g in subset) / n
        stats[f"{label}loss"] = sum(g["outcome"] < 0 for g in subset) / n
        stats[f"{label}illegal"] = sum(g["illegal"] for g in subset) / n
    return stats


@ray.remote(max_concurrency=4)
class GeneratorActor:
    """Ray shell. `run` loops in one thread; `set_weights`, `evaluate` and `stats` are
    served from others and take the engine lock only between engine calls."""

    def __init__(self, generator_id: str, run_id: str, game: str, model_path: str,
                 model_cfg: ModelConfig, gen_cfg: GeneratorConfig, seed: int, version: int = 0):
        from ray.util import metrics
        self.gen = Generator(generator_id, run_id, game, model_path, model_cfg, gen_cfg, seed, version)
        self.running = False
        self.wait_s = 0.0
        tags = {"run": run_id, "generator": generator_id}
        self.tokens = metrics.Counter("selfplay_generator_tokens", tag_keys=tuple(tags))
        self.trajs = metrics.Counter("selfplay_generator_trajectories", tag_keys=tuple(tags))
        self.version_gauge = metrics.Gauge("selfplay_generator_weight_version", tag_keys=tuple(tags))
        for m in (self.tokens, self.trajs, self.version_gauge):
            m.set_default_tags(tags)

    def run(self, verifier, buffer, max_in_flight: int = 2) -> dict:
        self.running = True
        in_flight = []
        while self.running:
            if not ray.get(buffer.can_insert.remote()):
                start = time.perf_counter()
                time.sleep(0.05)  # the buffer is rate-limiting inserts: the learner is behind
                self.wait_s += time.perf_counter() - start
                continue
            tokens_before = self.gen.counts["tokens"]
            table = self.gen.self_play(self.gen.cfg.games_per_wave)
            self.tokens.inc(self.gen.counts["tokens"] - tokens_before)
            self.trajs.inc(self.gen.cfg.games_per_wave)
            in_flight.append(verifier.score.remote(schema.to_ipc(table)))
            if len(in_flight) >= max_in_flight:
                _, in_flight = ray.wait(in_flight, num_returns=1)
        ray.get(in_flight)
        return self.stats()

    def stop(self) -> None:
        self.running = False

    def set_weights(self, blob: bytes, version: int) -> str:
        checksum = self.gen.set_weights(blob, version)
        self.version_gauge.set(version)
        return checksum

    def evaluate(self, opponent: str, n_games: int) -> dict:
        return self.gen.evaluate(opponent, n_games)

    def self_play(self, n_games: int) -> bytes:
        return schema.to_ipc(self.gen.self_play(n_games))

    def stats(self) -> dict:
        return {"id": self.gen.id, "version": self.gen.version, "checksum": self.gen.checksum,
                "wait_s": self.wait_s, **self.gen.counts}
