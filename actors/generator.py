"""Generator: plays many games at once on policy engines. Every pending model turn of every
game for the same policy goes into one engine call; scripted opponents move between calls.
League opponents sit in a bounded number of opponent engines (slots) whose weights are
swapped in place through the same path as the learner's broadcast. Finished trajectories
go to the verifier (and on to the buffer) without touching the driver.

The plain `Generator` is handed its engines (the learner's, and a factory for opponents'),
as `load_members` is handed `fetch`: runs give it vLLM engines (`Generator.from_model`),
tests a scripted one (tests/engines.py). `GeneratorActor` is the Ray shell."""

from __future__ import annotations

import functools
import random
import threading
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from actors.engine import Engine, EngineFactory, PolicyEngine
from selfplay import schema
from selfplay.builder import curriculum_accepts, curriculum_weights, update_hard_pool, update_learnability
from selfplay.config import GeneratorConfig, ModelConfig, TaskConfig
from selfplay.evals import (
    game_points,
    judge_summary,
    kuhn_pairs,
    kuhn_policy_table,
    outcomes,
    selection_summary,
    summarize,
    task_summary,
)
from selfplay.games import make_game, scripted_players
from selfplay.league import BLUNDER, LEARNER, OPENING, SELF, SKILL_TOKENS, scripted_tier
from selfplay.metrics import SECONDS, ray_metric
from selfplay.tasks import gold_judge, reply_tokens, task_of
from selfplay.tasks.base import Score, ScoreCache, role_prompts
from selfplay.tasks.judges import SELF_JUDGE, mean_points, rating_prompt, scored_pair
from selfplay.tasks.refine import chain_summary


class WeightMismatch(RuntimeError):
    """An engine reports loading weights other than the ones sent."""


def slot_plan(loaded: list[str], needed: set[str], capacity: int) -> list[tuple[str, str | None]]:
    """Which members of `needed` to load, each with the loaded member whose engine it takes
    (None: a new engine). `loaded` is least recently used first; members in `needed` keep
    their engines."""
    if len(needed) > capacity:
        raise ValueError(
            f"a play needs {len(needed)} league opponents but a generator holds "
            f"{capacity} (league.max_live_opponents)"
        )
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


def check_fits(game: str, prompt_tokens: int, reply_tokens: int, max_model_len: int) -> None:
    """Refuse a turn before the engine call rather than let vLLM reject it mid-wave."""
    if prompt_tokens + reply_tokens > max_model_len:
        raise ValueError(
            f"{game}: a prompt of {prompt_tokens} tokens plus a {reply_tokens}-token reply "
            f"does not fit the model's context of {max_model_len} (model.max_model_len)"
        )


@dataclass(frozen=True)
class Match:
    game: str
    seats: tuple[str, str]  # who plays as player 0 and 1: LEARNER, a scripted player or an opponent
    tiers: tuple[str | None, str | None] = (None, None)  # skill prefix each seat's prompts get


FIXED = "fixed"  # the engine holding weights frozen for an evaluation (see Generator.load_fixed)
# per play, for training or evaluation; too_long: games ended unplayed because a prompt outgrew
# the context (SPIRAL ends them as draws; here they are dropped, never handed on, and counted)
CURRICULUM_DRAWS = 1000  # a new problem's draws by task.curriculum, at most (1 / floor expected)
COUNTED = ("games", "turns", "tokens", "engine_s", "illegal", "too_long")


def both_seats(
    game: str, opponent: str, n_games: int, tier: str | None = None, policy: str = LEARNER
) -> list[Match]:
    """n_games with `policy` first and n_games with it second; `tier` prefixes its prompts."""
    return [Match(game, (policy, opponent), (tier, None))] * n_games + [
        Match(game, (opponent, policy), (None, tier))
    ] * n_games


def grouped(items: list, n: int) -> list[list]:
    """`items` cut into n equal runs in order: each of n problems' replies, where every
    problem's replies follow each other (an empty list for each when `items` is empty)."""
    size = len(items) // max(n, 1)
    return [items[i * size : (i + 1) * size] for i in range(n)]


@dataclass
class GameInPlay:
    """One game of a `play` call: its match, its state, the scripted player at each seat
    (None where a policy engine moves), its trajectory id and its turns so far."""

    match: Match
    state: Any  # a game from make_game
    scripted: list  # per seat
    traj_id: str
    turns: list[dict] = field(default_factory=list)
    too_long: bool = False  # a prompt outgrew the context: ended, dropped
    blunder_at: int | None = None  # the turn that is a random move (generator.blunder_share)

    def blunders_now(self) -> bool:
        """Whether this turn is its random move. Against a scripted player only that player
        blunders (the learner's turns there all train): a learner's turn passes it on."""
        if self.blunder_at != len(self.turns):
            return False
        if self.mover == LEARNER and any(p is not None for p in self.scripted):
            self.blunder_at += 1
            return False
        return True

    def untrain_blunderer(self) -> None:
        """The seat that blundered (if any) trains on none of its turns of this game."""
        blundered = {row["role"] for row in self.turns if row["policy_id"] == BLUNDER}
        for row in self.turns:
            if row["role"] in blundered:
                row["trainable"] = False

    @property
    def over(self) -> bool:
        return self.too_long or self.state.is_terminal

    @property
    def role(self) -> int:
        return self.state.current_player

    @property
    def mover(self) -> str:
        return self.match.seats[self.role]

    def rows(self) -> list[dict]:
        """The finished game's turns, each with its trajectory, order and final outcome."""
        returns = self.state.returns()
        return [
            {
                **row,
                "traj_id": self.traj_id,
                "seed": self.state.seed,
                "turn": t,
                "outcome": returns[row["role"]],
            }
            for t, row in enumerate(self.turns)
        ]


class Generator:
    def __init__(
        self,
        generator_id: str,
        run_id: str,
        games: dict[str, float],
        engine: PolicyEngine,
        new_engine: EngineFactory,
        gen_cfg: GeneratorConfig,
        seed: int,
        version: int = 0,
        max_live_opponents: int = 2,
        task_cfg: TaskConfig | None = None,
        prompt_seeds: list[int] | None = None,
    ):
        """`engine` serves the learner's policy; `new_engine(model_path)` makes opponents'
        engines (`add_opponent`, and league slots with None). All share `engine`'s tokenizer.
        With a `task_cfg` naming a task, waves sample the task's prompts (`task_play`): new
        train problems, or only those of `prompt_seeds` (task.prompts sft: the supervised
        stage's problems)."""
        self.id = generator_id
        self.run_id = run_id
        self.cfg = gen_cfg
        self.games = list(games)
        self.mix = list(games.values())
        self.new_engine = new_engine
        self.engines = {LEARNER: engine}
        self.versions = {LEARNER: version}
        self.encode = functools.lru_cache(maxsize=1 << 16)(lambda text: tuple(engine.encode(text)))
        self.rng = random.Random(seed)
        self.checksum: str | None = None
        self.lock = threading.Lock()  # weights change only between engine calls
        self.max_live = max_live_opponents
        self.slots: OrderedDict[str, PolicyEngine] = OrderedDict()  # league member -> engine, LRU first
        # engines whose member load failed or was refused, unseated and reused by the next
        # load: never closed while others live, since closing an engine made in this process
        # tears down vLLM's process-wide parallel state, and every other engine here fails
        # at its next call (`close` ends them all together)
        self.spares: list[PolicyEngine] = []
        self.counts = {**dict.fromkeys(COUNTED, 0), "opponent_loads": 0}  # training play
        self.eval_counts = dict.fromkeys(COUNTED, 0)  # evaluations and promotion matches
        self.fixed_checksum: str | None = None
        self.task_cfg = task_cfg
        self.task = task_of(task_cfg) if task_cfg and task_cfg.name else None
        self.score = ScoreCache(self.task.score) if self.task is not None else None  # evaluations
        self.gold = gold_judge(task_cfg) if self.task is not None else None  # the hacking monitor's
        self.hard: list[int] = []  # the hard-prompt pool's problem seeds (task runs)
        # task.curriculum learnability: each difficulty class's (groups seen, learnability)
        self.learnability: dict[str, tuple[int, float]] = {}
        self.prompt_seeds = prompt_seeds or []
        self.held_out: list | None = None  # the task's held-out problems, once an evaluation drew them
        if self.task is not None:
            self.counts["hard_prompts"] = 0  # prompts drawn again from it
            self.counts["screened_out"] = 0  # problems task.screen_samples found uniform
            self.counts["curriculum_skipped"] = 0  # draws task.curriculum passed over

    @classmethod
    def from_model(
        cls,
        generator_id: str,
        run_id: str,
        games: dict[str, float],
        model_path: str,
        model_cfg: ModelConfig,
        gen_cfg: GeneratorConfig,
        seed: int,
        version: int = 0,
        max_live_opponents: int = 2,
        task_cfg: TaskConfig | None = None,
        prompt_seeds: list[int] | None = None,
    ) -> Generator:
        """A generator on vLLM engines: the learner's and league slots' on `model_path`,
        `add_opponent`'s on the opponent's directory."""

        def new_engine(path: str | None) -> Engine:
            return Engine(path or model_path, model_cfg, gen_cfg, seed)

        return cls(
            generator_id,
            run_id,
            games,
            new_engine(None),
            new_engine,
            gen_cfg,
            seed,
            version,
            max_live_opponents,
            task_cfg,
            prompt_seeds,
        )

    @property
    def version(self) -> int:
        return self.versions[LEARNER]

    def _check_name(self, name: str) -> None:
        if name in (LEARNER, SELF, FIXED) or any(name in scripted_players(g) for g in self.games):
            raise ValueError(f"opponent name {name!r} is reserved")

    def add_opponent(self, name: str, model_path: str, version: int = 0) -> None:
        """Load a fixed policy from a directory on its own engine; it can then sit at a seat
        by `name`. It must share the learner's tokenizer (prompts are encoded once)."""
        self._check_name(name)
        self.engines[name] = self.new_engine(model_path)
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

    def _load_member(
        self, member_id: str, blob: bytes, version: int, checksum: str, replace: str | None
    ) -> None:
        """Load a member's weights in place into the engine of `replace` (a loaded member
        this play does not need), or into a new engine (None). The engine must echo
        `checksum`; `slot_plan` decides which."""
        self._check_name(member_id)
        with self.lock:
            if replace is not None:
                engine = self.slots.pop(replace)
                self.versions.pop(replace, None)
            else:
                engine = self.spares.pop() if self.spares else self.new_engine(None)
            try:
                got = engine.load_weights(blob)
            except BaseException:
                self.spares.append(engine)  # not dropped: its finalizer would close it
                raise
            if got != checksum:  # never seat a policy whose weights are not the member's
                self.spares.append(engine)
                raise WeightMismatch(
                    f"{self.id}: opponent {member_id} loaded weights {got}, league recorded {checksum}"
                )
            self.slots[member_id] = engine
            self.versions[member_id] = version
            self.counts["opponent_loads"] += 1

    def _engine(self, policy: str) -> PolicyEngine:
        if policy in self.slots:
            self.slots.move_to_end(policy)
            return self.slots[policy]
        if policy not in self.engines:
            raise KeyError(f"{self.id}: no engine for policy {policy!r}; load it first")
        return self.engines[policy]

    def _load_learner(self, load: Callable[[PolicyEngine], str], version: int) -> str:
        """`load(engine)` on the learner's engine between engine calls; it becomes `version`."""
        with self.lock:
            checksum = load(self.engines[LEARNER])
            self.versions[LEARNER] = version
            self.checksum = checksum
        return checksum

    def set_weights(self, blob: bytes, version: int) -> str:
        return self._load_learner(lambda engine: engine.load_weights(blob), version)

    def receive_collective(self, sync: dict, version: int) -> str:
        """Take a collective broadcast's tensors (`sync`: {address, prefix, rank, world,
        entries, plan, timeout_s}, selfplay/collective.py) while the engine plays on, then
        load them between engine calls; returns their checksum. A broadcast that fails
        raises before the engine is touched."""
        from selfplay import collective  # torch: the controller imports this module too

        tensors = collective.receive(**sync)
        return self._load_learner(lambda engine: engine.load_tensors(tensors), version)

    def load_fixed(self, blob: bytes, version: int, checksum: str) -> None:
        """Hold these weights, unchanged by broadcasts, in the FIXED engine (made on first
        use), so an evaluation measures one policy even while training goes on. The engine
        must echo `checksum`."""
        with self.lock:
            if FIXED not in self.engines:
                self.engines[FIXED] = self.new_engine(None)
            self.fixed_checksum = None  # until these weights are in, whatever it held is not
            got = self.engines[FIXED].load_weights(blob)
            if got != checksum:
                raise WeightMismatch(
                    f"{self.id}: the evaluation engine loaded weights {got}, sent {checksum}"
                )
            self.versions[FIXED] = version
            self.fixed_checksum = checksum

    def policy_for(self, weights: dict | None, fetch) -> str:
        """The engine to measure `weights` on ({version, checksum, settled?}, the learner's
        `current_weights` or `settle`; `fetch()` returns their bytes): None, the learner's
        engine as it is; settled weights the learner's engine holds, that engine (nothing
        trains while a settled evaluation runs, so no broadcast lands: `check_settled`
        proves it after); any others, the FIXED engine, loaded only if it holds others."""
        if weights is None:
            return LEARNER
        wanted = (weights["checksum"], weights["version"])
        if weights.get("settled") and (self.checksum, self.versions[LEARNER]) == wanted:
            return LEARNER
        if (self.fixed_checksum, self.versions.get(FIXED)) != wanted:
            self.load_fixed(fetch(), weights["version"], weights["checksum"])
        return FIXED

    def check_settled(self, weights: dict | None, policy: str) -> None:
        """After measuring settled `weights` on the learner's engine: it still holds them."""
        if weights is not None and policy == LEARNER:
            if (self.checksum, self.versions[LEARNER]) != (weights["checksum"], weights["version"]):
                raise WeightMismatch(
                    f"{self.id}: weights of version {self.versions[LEARNER]} landed while version "
                    f"{weights['version']}, said to be settled, was measured"
                )

    def play(
        self,
        matches: list[Match],
        temperature: float,
        counts: dict | None = None,
        training: bool = False,
        rng: random.Random | None = None,
    ) -> pa.Table:
        """Play every match to the end; returns all turns. Pending turns of all games for the
        same policy go into one engine call; scripted players move between calls. What it
        cost goes to `counts` (default: the training counts). `training`: the games get
        what only training games get, random opening moves (`_open`), blunders
        (`_plan_blunders`) and symmetric views of the board (`generator.board_symmetries`).
        `rng`: what deals the games and seeds their scripted players (default: this
        generator's draws)."""
        counts = self.counts if counts is None else counts
        games = self._deal(matches, training and self.cfg.board_symmetries, rng or self.rng)
        if training and self.cfg.opening_moves:
            self._open(games, self.cfg.opening_moves)
        if training and self.cfg.blunder_share:
            self._plan_blunders(games)
        while live := [g for g in games if not g.over]:
            waiting: dict[str, list[GameInPlay]] = {}  # policy -> its games awaiting a reply
            for g in live:
                player = g.scripted[g.role]
                if g.blunders_now():
                    self._blunder(g)
                elif player is None:
                    waiting.setdefault(g.mover, []).append(g)
                else:
                    self._scripted_move(g, player)
            for policy, batch in waiting.items():
                self._model_moves(policy, batch, temperature, counts)
        played = [g for g in games if not g.too_long]
        for g in played:
            if g.blunder_at is not None:
                g.untrain_blunderer()
        counts["games"] += len(played)
        counts["too_long"] += len(games) - len(played)
        return schema.from_rows([row for g in played for row in g.rows()])

    def _deal(self, matches: list[Match], symmetric_views: bool, rng: random.Random) -> list[GameInPlay]:
        """A new game per match, drawn from `rng`. Draw order (kept so a seed gives the same
        games): every game's seed, then each match's scripted players seat by seat."""
        seeds = [rng.getrandbits(31) for _ in matches]
        return [
            GameInPlay(
                m, make_game(m.game, s, symmetric_views), self._scripted_players(m, rng), uuid.uuid4().hex
            )
            for m, s in zip(matches, seeds)
        ]

    def _open(self, games: list[GameInPlay], moves: int) -> None:
        """`generator.opening_moves`: each game, with probability `opening_share`, starts with
        `moves` uniformly random legal moves (the game's `random` player) whoever is to move,
        exploring starts; those turns are not trained (policy_id OPENING). With
        `opening_moves_min` set, each opened game draws its count from min..`moves`."""
        low = self.cfg.opening_moves_min or moves
        for g in games:
            if self.rng.random() >= self.cfg.opening_share:
                continue
            player = self._random_player(g)
            count = moves if low == moves else self.rng.randint(low, moves)
            for _ in range(count):
                if g.over:
                    break
                self._random_move(g, player, OPENING)

    def _plan_blunders(self, games: list[GameInPlay]) -> None:
        """`generator.blunder_share`: which games get a random move after the opening, and
        at which turn (uniform over the next `blunder_plies`). Games against league members
        get none: their results rate the members (Elo, PFSP)."""
        for g in games:
            if self.rng.random() >= self.cfg.blunder_share:
                continue
            if any(s != LEARNER and g.scripted[i] is None for i, s in enumerate(g.match.seats)):
                continue
            g.blunder_at = len(g.turns) + self.rng.randint(1, self.cfg.blunder_plies)

    def _blunder(self, g: GameInPlay) -> None:
        """A uniformly random legal move for whoever is to move, trained by no one; where the
        learner's seat made it (self-play), that seat's other turns of the game are not
        trained either (their returns would carry a move the policy did not choose; marked at
        the end of play, `GameInPlay.untrain_blunderer`)."""
        self._random_move(g, self._random_player(g), BLUNDER)

    def _random_player(self, g: GameInPlay):
        """The game's `random` player, seeded from this generator's draws."""
        return scripted_players(g.match.game)["random"](self.rng.getrandbits(31))

    def _random_move(self, g: GameInPlay, player, policy_id: str) -> None:
        """A move by `player` that is no one's play (OPENING, BLUNDER): not trained."""
        self._scripted_move(g, player)
        g.turns[-1].update(policy_id=policy_id, policy_version=0, trainable=False)

    def _scripted_players(self, match: Match, rng: random.Random) -> list:
        scripted = scripted_players(match.game)
        return [scripted[s](rng.getrandbits(31)) if s in scripted else None for s in match.seats]

    def _scripted_move(self, g: GameInPlay, player) -> None:
        role = g.role
        action = player.act(g.state)
        text = g.state.action_text(action)  # as this turn shows the board (a symmetric view)
        g.state.apply(action)
        g.turns.append(self._row(g.match, role, text=text, versions=self.versions))

    def prompt(self, observation: str, tier: str | None) -> list[int]:
        prefix = SKILL_TOKENS[tier] if tier and self.cfg.skill_prompts else ""
        return list(self.encode(prefix + observation))

    def _reply_limit(self, game) -> int:
        # a token is at least one character, so a game's longest reply bounds its tokens
        return min(
            self.cfg.max_response_tokens,
            getattr(game, "max_reply_chars", None) or self.cfg.max_response_tokens,
        )

    def _model_moves(self, policy: str, batch: list[GameInPlay], temperature: float, counts: dict) -> None:
        """One engine call for every game in `batch`, all awaiting `policy`'s reply. A game
        whose prompt and reply would not fit the context ends here (`too_long`)."""
        with self.lock:
            context = self._engine(policy).max_model_len
        prompts, limits, fits = [], [], []
        for g in batch:
            prompt = self.prompt(g.state.observation(g.role), g.match.tiers[g.role])
            limit = self._reply_limit(g.state)
            if len(prompt) + limit > context:
                g.too_long = True
                continue
            prompts.append(prompt)
            limits.append(limit)
            fits.append(g)
        if not fits:
            return
        batch = fits
        names = [g.match.game for g in batch]
        allowed = [self.move_tokens(g) for g in batch] if self.cfg.legal_moves_only else None
        outs, elapsed, versions = self._generate(policy, names, prompts, limits, temperature, counts, allowed)
        for i, (g, prompt, out) in enumerate(zip(batch, prompts, outs)):
            role = g.role
            legal = g.state.apply_text(out.text)
            g.turns.append(
                self._row(
                    g.match,
                    role,
                    prompt=prompt,
                    response=out.token_ids,
                    logprobs=out.logprobs,
                    text=out.text,
                    illegal=not legal,
                    versions=versions,
                    elapsed=elapsed,
                    allowed=allowed and allowed[i],
                )
            )
            counts["illegal"] += not legal

    def move_tokens(self, g: GameInPlay) -> list[int]:
        """The token of each legal move at `g`'s position (`generator.legal_moves_only`): the
        engine may draw only these. A move whose text is not one token is refused by name."""
        tokens = []
        for action in g.state.legal_actions():
            text = g.state.action_text(action)
            ids = self.continuation(text)
            if len(ids) != 1:
                raise ValueError(
                    f"generator.legal_moves_only: {g.match.game}'s move {text!r} is {len(ids)} tokens; "
                    "masking needs one-token moves"
                )
            tokens.append(ids[0])
        return tokens

    def _generate(
        self,
        policy: str,
        names: list[str],
        prompts: list[list[int]],
        limits: list[int],
        temperature: float,
        counts: dict,
        allowed: list[list[int]] | None = None,
    ) -> tuple[list, float, dict[str, int]]:
        """One engine call of `policy` under the engine lock, each prompt first checked
        against the context (`names`: its game or task, for the error; `allowed`: each
        prompt's only tokens, legal-move masking); what it cost goes to `counts`. Returns
        (completions, engine seconds, the weight versions that made them)."""
        with self.lock:
            engine = self._engine(policy)
            for name, prompt, limit in zip(names, prompts, limits):
                check_fits(name, len(prompt), limit, engine.max_model_len)
            start = time.perf_counter()
            outs = engine.generate(prompts, limits, temperature, allowed=allowed)
            elapsed = time.perf_counter() - start
            versions = dict(self.versions)  # the weights that made `outs`
        counts["turns"] += len(outs)
        counts["tokens"] += sum(len(o.token_ids) for o in outs)
        counts["engine_s"] += elapsed
        return outs, elapsed, versions

    def _row(
        self,
        match: Match,
        role: int,
        *,
        text: str,
        versions: dict[str, int],
        prompt=(),
        response=(),
        logprobs=(),
        illegal: bool = False,
        elapsed: float = 0.0,
        allowed: list[int] | None = None,
    ) -> dict:
        """One turn by seat `role` of `match`; a scripted move has no tokens and no engine
        time. traj_id, seed, turn and outcome are added when the game ends (GameInPlay.rows)."""
        mover, other = match.seats[role], match.seats[1 - role]
        is_learner = mover == LEARNER
        return {
            "run_id": self.run_id,
            "game": match.game,
            "role": role,
            "policy_id": mover,
            "policy_version": versions.get(mover, 0),
            "opponent_id": SELF if is_learner and other == LEARNER else other,
            "opponent_version": versions.get(other, 0),
            "prompt_ids": list(prompt),
            "response_ids": list(response),
            "behaviour_logprobs": list(logprobs),
            "response_text": text,
            "reward": None,
            "ret": None,
            "illegal": illegal,
            "trainable": is_learner,
            "generator_id": self.id,
            "gen_time_s": elapsed,
            "created_at": time.time(),
            "allowed_ids": allowed or None,
        }

    def pick_game(self) -> str:
        return self.rng.choices(self.games, weights=self.mix)[0]

    def self_play(self, n_games: int) -> pa.Table:
        return self.league_play([(SELF, "intermediate", "intermediate")] * n_games)

    def league_play(self, assignments: list[tuple[str, str, str]]) -> pa.Table:
        """One game per (opponent, learner's tier, opponent's tier): SELF or a loaded league
        member, each game drawn from the mix, the learner's seat drawn at random."""
        matches = []
        for opponent, learner_tier, opponent_tier in self._with_scripted(assignments):
            if opponent == SELF:
                matches.append(Match(self.pick_game(), (LEARNER, LEARNER), (learner_tier, learner_tier)))
            elif self.rng.random() < 0.5:
                matches.append(Match(self.pick_game(), (LEARNER, opponent), (learner_tier, opponent_tier)))
            else:
                matches.append(Match(self.pick_game(), (opponent, LEARNER), (opponent_tier, learner_tier)))
        return self.play(matches, self.cfg.temperature, training=True)

    def _with_scripted(self, assignments: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """`generator.opponents`: each game goes to a scripted player with its share of
        probability (one draw per game, and none when no opponents are configured, so the
        seeds of a self-play run stay as they were), else keeps its assignment."""
        shares = self.cfg.opponents
        if not shares:
            return assignments
        out = []
        for a in assignments:
            u, name = self.rng.random(), None
            for candidate, share in shares.items():
                if u < share:
                    name = candidate
                    break
                u -= share
            out.append(a if name is None else (name, scripted_tier(name), None))
        return out

    def evaluate(
        self,
        game: str,
        opponent: str,
        n_games: int,
        temperature: float = 0.0,
        policy: str = LEARNER,
        seed: str | None = None,
    ) -> dict:
        """`policy` (the learner's engine, or FIXED) greedy by default vs a scripted or
        loaded opponent, n_games in each seat; `version` is the weights measured. `seed`:
        the games' deals and the scripted players' draws come from it (the same games every
        time), else from this generator's draws."""
        matches = both_seats(game, opponent, n_games, scripted_tier(opponent), policy)
        too_long = self.eval_counts["too_long"]
        table = self.play(
            matches, temperature, self.eval_counts, rng=None if seed is None else random.Random(seed)
        )
        return {
            "game": game,
            "opponent": opponent,
            "version": self.versions[policy],
            "too_long": self.eval_counts["too_long"] - too_long,  # left out of the rates
            **summarize(table, policy),
        }

    def head_to_head(self, member: str, n_games: int, policy: str = LEARNER) -> tuple[pa.Table, dict]:
        """`policy` sampling at the training temperature against a loaded league `member`,
        n_games per game of the mix and seat, all in one batch: the table and a summary
        per game."""
        matches = [m for game in self.games for m in both_seats(game, member, n_games, policy=policy)]
        table = self.play(matches, self.cfg.temperature, self.eval_counts)
        per_game = {g: summarize(table.filter(pc.equal(table["game"], g)), policy) for g in self.games}
        return table, per_game

    def kuhn_policy(self, policy: str = LEARNER) -> dict[str, list[float]]:
        """`policy`'s Kuhn poker policy at all 12 information states, as it samples them (at
        the training temperature): its probability of each reply, renormalised over the
        legal ones (see kuhn_policy_table); `version` is the weights measured."""

        def loglikelihood(observations: list[str], replies: list[str]) -> list[float]:
            prompts = [self.kuhn_prompt(o) for o in observations]
            conts = [self.continuation(r) for r in replies]
            with self.lock:
                return self.engines[policy].loglikelihood(prompts, conts)

        return {**kuhn_policy_table(loglikelihood, self.cfg.temperature), "version": self.versions[policy]}

    def kuhn_prompt(self, observation: str) -> list[int]:
        """The prompt a Kuhn poker state is measured (and its average fitted) at: as in
        self-play, whose skill prefix (when on) is 'intermediate'."""
        return self.prompt(observation, "intermediate")

    def continuation(self, reply: str) -> list[int]:
        """`reply`'s tokens as they follow a prompt (the tokenizer's start tokens cut off)."""
        return list(self.encode(reply))[len(self.encode("")) :]

    def kuhn_inputs(self) -> list[tuple[str, int, list[int], list[int]]]:
        """What kuhn_policy asks the engine, as token ids: (info-state key, action, prompt,
        reply) for every reply of every state (learner/distill.py fits a model to them)."""
        return [(s.key, a, self.kuhn_prompt(s.observation), self.continuation(c)) for s, a, c in kuhn_pairs()]

    # -- tasks -------------------------------------------------------------------------------
    def task_play(self, n_prompts: int, opponent: str | None = None, judge: str = LEARNER) -> pa.Table:
        """n_prompts train problems, each sampled task.samples_per_prompt times in each of the
        task's roles (one group per problem, one engine call for all): one row per sample,
        unscored (the verifier scores). With a loaded league member as `opponent`
        (task.versus snapshot: competitive self-play), the member answers each prompt as
        many times, in the same group: its rows are not trainable (policy_id the member).
        With task.judge self, `judge` (the learner, or a loaded member: task.judge_weights
        snapshot) rates every reply."""
        k = self.task_cfg.samples_per_prompt
        seeds = [self._task_seed() for _ in range(n_prompts)]
        problems = [self.task.problem(s) for s in seeds]
        groups = [uuid.uuid4().hex for _ in problems]
        if getattr(self.task, "chain", False):
            return self._chain_play(seeds, problems, groups)
        if self.task_cfg.screen_samples:
            asked, outs, made = self._screened(problems)
        else:
            asked = [
                (i, role, text)
                for i, p in enumerate(problems)
                for role, text in enumerate(role_prompts(self.task, p))
                for _ in range(k)
            ]
            outs, elapsed, versions = self._sample([text for _, _, text in asked], self.cfg.temperature)
            made = [(elapsed, versions)] * len(outs)
        seats = [LEARNER] * len(asked)
        if opponent is not None:
            prompts = [text for _, _, text in asked]
            theirs, their_s, their_versions = self._sample(prompts, self.cfg.temperature, opponent)
            asked, outs, seats = asked * 2, outs + theirs, seats + [opponent] * len(theirs)
            made = [(e + their_s, {**v, opponent: their_versions[opponent]}) for e, v in made] * 2
        ratings = [None] * len(outs)
        if self.task_cfg.judge == "self":  # the policy rates every reply, its own and a member's
            ratings = self._rate([problems[i].prompt for i, _, _ in asked], [o.text for o in outs], judge)
        rows = []
        for (i, role, text), out, seat, rated, (elapsed, versions) in zip(asked, outs, seats, ratings, made):
            row = self._task_row(role, text, out, versions, elapsed, seeds[i], problems[i], groups[i])
            if rated is not None:  # the verifier rewards it (a reply left unrated is rejected)
                row["scores"] = {SELF_JUDGE: rated}
            if opponent is not None:  # each side's reply faces the other's
                other = opponent if seat == LEARNER else LEARNER
                row.update(opponent_id=other, opponent_version=versions[other])
            if seat != LEARNER:  # the member's reply: a candidate to compare, never trained on
                row.update(policy_id=seat, policy_version=versions[seat], trainable=False)
            rows.append(row)
        self.counts["games"] += len(rows)
        return schema.from_rows(rows)

    def _screened(self, problems: list) -> tuple[list, list, list]:
        """Selective prompting (SPEED, Zhang et al. 2025): task.screen_samples samples of each
        problem first, scored by the task's scorer here; only a problem whose screening
        totals differ gets the rest of its task.samples_per_prompt, in a second engine call.
        A problem the screen found uniform (all right or all wrong: no signal under a group
        baseline) keeps its few samples as a group of their own, which the variance filter
        holds back, so every sample generated is counted where the others are. Returns
        (asked (problem, role, prompt), completions, (engine seconds, versions) of each)."""
        k, screen = self.task_cfg.samples_per_prompt, self.task_cfg.screen_samples
        asked = [(i, 0, p.prompt) for i, p in enumerate(problems) for _ in range(screen)]
        outs, elapsed, versions = self._sample([text for _, _, text in asked], self.cfg.temperature)
        made = [(elapsed, versions)] * len(outs)
        totals: dict[int, set] = defaultdict(set)
        for (i, _, _), out in zip(asked, outs):
            totals[i].add(self.score(problems[i].prompt, out.text, problems[i].reference).total)
        rest = [
            (i, 0, p.prompt) for i, p in enumerate(problems) if len(totals[i]) > 1 for _ in range(k - screen)
        ]
        self.counts["screened_out"] += len(problems) - len(rest) // (k - screen)
        if rest:
            more, more_s, more_versions = self._sample([text for _, _, text in rest], self.cfg.temperature)
            asked, outs, made = asked + rest, outs + more, made + [(more_s, more_versions)] * len(more)
        return asked, outs, made

    def _task_row(
        self,
        role: int,
        prompt: str,
        out,
        versions: dict,
        elapsed: float,
        seed: int,
        problem,
        group: str,
        traj_id: str | None = None,
        turn: int = 0,
    ) -> dict:
        """One task reply's row (every seat the learner's), unscored: a one-row trajectory, or
        turn `turn` of the chain `traj_id`."""
        row = self._row(
            Match(self.task.name, (LEARNER, LEARNER)),
            0,  # every seat the learner's: the row's own role is set below
            prompt=self.prompt(prompt, None),
            response=out.token_ids,
            logprobs=out.logprobs,
            text=out.text,
            versions=versions,
            elapsed=elapsed,
        )
        row.update(
            role=role,
            traj_id=traj_id or uuid.uuid4().hex,
            seed=seed,
            turn=turn,
            outcome=None,
            opponent_id=SELF,
            task=self.task.name,
            group_id=group,
            reference_id=problem.id,
        )
        return row

    def _chain_play(self, seeds: list[int], problems: list, groups: list[str]) -> pa.Table:
        """task_play for a chain task (refine): task.samples_per_prompt chains per problem, one
        trajectory each whose turns are the task's roles in order (`_chains`)."""
        k = self.task_cfg.samples_per_prompt
        index = [i for i in range(len(problems)) for _ in range(k)]
        prompts, outs, made = self._chains([problems[i] for i in index], [], self.cfg.temperature)
        rows = []
        for c, i in enumerate(index):
            traj_id = uuid.uuid4().hex
            for role, (elapsed, versions) in enumerate(made):
                rows.append(
                    self._task_row(
                        role,
                        prompts[c][role],
                        outs[c][role],
                        versions,
                        elapsed,
                        seeds[i],
                        problems[i],
                        groups[i],
                        traj_id,
                        turn=role,
                    )
                )
        self.counts["games"] += len(index)
        return schema.from_rows(rows)

    def _chains(
        self,
        problems: list,
        first: list,
        temperature: float,
        policy: str = LEARNER,
        counts: dict | None = None,
    ) -> tuple[list[list[str]], list[list], list[tuple[float, dict]]]:
        """One chain per entry of `problems` (a chain task): each role in turn, its prompts
        holding the replies before (task.role_prompt), one engine call per role. `first`:
        the first role's replies when already sampled (else []). Returns each chain's prompts
        and completions by role, and each sampled role's call's (engine seconds, versions)."""
        prompts = [[] for _ in problems]
        outs = [[o] for o in first] if first else [[] for _ in problems]
        made = []
        for role in range(len(self.task.roles)):
            asked = [
                self.task.role_prompt(p, role, [o.text for o in done]) for p, done in zip(problems, outs)
            ]
            for chain, text in zip(prompts, asked):
                chain.append(text)
            if role == 0 and first:
                continue  # given
            got, elapsed, versions = self._sample(asked, temperature, policy, counts)
            for chain, out in zip(outs, got):
                chain.append(out)
            made.append((elapsed, versions))
        return prompts, outs, made

    def _rate(
        self, prompts: list[str], replies: list[str], policy: str = LEARNER, counts: dict | None = None
    ) -> list[float | None]:
        """`policy`'s own scores of `replies` to `prompts` (task.judge self): in its judge role
        (judges.rating_prompt), task.judge_samples verdicts on each at task.judge_temperature
        (0: greedy) in one engine call, their rubric points averaged over the readable ones
        (judges.mean_points, in [0, 1]); None where none is readable."""
        n, principles = self.task_cfg.judge_samples, self.task.principles
        asks = [self.prompt(rating_prompt(p, r), None) for p, r in zip(prompts, replies) for _ in range(n)]
        outs, _, _ = self._generate(
            policy,
            [self.task.name] * len(asks),
            asks,
            [len(principles.principles) + 1] * len(asks),  # a mark per principle, then the end
            self.task_cfg.judge_temperature,
            self.counts if counts is None else counts,
        )
        texts = [o.text for o in outs]
        return [mean_points(principles, texts[i * n : (i + 1) * n]) for i in range(len(replies))]

    def task_match(self, member: str, n_prompts: int, policy: str = LEARNER) -> tuple[dict, list]:
        """`policy` against a loaded league `member` on the task's first n_prompts held-out
        problems: one greedy reply each, judged in both orders (`judge_pair`; the task's
        scorer is pointwise, so the higher total wins and equal totals or identical replies
        tie). Returns ({task: summary with `wdl`}, [(task, member, points)] for Elo)."""
        problems = self.task.held_out(n_prompts)
        prompts = [p.prompt for p in problems]
        ours, _, versions = self._sample(prompts, 0.0, policy, self.eval_counts)
        theirs, _, their_versions = self._sample(prompts, 0.0, member, self.eval_counts)
        self.eval_counts["games"] += len(problems)
        verdicts, mine, their = [], [], []
        for p, a, b in zip(problems, ours, theirs):
            mine.append(self.score(p.prompt, a.text, p.reference).total)
            their.append(self.score(p.prompt, b.text, p.reference).total)
            verdicts.append(scored_pair(a.text, mine[-1], b.text, their[-1]))
        points = [1.0 if v == "first" else 0.0 if v == "second" else 0.5 for v in verdicts]
        n = max(len(problems), 1)
        wdl = [verdicts.count("first"), verdicts.count("tie"), verdicts.count("second")]
        summary = {
            "games": len(problems),
            "win": wdl[0] / n,
            "draw": wdl[1] / n,
            "loss": wdl[2] / n,
            "score": sum(points) / n,
            "mean_total": sum(mine) / n,
            "member_mean_total": sum(their) / n,
            "version": versions[policy],
            "member_version": their_versions[member],
            "wdl": wdl,
        }
        return {self.task.name: summary}, [(self.task.name, member, x) for x in points]

    def _task_seed(self) -> int:
        """A new train problem's seed, or with task.hard_fraction's probability one from the
        hard-prompt pool (while it holds any)."""
        if self.hard and self.rng.random() < self.task_cfg.hard_fraction:
            self.counts["hard_prompts"] += 1
            return self.rng.choice(self.hard)
        if self.prompt_seeds:
            return self.rng.choice(self.prompt_seeds)
        if self.task_cfg.curriculum == "learnability":
            return self._learnable_seed()
        return self.rng.getrandbits(31)

    def _learnable_seed(self) -> int:
        """A new train problem's seed by the learnability curriculum: the task's own draws,
        each kept with its difficulty class's weight over the highest (rejection sampling,
        selfplay/builder.py:curriculum_accepts). The floor bounds the expected draws by
        1 / task.curriculum_floor; after CURRICULUM_DRAWS the last is kept."""
        weights = curriculum_weights(self.learnability, self.task_cfg.curriculum_floor)
        for _ in range(CURRICULUM_DRAWS):
            seed = self.rng.getrandbits(31)
            if curriculum_accepts(weights, self.task.difficulty(self.task.problem(seed)), self.rng.random()):
                return seed
            self.counts["curriculum_skipped"] += 1
        return seed

    def note_groups(self, groups: list) -> None:
        """The verifier's (problem seed, mean reward, reward std, samples) of scored groups:
        the hard pool's and the learnability curriculum's input. The pool judges a problem by
        whole groups only: a screen that stopped a prompt (task.screen_samples) is too few
        samples to say it is solved or out of reach (a problem right 1 time in 4 left the
        pool at 62% of its screens of 2, against 13% of its groups of 8)."""
        if self.task is None:
            return
        c = self.task_cfg
        if c.hard_fraction > 0:
            screened = c.screen_samples
            whole = [tuple(g) for g in groups if not (screened and len(g) > 3 and g[3] <= screened)]
            self.hard = update_hard_pool(self.hard, whole, c.hard_below, c.hard_pool)
        if c.curriculum == "learnability":
            classes = [(self.task.difficulty(self.task.problem(g[0])), g[2] > 0) for g in groups]
            self.learnability = update_learnability(self.learnability, classes)

    def _sample(
        self, prompts: list[str], temperature: float, policy: str = LEARNER, counts: dict | None = None
    ):
        """`_generate` for task prompts (text): (completions, engine seconds, versions)."""
        ids = [self.prompt(p, None) for p in prompts]
        limit = reply_tokens(self.task, self.cfg.max_response_tokens)
        counts = self.counts if counts is None else counts
        return self._generate(
            policy, [self.task.name] * len(ids), ids, [limit] * len(ids), temperature, counts
        )

    def evaluate_task(self, policy: str = LEARNER) -> dict:
        """`policy` on the task's first task.held_out held-out problems: greedy (pass@1
        accuracy) and task.eval_samples samples each at the training temperature (pass@k).
        A task with a checker role (solver_checker) samples as many tests too, and adds how
        well the policy's own tests pick among its solutions (SolverChecker.select)."""
        if self.held_out is None:  # the same problems every evaluation: drawn once
            self.held_out = self.task.held_out(self.task_cfg.held_out)
        problems = self.held_out
        k = self.task_cfg.eval_samples
        greedy, _, versions = self._sample([p.prompt for p in problems], 0.0, policy, self.eval_counts)
        prompts = [text for p in problems for text in role_prompts(self.task, p) for _ in range(k)]
        sampled, _, _ = self._sample(prompts, self.cfg.temperature, policy, self.eval_counts)
        self.eval_counts["games"] += len(greedy) + len(sampled)
        texts = [o.text for o in sampled]
        replies = grouped(texts, len(problems))  # each problem's: k per role
        score = self.score
        greedy_scores = [score(p.prompt, o.text, p.reference) for p, o in zip(problems, greedy)]
        picks = []
        if len(prompts) > k * len(problems):  # a checker role: its k tests follow the k solutions
            picks = [self.task.select(p, own[:k], own[k:]) for p, own in zip(problems, replies)]
            sample_scores = [Score(h) for pick in picks for h in pick.pop("hidden")]
        else:
            sample_scores = [
                score(p.prompt, text, p.reference) for p, own in zip(problems, replies) for text in own
            ]
        return {
            "game": self.task.name,
            "opponent": "held_out",
            "version": versions[policy],
            **task_summary(
                greedy_scores, sample_scores, k, judged=getattr(self.task, "principles", None) is not None
            ),
            **(selection_summary(picks) if picks else {}),
            **(self._gold_score(problems, greedy, replies) if self.gold is not None else {}),
            **(self._chain_figures(problems, greedy, policy) if getattr(self.task, "chain", False) else {}),
            **(
                self._judge_agreement(problems, greedy, greedy_scores, replies, sample_scores, policy)
                if self.task_cfg.judge == "self"
                else {}
            ),
        }

    def _judge_agreement(self, problems, greedy, greedy_scores, samples, sample_scores, policy) -> dict:
        """`policy` as its own judge (task.judge self) against the task's rule judge, on each
        held-out problem's greedy reply and samples (`samples`: each problem's, as grouped):
        every pair of them (judge_summary)."""
        per = 1 + len(samples[0]) if samples else 1  # the greedy reply, then the samples
        prompts, replies, rules = [], [], []
        for p, reply, rule, own, own_scores in zip(
            problems, greedy, greedy_scores, samples, grouped(sample_scores, len(problems))
        ):
            prompts += [p.prompt] * per
            replies += [reply.text, *own]
            rules += [rule.total, *(s.total for s in own_scores)]
        ratings = self._rate(prompts, replies, policy, self.eval_counts)
        pairs = [
            (b + x, b + y) for b in range(0, len(replies), per) for x in range(per) for y in range(x + 1, per)
        ]
        return judge_summary(ratings, rules, pairs, list(range(0, len(replies), per)))

    def _chain_figures(self, problems: list, greedy: list, policy: str) -> dict:
        """A chain task's held-out figures (chain_summary): each greedy first answer's chain
        carried on greedily by `policy` in its later roles, scored by the task."""
        _, outs, _ = self._chains(problems, greedy, 0.0, policy, self.eval_counts)
        return chain_summary([self.task.score_chain(p, [o.text for o in c]) for p, c in zip(problems, outs)])

    def _gold_score(self, problems: list, greedy: list, samples: list[list[str]]) -> dict:
        """The held-out gold judge's mean total (never trained against) of the greedy replies
        and of the samples (`samples`: each problem's, as grouped)."""
        totals = [self.gold.score(p.prompt, o.text, p.reference).total for p, o in zip(problems, greedy)]
        sampled = [
            self.gold.score(p.prompt, text, p.reference).total
            for p, own in zip(problems, samples)
            for text in own
        ]
        return {
            "gold_score": sum(totals) / max(len(totals), 1),
            "sample_gold_score": sum(sampled) / max(len(sampled), 1),
        }

    def close(self) -> None:
        for engine in [*self.engines.values(), *self.slots.values(), *self.spares]:
            engine.close()


# The actor's calls run in three groups of threads, so that no kind waits behind another:
# the default group plays (`play_loop`, `self_play`); CONTROL loads weights and answers the
# pool's probe and `stop`; EVAL measures, one call at a time (its lock has them so anyway).
# With one group of 4 threads, a round of evaluations queued together (one per game and
# opponent, and `kuhn_policy`) held every thread but play_loop's, most waiting on the eval
# lock, and a broadcast's `set_weights` queued behind them: past learner.ack_timeout_s the
# learner drops the generator and its pool replaces it.
CONTROL, EVAL = "control", "eval"


@ray.remote(max_concurrency=2, concurrency_groups={CONTROL: 2, EVAL: 1})
class GeneratorActor:
    """Ray shell. `play_loop` loops in one thread; `set_weights`, `stats` (CONTROL) and the
    evaluations (EVAL) are served from threads of their own and take the engine lock only
    between engine calls. With a league actor, each wave's opponents come from its
    matchmaking and every finished league game goes back to it for Elo."""

    def __init__(
        self,
        generator_id: str,
        run_id: str,
        games: dict[str, float],
        model_path: str,
        model_cfg: ModelConfig,
        gen_cfg: GeneratorConfig,
        seed: int,
        version: int = 0,
        max_live_opponents: int = 2,
        task_cfg: TaskConfig | None = None,
        prompt_seeds: list[int] | None = None,
    ):
        self.gen = Generator.from_model(
            generator_id,
            run_id,
            games,
            model_path,
            model_cfg,
            gen_cfg,
            seed,
            version,
            max_live_opponents,
            task_cfg,
            prompt_seeds,
        )
        self.stopped = threading.Event()  # set once by `stop`, even if it comes before `play_loop` starts
        self.wait_s = 0.0  # of play_s: held back by the buffer's rate limit
        self.play_started: float | None = None
        self.sent = 0  # trajectories handed to the verifier
        self.beats = 0  # passes of the wave loop: the pool's health probe watches it advance
        self.reports: list = []  # league.record calls not yet known to have landed
        self.report_lock = threading.Lock()  # reports come from the wave loop and from matches
        self.member_lock = threading.Lock()  # held while loading members and playing them
        self.eval_lock = threading.Lock()  # one evaluation at a time on the FIXED engine
        self.matching = False  # a head-to-head match under way
        tags = {"run": run_id, "generator": generator_id}
        self.tokens = ray_metric("counter", "generator_tokens", tags)
        self.trajs = ray_metric("counter", "generator_trajectories", tags)
        self.version_gauge = ray_metric("gauge", "generator_weight_version", tags)
        self.load_seconds = ray_metric("histogram", "generator_weight_load_seconds", tags, boundaries=SECONDS)

    def play_loop(self, verifier, buffer, league=None, max_in_flight: int = 2) -> dict:
        """Play waves until `stop`: the wave under way is finished and handed on, and every
        verifier call has returned before this does, so a stopped generator loses no game.
        A generator plays one run in its life; after `stop`, this returns at once."""
        in_flight = []
        n = self.gen.cfg.games_per_wave
        self.play_started = time.perf_counter()
        while not self.stopped.is_set():
            self.beats += 1
            if not ray.get(buffer.can_insert.remote()):
                start = time.perf_counter()
                time.sleep(0.05)  # the buffer is rate-limiting inserts: the learner is behind
                self.wait_s += time.perf_counter() - start
                continue
            tokens_before = self.gen.counts["tokens"]
            tcfg = self.gen.task_cfg
            if self.gen.task is not None and "snapshot" in (tcfg.versus, tcfg.judge_weights):
                # the newest snapshot competes (competitive self-play), judges, or both
                member = ray.get(league.latest.remote())
                with self.member_lock:
                    self._load_members(league, {member})
                    table = self.gen.task_play(
                        tcfg.prompts_per_wave,
                        opponent=member if tcfg.versus == "snapshot" else None,
                        judge=member if tcfg.judge_weights == "snapshot" else LEARNER,
                    )
            elif self.gen.task is not None:
                table = self.gen.task_play(tcfg.prompts_per_wave)
            elif league is None:
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
                # a failed verifier call stops this generator rather than losing games
                self.gen.note_groups(ray.get(done[0])["groups"])
        for verified in ray.get(in_flight):
            self.gen.note_groups(verified["groups"])
        self._check_reports(wait=True)
        return self.stats()

    def _load_members(self, league, members: set[str]) -> None:
        """Fetch missing members' weights from the league's object-store copy (the
        broadcast path) into opponent engines; each load's checksum is verified."""

        def fetch(member: str) -> tuple[bytes, int, str]:
            info = ray.get(league.weights.remote(member))
            return ray.get(info["ref"][0]), info["version"], info["checksum"]

        self.gen.load_members(members, fetch)

    def _report(self, league, table: pa.Table, policy: str = LEARNER) -> None:
        """The learner's finished games against members, for Elo (`policy`: the engine
        that played the learner's side)."""
        results = [
            (g["game"], g["opponent"], game_points(g["outcome"]))
            for g in outcomes(table, policy)
            if g["opponent"] != SELF and g["opponent"] not in self.gen.cfg.opponents  # members only
        ]
        if results:
            with self.report_lock:
                self.reports.append(league.record.remote(results))
        self._check_reports()

    def _check_reports(self, wait: bool = False) -> None:
        """Raise what a landed league report raised (a rating update is never lost
        silently); `wait`: for every report sent."""
        with self.report_lock:
            sent, self.reports = self.reports, []
        if sent:
            done, pending = ray.wait(sent, num_returns=len(sent), timeout=None if wait else 0)
            with self.report_lock:
                self.reports.extend(pending)
            ray.get(done)

    @ray.method(concurrency_group=CONTROL)
    def stop(self) -> None:
        self.stopped.set()

    @ray.method(concurrency_group=CONTROL)
    def close(self) -> None:
        """Stop playing and shut its engines down (their engine-core processes end), before
        the actor is killed rather than with it."""
        self.stopped.set()
        with self.gen.lock:
            self.gen.close()

    def _timed_load(self, load: Callable[[], str], version: int) -> str:
        start = time.perf_counter()
        checksum = load()
        self.load_seconds.observe(time.perf_counter() - start)
        self.version_gauge.set(version)
        return checksum

    @ray.method(concurrency_group=CONTROL)
    def set_weights(self, blob: bytes, version: int) -> str:
        return self._timed_load(lambda: self.gen.set_weights(blob, version), version)

    @ray.method(concurrency_group=CONTROL)
    def receive_collective(self, sync: dict, version: int) -> str:
        return self._timed_load(lambda: self.gen.receive_collective(sync, version), version)

    def _measure(self, weights: dict | None, run):
        """`run(policy)` under the eval lock, `policy` being the engine that holds `weights`
        (Generator.policy_for)."""
        with self.eval_lock:
            policy = self.gen.policy_for(weights, lambda: ray.get(weights["ref"][0]))
            result = run(policy)
            self.gen.check_settled(weights, policy)
            return result

    @ray.method(concurrency_group=EVAL)
    def evaluate(
        self, game: str, opponent: str, n_games: int, weights: dict | None = None, seed: str | None = None
    ) -> dict:
        """Greedy play against a scripted opponent; with `weights`, of those weights, fixed
        while broadcasts keep landing on the learner's engine; `seed`: Generator.evaluate."""
        return self._measure(
            weights, lambda policy: self.gen.evaluate(game, opponent, n_games, policy=policy, seed=seed)
        )

    @ray.method(concurrency_group=EVAL)
    def evaluate_task(self, weights: dict | None = None) -> dict:
        """The task's held-out evaluation; with `weights`, of those weights held fixed."""
        return self._measure(weights, self.gen.evaluate_task)

    @ray.method(concurrency_group=EVAL)
    def kuhn_policy(self, weights: dict | None = None) -> dict:
        return self._measure(weights, self.gen.kuhn_policy)

    def kuhn_inputs(self) -> list[tuple[str, int, list[int], list[int]]]:
        return self.gen.kuhn_inputs()

    @ray.method(concurrency_group=EVAL)
    def head_to_head(self, league, member: str, n_games: int, weights: dict | None = None) -> dict:
        """The policy (sampling at the training temperature; with `weights`, those weights
        held fixed) against league `member`, n_games per game of the mix and seat (a task
        run: n_games held-out prompts, greedy, judged: `Generator.task_match`); results
        also go to the league as the learner's."""
        with self.eval_lock, self.member_lock:
            self.matching = True  # the wave loop may wait on member_lock meanwhile (stats says so)
            try:
                policy = self.gen.policy_for(weights, lambda: ray.get(weights["ref"][0]))
                self._load_members(league, {member})
                if self.gen.task is not None:  # n_games held-out prompts, judged
                    per_game, results = self.gen.task_match(member, n_games, policy)
                else:
                    table, per_game = self.gen.head_to_head(member, n_games, policy)
            finally:
                self.matching = False
        if self.gen.task is not None:
            ray.get(league.record.remote(results))
        else:
            self._report(league, table, policy)
        return per_game

    def self_play(self, n_games: int) -> bytes:
        return schema.to_ipc(self.gen.self_play(n_games))

    @ray.method(concurrency_group=CONTROL)
    def stats(self) -> dict:
        return {
            "id": self.gen.id,
            "version": self.gen.version,
            "checksum": self.gen.checksum,
            "wait_s": self.wait_s,
            "play_s": 0.0 if self.play_started is None else time.perf_counter() - self.play_started,
            "sent": self.sent,
            "beats": self.beats,
            "matching": self.matching,  # a match holds the loop (member_lock): it is not hung
            "members": list(self.gen.slots),
            "node_id": ray.get_runtime_context().get_node_id(),
            **self.gen.counts,
            **{f"eval_{k}": v for k, v in self.gen.eval_counts.items()},
            "learnability": {key: rate for key, (_, rate) in sorted(self.gen.learnability.items())},
        }
