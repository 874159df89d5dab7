"""Generator: plays many games at once on vLLM engines. Every pending model turn of every
game for the same policy goes into one engine call; scripted opponents move between calls.
League opponents sit in a bounded number of opponent engines (slots) whose weights are
swapped in place through the same path as the learner's broadcast. Finished trajectories
go to the verifier (and on to the buffer) without touching the driver."""
from __future__ import annotations

import functools
import random
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import ray

from actors.engine import Engine
from selfplay import schema
from selfplay.config import GeneratorConfig, ModelConfig
from selfplay.games import make_game, scripted_players
from selfplay.evals import game_points, kuhn_policy_table, outcomes, summarize
from selfplay.league import LEARNER, SELF, SKILL_TOKENS, scripted_tier
from selfplay.metrics import SECONDS, ray_metric


class WeightMismatch(RuntimeError):
    """An engine reports loading weights other than the ones sent."""


def slot_plan(loaded: list[str], needed: set[str], capacity: int) -> list[tuple[str, str | None]]:
    """Which members of `needed` to load, each with the loaded member whose engine it takes
    (None: a new engine). `loaded` is least recently used first; members in `needed` keep
    their engines."""
    if len(needed) > capacity:
        raise ValueError(f"a play needs {len(needed)} league opponents but a generator holds "
                         f"{capacity} (league.max_live_opponents)")
    spare = [m for m in loaded if m not in needed]
    free = capacity - len(loaded)
    plan = []
    for member in sorted(needed - set(loaded)):
        if free > 0:
            plan.append((member, None))
            free -= 1
        else:
            plan.append((member, spare.pop(0)))
    return plan


@dataclass(frozen=True)
class Match:
    game: str
    seats: tuple[str, str]  # who plays as player 0 and 1: LEARNER, a scripted player or an opponent
    tiers: tuple[str | None, str | None] = (None, None)  # skill prefix each seat's prompts get


def both_seats(game: str, opponent: str, n_games: int, tier: str | None = None) -> list[Match]:
    """n_games with the learner first and n_games with it second; `tier` prefixes the
    learner's prompts."""
    return ([Match(game, (LEARNER, opponent), (tier, None))] * n_games
            + [Match(game, (opponent, LEARNER), (None, tier))] * n_games)


class Generator:
    def __init__(self, generator_id: str, run_id: str, games: dict[str, float], model_path: str,
                 model_cfg: ModelConfig, gen_cfg: GeneratorConfig, seed: int, version: int = 0,
                 max_live_opponents: int = 2):
        self.id, self.run_id, self.cfg = generator_id, run_id, gen_cfg
        self.games, self.mix = list(games), list(games.values())
        self.model_path, self.model_cfg, self.seed = model_path, model_cfg, seed
        self.engines = {LEARNER: Engine(model_path, model_cfg, gen_cfg, seed)}
        self.versions = {LEARNER: version}
        self.encode = functools.lru_cache(maxsize=1 << 16)(
            lambda text: tuple(self.engines[LEARNER].encode(text)))
        self.rng = random.Random(seed)
        self.checksum: str | None = None
        self.lock = threading.Lock()  # weights change only between engine calls
        self.max_live = max_live_opponents
        self.slots: OrderedDict[str, Engine] = OrderedDict()  # league member -> engine, LRU first
        self.counts = {"games": 0, "turns": 0, "tokens": 0, "engine_s": 0.0, "illegal": 0,
                       "opponent_loads": 0}

    @property
    def version(self) -> int:
        return self.versions[LEARNER]

    def _check_name(self, name: str) -> None:
        if name in (LEARNER, SELF) or any(name in scripted_players(g) for g in self.games):
            raise ValueError(f"opponent name {name!r} is reserved")

    def add_opponent(self, name: str, model_path: str, version: int = 0) -> None:
        """Load a fixed policy from a directory on its own engine; it can then sit at a seat
        by `name`. It must share the learner's tokenizer (prompts are encoded once)."""
        self._check_name(name)
        self.engines[name] = Engine(model_path, self.model_cfg, self.cfg, self.seed)
        self.versions[name] = version

    def load_members(self, needed: set[str], fetch) -> None:
        """Make every member in `needed` sit in an opponent engine, fetching weights only for
        those not loaded: `fetch(member) -> (blob, version, checksum)`. Engines of members
        this play does not need are reused least recently used first; `needed` itself is
        never evicted. One member-using play at a time (GeneratorActor's member lock)."""
        with self.lock:
            for member in needed & set(self.slots):
                self.slots.move_to_end(member)
        for member, replaced in slot_plan(list(self.slots), needed, self.max_live):
            self._load_member(member, *fetch(member), replace=replaced)

    def _load_member(self, member_id: str, blob: bytes, version: int, checksum: str,
                     replace: str | None) -> None:
        """Load a member's weights in place into the engine of `replace` (a loaded member
        this play does not need), or into a new engine (None). The engine must echo
        `checksum`; `slot_plan` decides which."""
        self._check_name(member_id)
        with self.lock:
            if replace is None:
                engine = Engine(self.model_path, self.model_cfg, self.cfg, self.seed)
            else:
                engine = self.slots.pop(replace)
                self.versions.pop(replace, None)
            got = engine.load_weights(blob)
            if got != checksum:  # never seat a policy whose weights are not the member's
                engine.close()
                raise WeightMismatch(f"{self.id}: opponent {member_id} loaded weights {got}, "
                                     f"league recorded {checksum}")
            self.slots[member_id] = engine
            self.versions[member_id] = version
            self.counts["opponent_loads"] += 1

    def _engine(self, policy: str) -> Engine:
        if policy in self.slots:
            self.slots.move_to_end(policy)
            return self.slots[policy]
        if policy not in self.engines:
            raise KeyError(f"{self.id}: no engine for policy {policy!r}; load it first")
        return self.engines[policy]

    def set_weights(self, blob: bytes, version: int) -> str:
        with self.lock:
            checksum = self.engines[LEARNER].load_weights(blob)
            self.versions[LEARNER] = version
            self.checksum = checksum
        return checksum

    def play(self, matches: list[Match], temperature: float) -> pa.Table:
        """Play every match to the end; returns all turns. Pending turns of all games for the
        same policy go into one engine call."""
        games = [make_game(m.game, seed=self.rng.getrandbits(31)) for m in matches]
        players = [[scripted_players(m.game)[s](self.rng.getrandbits(31))
                    if s in scripted_players(m.game) else None for s in m.seats] for m in matches]
        traj_ids = [uuid.uuid4().hex for _ in matches]
        turns: list[list[dict]] = [[] for _ in matches]
        while True:
            live = [i for i, g in enumerate(games) if not g.is_terminal]
            if not live:
                break
            model_turns: dict[str, list[int]] = {}
            for i in live:
                scripted = players[i][games[i].current_player]
                if scripted is None:
                    model_turns.setdefault(matches[i].seats[games[i].current_player], []).append(i)
                    continue
                role, action = games[i].current_player, scripted.act(games[i])
                games[i].apply(action)
                turns[i].append(self._row(matches[i], role, (), (), [], games[i].action_text(action),
                                          False, self.versions, 0.0))
            for policy, idx in model_turns.items():
                self._model_moves(policy, games, matches, turns, idx, temperature)
        rows = []
        for i, g in enumerate(games):
            returns = g.returns()
            for t, row in enumerate(turns[i]):
                row.update(traj_id=traj_ids[i], seed=g.seed, turn=t, outcome=returns[row["role"]])
                rows.append(row)
        self.counts["games"] += len(games)
        return schema.from_rows(rows)

    def prompt(self, observation: str, tier: str | None) -> list[int]:
        prefix = SKILL_TOKENS[tier] if tier and self.cfg.skill_prompts else ""
        return list(self.encode(prefix + observation))

    def _model_moves(self, policy, games, matches, turns, idx: list[int], temperature: float) -> None:
        prompts = [self.prompt(games[i].observation(games[i].current_player),
                               matches[i].tiers[games[i].current_player]) for i in idx]
        limits = [min(self.cfg.max_response_tokens, getattr(games[i], "max_reply_chars", None)
                      or self.cfg.max_response_tokens) for i in idx]  # a token is at least one char
        with self.lock:
            engine = self._engine(policy)
            for i, prompt, limit in zip(idx, prompts, limits):
                if len(prompt) + limit > engine.max_model_len:
                    raise ValueError(f"{matches[i].game}: a prompt of {len(prompt)} tokens plus a {limit}-token reply "
                                     f"does not fit the model's context of {engine.max_model_len} (model.max_model_len)")
            start = time.perf_counter()
            outs = engine.generate(prompts, limits, temperature)
            elapsed = time.perf_counter() - start
            versions = dict(self.versions)
        for i, prompt, out in zip(idx, prompts, outs):
            role = games[i].current_player
            legal = games[i].apply_text(out.text)
            turns[i].append(self._row(matches[i], role, prompt, out.token_ids, out.logprobs, out.text,
                                      not legal, versions, elapsed))
            self.counts["illegal"] += not legal
        self.counts["turns"] += len(idx)
        self.counts["tokens"] += sum(len(o.token_ids) for o in outs)
        self.counts["engine_s"] += elapsed

    def _row(self, match, role, prompt, response, logprobs, text, illegal, versions, elapsed) -> dict:
        mover, other = match.seats[role], match.seats[1 - role]
        is_learner = mover == LEARNER
        return {
            "run_id": self.run_id, "game": match.game, "role": role,
            "policy_id": mover, "policy_version": versions.get(mover, 0),
            "opponent_id": SELF if is_learner and other == LEARNER else other,
            "opponent_version": versions.get(other, 0),
            "prompt_ids": list(prompt), "response_ids": list(response),
            "behaviour_logprobs": list(logprobs), "response_text": text,
            "reward": None, "ret": None, "illegal": illegal, "trainable": is_learner,
            "generator_id": self.id, "gen_time_s": elapsed, "created_at": time.time(),
        }

    def pick_game(self) -> str:
        return self.rng.choices(self.games, weights=self.mix)[0]

    def self_play(self, n_games: int) -> pa.Table:
        return self.league_play([(SELF, "intermediate", "intermediate")] * n_games)

    def league_play(self, assignments: list[tuple[str, str, str]]) -> pa.Table:
        """One game per (opponent, learner's tier, opponent's tier): SELF or a loaded league
        member, each game drawn from the mix, the learner's seat drawn at random."""
        matches = []
        for opponent, learner_tier, opponent_tier in assignments:
            if opponent == SELF:
                matches.append(Match(self.pick_game(), (LEARNER, LEARNER), (learner_tier, learner_tier)))
            elif self.rng.random() < 0.5:
                matches.append(Match(self.pick_game(), (LEARNER, opponent), (learner_tier, opponent_tier)))
            else:
                matches.append(Match(self.pick_game(), (opponent, LEARNER), (opponent_tier, learner_tier)))
        return self.play(matches, self.cfg.temperature)

    def evaluate(self, game: str, opponent: str, n_games: int, temperature: float = 0.0) -> dict:
        """The learner's policy (greedy by default) vs a scripted or loaded opponent,
        n_games in each seat."""
        table = self.play(both_seats(game, opponent, n_games, scripted_tier(opponent)), temperature)
        return {"game": game, "opponent": opponent, "version": self.version, **summarize(table)}

    def kuhn_policy(self) -> dict[str, list[float]]:
        """The learner's Kuhn poker policy at all 12 information states: its probability of
        each reply, renormalised over the legal ones (see kuhn_policy_table)."""
        def loglikelihood(observations: list[str], replies: list[str]) -> list[float]:
            prompts = [self.prompt(o, "intermediate") for o in observations]  # the self-play context
            conts = [list(self.encode(r))[len(self.encode("")):] for r in replies]
            with self.lock:
                return self.engines[LEARNER].loglikelihood(prompts, conts)
        return kuhn_policy_table(loglikelihood)

    def close(self) -> None:
        for engine in [*self.engines.values(), *self.slots.values()]:
            engine.close()


@ray.remote(max_concurrency=4)
class GeneratorActor:
    """Ray shell. `run` loops in one thread; `set_weights`, `evaluate` and `stats` are
    served from others and take the engine lock only between engine calls. With a league
    actor, each wave's opponents come from its matchmaking and every finished league game
    goes back to it for Elo."""

    def __init__(self, generator_id: str, run_id: str, games: dict[str, float], model_path: str,
                 model_cfg: ModelConfig, gen_cfg: GeneratorConfig, seed: int, version: int = 0,
                 max_live_opponents: int = 2):
        self.gen = Generator(generator_id, run_id, games, model_path, model_cfg, gen_cfg, seed, version,
                             max_live_opponents)
        self.stopped = threading.Event()  # set once by `stop`, even if it comes before `run` starts
        self.wait_s = 0.0
        self.sent = 0  # trajectories handed to the verifier
        self.member_lock = threading.Lock()  # held while loading members and playing them
        tags = {"run": run_id, "generator": generator_id}
        self.tokens = ray_metric("counter", "generator_tokens", tags)
        self.trajs = ray_metric("counter", "generator_trajectories", tags)
        self.version_gauge = ray_metric("gauge", "generator_weight_version", tags)
        self.load_seconds = ray_metric("histogram", "generator_weight_load_seconds", tags, boundaries=SECONDS)

    def run(self, verifier, buffer, league=None, max_in_flight: int = 2) -> dict:
        """Play waves until `stop`: the wave under way is finished and handed on, and every
        verifier call has returned before this does, so a stopped generator loses no game.
        A generator plays one run in its life; after `stop`, this returns at once."""
        in_flight = []
        n = self.gen.cfg.games_per_wave
        while not self.stopped.is_set():
            if not ray.get(buffer.can_insert.remote()):
                start = time.perf_counter()
                time.sleep(0.05)  # the buffer is rate-limiting inserts: the learner is behind
                self.wait_s += time.perf_counter() - start
                continue
            tokens_before = self.gen.counts["tokens"]
            if league is None:
                table = self.gen.self_play(n)
            else:
                assignments = ray.get(league.matchmake.remote(n))
                with self.member_lock:
                    self._load_members(league, {a[0] for a in assignments} - {SELF})
                    table = self.gen.league_play([tuple(a) for a in assignments])
                self._report(league, table)
            self.tokens.inc(self.gen.counts["tokens"] - tokens_before)
            games = len(pc.unique(table["traj_id"]))
            self.trajs.inc(games)
            in_flight.append(verifier.verify.remote(schema.to_ipc(table)))
            self.sent += games
            if len(in_flight) >= max_in_flight:
                done, in_flight = ray.wait(in_flight, num_returns=1)
                ray.get(done)  # a failed verifier call stops this generator rather than losing games
        ray.get(in_flight)
        return self.stats()

    def _load_members(self, league, members: set[str]) -> None:
        """Fetch missing members' weights from the league's object-store copy (the
        broadcast path) into opponent engines; each load's checksum is verified."""
        def fetch(member: str) -> tuple[bytes, int, str]:
            info = ray.get(league.weights.remote(member))
            return ray.get(info["ref"][0]), info["version"], info["checksum"]
        self.gen.load_members(members, fetch)

    def _report(self, league, table: pa.Table) -> None:
        results = [(g["game"], g["opponent"], game_points(g["outcome"])) for g in outcomes(table)
                   if g["opponent"] != SELF]
        if results:
            league.record.remote(results)

    def stop(self) -> None:
        self.stopped.set()

    def set_weights(self, blob: bytes, version: int) -> str:
        start = time.perf_counter()
        checksum = self.gen.set_weights(blob, version)
        self.load_seconds.observe(time.perf_counter() - start)
        self.version_gauge.set(version)
        return checksum

    def evaluate(self, game: str, opponent: str, n_games: int) -> dict:
        return self.gen.evaluate(game, opponent, n_games)

    def kuhn_policy(self) -> dict:
        return self.gen.kuhn_policy()

    def head_to_head(self, league, member: str, n_games: int) -> dict:
        """The current policy (sampling at the training temperature) against league
        `member`, n_games per game of the mix and seat; results also go to the league."""
        matches = [m for game in self.gen.games for m in both_seats(game, member, n_games)]
        with self.member_lock:
            self._load_members(league, {member})
            table = self.gen.play(matches, self.gen.cfg.temperature)  # all games in one batch
        self._report(league, table)
        return {game: summarize(table.filter(pc.equal(table["game"], game))) for game in self.gen.games}

    def self_play(self, n_games: int) -> bytes:
        return schema.to_ipc(self.gen.self_play(n_games))

    def stats(self) -> dict:
        return {"id": self.gen.id, "version": self.gen.version, "checksum": self.gen.checksum,
                "wait_s": self.wait_s, "sent": self.sent, "members": list(self.gen.slots),
                "node_id": ray.get_runtime_context().get_node_id(), **self.gen.counts}
