"""Replay buffer: bounded FIFO of turns, tagged by policy version. Drops turns more than
`max_staleness` versions old, and rate-limits inserts against samples (the rule of
DeepMind's Reverb SampleToInsertRatio limiter) so fast generators cannot flood a slow
learner. Saved and restored as Parquet with the checkpoint.

What it hands the learner: `least_sampled` (default) takes the turns sampled fewest
times first, ties broken at random, so every turn is trained on once before any turn
twice and a turn leaves unseen only if the learner falls behind (uniform draws leave
e^-spi of them unseen: 13.5% at spi 2); `uniform` draws at random, as Reverb's Uniform
selector does. With `whole_games`, a game's turns are taken together (what a GAE
advantage over a game's turns needs). Turns that leave the buffer never sampled are
counted apart (`dropped_unsampled`, `evicted_unsampled`): that is the generation wasted.

Task runs insert through the builder (selfplay/builder.py): scored groups become training
rows, and groups the variance filter holds back wait in a reserve instead (they count
neither as inserted nor against the rate). When the learner cannot take a batch (too few
rows, or the rate) although `fill_after` rows were held back since its last one, the
best held-back groups fill it (`filled_from_reserve`; those whose rewards differ most,
newest first): a batch that cannot fill is topped up and logged, never a stall.
The supervised stage (`start_sft`) hands out a fixed labelled set instead, in shuffled
epochs, while generators wait (`can_insert` is False until `end_sft`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from selfplay import schema
from selfplay.builder import COUNTS as BUILDER_COUNTS
from selfplay.builder import build, targets_of
from selfplay.config import BufferConfig, BuilderConfig
from selfplay.files import write_atomic, write_parquet_atomic
from selfplay.metrics import ray_metric
from selfplay.text import text_codec


def staleness_floor(learner_version: int, max_staleness: int) -> int:
    """Oldest policy version still usable when the learner is at `learner_version`."""
    return learner_version - max_staleness


def insert_allowed(
    inserted: int, sampled: int, samples_per_insert: float, tolerance: int, size: int, min_size: int
) -> bool:
    """Generators may insert while sampling keeps up, inserted * spi - sampled <= tolerance,
    and always while the buffer is below min_size (as Reverb's limiter does): otherwise
    stale drops could leave both sides waiting on each other."""
    return size < min_size or inserted * samples_per_insert - sampled <= tolerance


def sample_allowed(
    inserted: int, sampled: int, n: int, samples_per_insert: float, tolerance: int, size: int, min_size: int
) -> bool:
    """The learner may take n more once the buffer holds min_size and n fit in the rate:
    sampled + n - inserted * spi <= tolerance."""
    return size >= max(min_size, n) and sampled + n - inserted * samples_per_insert <= tolerance


def reserve_order(reserve: pa.Table, n: int) -> np.ndarray:
    """Indices of the held-back rows to admit, whole groups until they hold at least n
    rows: the groups whose rewards differ most first, the newest first among equals
    (rows of a group are contiguous, groups in the order they arrived). A group is the
    builder's: a group id and a role (a task with several roles has one per role)."""
    key = pc.binary_join_element_wise(reserve["group_id"], pc.cast(reserve["role"], pa.string()), ":")
    groups = pc.dictionary_encode(key).combine_chunks().indices.to_numpy()
    rewards = reserve["reward"].to_numpy(zero_copy_only=False).astype(np.float64)
    n_groups = int(groups.max()) + 1
    sizes = np.bincount(groups, minlength=n_groups)
    mean = np.bincount(groups, rewards, n_groups) / sizes
    std = np.sqrt(np.bincount(groups, (rewards - mean[groups]) ** 2, n_groups) / sizes)
    order = np.lexsort((-np.arange(n_groups), -std))  # std descending, then newest (last seen) first
    k = int(np.searchsorted(np.cumsum(sizes[order]), n)) + 1 if n > 0 else 0
    return np.flatnonzero(np.isin(groups, order[:k]))


def pick_rows(
    times: np.ndarray, groups: np.ndarray | None, n: int, rng: np.random.Generator, least_sampled: bool
) -> np.ndarray:
    """Row indices to sample, ascending. `times[i]`: how often row i was sampled; `groups[i]`:
    the game row i belongs to (None: each row on its own). Units (rows, or games with all
    their rows) are taken in order until they hold n rows: fewest times sampled first
    (ties in random order) if `least_sampled`, else in random order. A game counts as
    sampled as often as its most sampled row."""
    if groups is None:
        groups = np.arange(len(times))
    n_units = int(groups.max()) + 1 if len(groups) else 0
    unit_rows = np.bincount(groups, minlength=n_units)
    unit_times = np.zeros(n_units, dtype=np.int64)
    np.maximum.at(unit_times, groups, times)
    if least_sampled:
        order = np.lexsort((rng.random(n_units), unit_times))
    else:
        order = rng.permutation(n_units)
    order = order[unit_rows[order] > 0]
    # n 0 takes nothing (searchsorted's first unit was one row past the limits: a batch whose
    # replayed share rounds to all of it)
    k = int(np.searchsorted(np.cumsum(unit_rows[order]), n)) + 1 if n > 0 else 0
    return np.flatnonzero(np.isin(groups, order[:k]))


class PreferenceLog:
    """Every preference pair the builder admits (or, method refine, every pair of a refine
    chain's answers: schema.chain_pairs), appended to Parquet part files under
    `directory` (schema.PREFERENCE_SCHEMA: prompt, chosen, rejected and provenance): pairs
    wait in memory until flush_rows are pending or `flush` is called (at every checkpoint),
    so each file is written whole, once. A resumed run appends new parts."""

    def __init__(self, directory: str | Path, decode, method: str, flush_rows: int = 4096):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.decode = decode
        self.method = method
        self.flush_rows = flush_rows
        self.pending: list[pa.Table] = []
        self.parts = len(list(self.dir.glob("part-*.parquet")))

    def add(self, admitted: pa.Table, scored: pa.Table) -> None:
        """The pairs of `admitted` (the builder's rows labelled dpo), or for method refine
        those of the chains `scored` (what the builder was given: every turn of a chain,
        whatever the builder admits or holds back)."""
        if self.method == schema.CHAIN_METHOD:
            pairs = schema.chain_pairs(scored, self.decode)
        else:
            pairs = schema.preference_table(admitted, self.decode, self.method)
        if pairs.num_rows:
            self.pending.append(pairs)
        if sum(t.num_rows for t in self.pending) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        write_parquet_atomic(pa.concat_tables(self.pending), self.dir / f"part-{self.parts:06d}.parquet")
        self.parts += 1
        self.pending = []

    def resume(self, parts: int) -> None:
        """Go on from a checkpoint that had written `parts` part files: those written after
        it (by a session that went on past it and was killed) are removed, since the steps
        that made them are taken again."""
        for path in self.dir.glob("part-*.parquet"):
            if int(path.stem.removeprefix("part-")) >= parts:
                path.unlink()
        self.parts = parts


class ReplayBuffer:
    def __init__(
        self,
        cfg: BufferConfig,
        seed: int = 0,
        builder: BuilderConfig | None = None,
        preferences: PreferenceLog | None = None,
    ):
        """`builder`: how task rows are built (None: a game run's turns go in as they come);
        `preferences`: where the preference pairs it admits are written."""
        self.cfg = cfg
        self.builder = builder
        self.preferences = preferences
        self.rng = np.random.default_rng(seed)
        self.table = schema.empty()
        self.times = np.zeros(0, dtype=np.int64)  # times each row of `table` was sampled
        self.reserve = schema.empty()  # held back by the variance filter, newest last
        self.sft: pa.Table | None = None  # the supervised stage's labelled set, while it runs
        self.sft_order = np.zeros(0, dtype=np.int64)  # rows of `sft` still to hand out this epoch
        self.replay: pa.Table | None = None  # labelled rows rehearsed after the stage (set_replay)
        self.replay_share = 0.0
        self.replay_order = np.zeros(0, dtype=np.int64)
        self.resumed = False  # loaded from a checkpoint: the labelled sets' epochs go on (load)
        self.targets: dict[str, tuple[list[int], str]] = {}  # the supervised targets (builder.rows spin)
        self.learner_version = 0
        self.counts = {
            "inserted": 0,
            "sampled": 0,
            "dropped_stale": 0,
            "evicted": 0,
            "dropped_unsampled": 0,  # of dropped_stale: never sampled (generation wasted)
            "evicted_unsampled": 0,  # of evicted: never sampled
        }
        if builder is not None:  # a task run's
            self.counts.update(
                held_since_sample=0,  # rows held back since the learner's last batch
                filled_from_reserve=0,  # held-back rows admitted to fill a batch
                reserve_dropped=0,  # held-back rows that left the reserve stale or over capacity
                sft_sampled=0,  # rows of the supervised stage handed out
                replay_sampled=0,  # labelled rows rehearsed in later batches (set_replay)
                **dict.fromkeys(BUILDER_COUNTS, 0),
            )

    def __len__(self) -> int:
        return self.table.num_rows

    def _keep(self, keep: np.ndarray, gone_count: str, unsampled_count: str) -> None:
        """Keep the rows where `keep` is true; the others count under `gone_count`, and
        those of them never sampled under `unsampled_count` too."""
        gone = ~keep
        self.counts[gone_count] += int(gone.sum())
        self.counts[unsampled_count] += int((self.times[gone] == 0).sum())
        first = int(keep.argmax()) if keep.any() else len(keep)
        if keep[first:].all():  # the oldest rows go (FIFO, or stale in insertion order): a slice, no copy
            self.table = self.table.slice(first)
        else:
            self.table = self.table.filter(pa.array(keep))
        self.times = self.times[keep]

    def _drop_stale(self) -> None:
        floor = staleness_floor(self.learner_version, self.cfg.max_staleness)
        keep = self.table["policy_version"].to_numpy() >= floor
        if not keep.all():
            self._keep(keep, "dropped_stale", "dropped_unsampled")

    def add(self, table: pa.Table) -> int:
        """Insert turns; returns how many were kept (stale ones are dropped and counted).
        Dropped turns still count as inserted for the rate limit: generating them cost the
        generators as much, and counting them keeps the learner from waiting on them."""
        table = scored = schema.check(table)
        if self.builder is not None:
            table, held, built = build(table, self.builder, self.targets)
            for k, v in built.items():
                self.counts[k] += v
            self.counts["held_since_sample"] += held.num_rows
            self.reserve = pa.concat_tables([self.reserve, held]).combine_chunks()
            over = max(self.reserve.num_rows - self.cfg.capacity, 0)  # the oldest go
            self.counts["reserve_dropped"] += over
            self.reserve = self.reserve.slice(over)
            if self.preferences is not None:
                self.preferences.add(table, scored)
        return self._insert(table)

    def _insert(self, table: pa.Table) -> int:
        self.counts["inserted"] += table.num_rows
        dropped_before = self.counts["dropped_stale"]
        self.table = pa.concat_tables([self.table, table]).combine_chunks()
        self.times = np.concatenate([self.times, np.zeros(table.num_rows, dtype=np.int64)])
        self._drop_stale()  # the rows already held were fresh at this learner version
        kept = table.num_rows - (self.counts["dropped_stale"] - dropped_before)
        overflow = self.table.num_rows - self.cfg.capacity
        if overflow > 0:  # FIFO: the oldest rows go
            self._keep(np.arange(self.table.num_rows) >= overflow, "evicted", "evicted_unsampled")
        return kept

    def _fill_from_reserve(self, n: int) -> None:
        """Top the buffer up with held-back rows until a batch of n can be sampled, by size
        (min_size) and by rate (held-back rows never counted as inserted, so a run of
        groups that all agree would otherwise leave the learner waiting on the rate for
        ever); only once `fill_after` rows were held back since the last batch. Whole
        groups, those whose rewards differ most first (with min_reward_std 0 every
        held-back group agrees, and its zero advantages teach nothing: the fill then only
        keeps the run going), newest first among equals."""
        if self.builder is None or self.counts["held_since_sample"] < self.builder.fill_after:
            return
        floor = staleness_floor(self.learner_version, self.cfg.max_staleness)
        fresh = pc.greater_equal(self.reserve["policy_version"], floor)
        self.counts["reserve_dropped"] += self.reserve.num_rows - pc.sum(fresh).as_py()
        self.reserve = self.reserve.filter(fresh)
        by_size = max(self.cfg.min_size, n) - len(self)
        spi = self.cfg.samples_per_insert
        by_rate = (
            math.ceil((self.counts["sampled"] + n - self.cfg.spi_tolerance) / spi) - self.counts["inserted"]
        )
        missing = max(by_size, by_rate)
        if missing <= 0 or not self.reserve.num_rows:
            return
        take = reserve_order(self.reserve, missing)
        self.counts["filled_from_reserve"] += len(take)
        chosen = np.zeros(self.reserve.num_rows, dtype=bool)
        chosen[take] = True
        filled = self.reserve.filter(pa.array(chosen))
        if self.preferences is not None and self.preferences.method != schema.CHAIN_METHOD:
            self.preferences.add(filled, filled)  # admitted now (a chain's pairs went in with it whole)
        self._insert(filled)
        self.reserve = self.reserve.filter(pa.array(~chosen))

    # -- the supervised stage ------------------------------------------------------------
    def start_sft(self, table: pa.Table) -> None:
        """Hand out `table` (labelled sft rows) in shuffled epochs until `end_sft`."""
        if self.builder is None:
            raise ValueError("the supervised stage is a task run's (task.name)")
        self.sft = schema.check(table)
        self.sft_order = self._resumed_order(self.sft_order, table)

    def end_sft(self) -> None:
        self.sft = None

    def set_replay(self, table: pa.Table, share: float) -> None:
        """After the supervised stage, `share` of every batch comes from `table` (labelled
        rows, in shuffled epochs of their own; sft.judge_replay: the judge role's rows), the
        rest from the buffer as before."""
        if not 0 <= share < 1:
            raise ValueError(f"sft.judge_replay: must be in [0, 1), got {share}")
        self.replay = schema.check(table) if share else None
        self.replay_share = share
        self.replay_order = self._resumed_order(self.replay_order, table)

    def _resumed_order(self, order: np.ndarray, table: pa.Table) -> np.ndarray:
        """What is left of the epoch a checkpoint was in, for the labelled set the driver
        hands a resumed buffer again (the same set: deterministic by seed), so a resumed run
        takes the batches an uninterrupted one would; a fresh epoch otherwise."""
        if self.resumed and (not len(order) or int(order.max()) < table.num_rows):
            return order
        return np.zeros(0, dtype=np.int64)

    def set_targets(self, table: pa.Table) -> None:
        """The supervised targets of a labelled set (`targets_of`), which spin rows pair with
        (kept after the supervised stage ends)."""
        self.targets = targets_of(schema.check(table))

    def _sample_sft(self, n: int) -> pa.Table:
        """The next n rows of the labelled set: every row once per epoch, in a fresh order."""
        rows, self.sft_order = self._next_epoch_rows(self.sft, self.sft_order, n)
        self.counts["sft_sampled"] += n
        return rows

    def _next_epoch_rows(self, table: pa.Table, order: np.ndarray, n: int) -> tuple[pa.Table, np.ndarray]:
        """The next n rows of `table` by `order` (what is left of this epoch's), and the order
        left after them; a new epoch's shuffled order joins when this one runs short."""
        while len(order) < n:
            order = np.concatenate([order, self.rng.permutation(table.num_rows)])
        return table.take(pa.array(order[:n])), order[n:]

    def can_insert(self) -> bool:
        if self.sft is not None:  # the supervised stage: no generation yet
            return False
        return insert_allowed(
            self.counts["inserted"],
            self.counts["sampled"],
            self.cfg.samples_per_insert,
            self.cfg.spi_tolerance,
            len(self),
            self.cfg.min_size,
        )

    def sample(self, n: int, learner_version: int) -> pa.Table | None:
        """n distinct turns (with `whole_games`, whole games holding at least n turns), or
        None while the rate limit or min_size says wait. See the module for the order."""
        self.learner_version = max(self.learner_version, learner_version)
        if self.sft is not None:
            return self._sample_sft(n)
        replayed = round(n * self.replay_share) if self.replay is not None else 0
        n -= replayed
        self._drop_stale()
        self._fill_from_reserve(n)
        if not sample_allowed(
            self.counts["inserted"],
            self.counts["sampled"],
            n,
            self.cfg.samples_per_insert,
            self.cfg.spi_tolerance,
            len(self),
            self.cfg.min_size,
        ):
            return None
        groups = None
        if self.cfg.whole_games:
            groups = pc.dictionary_encode(self.table["traj_id"]).combine_chunks().indices.to_numpy()
        idx = pick_rows(self.times, groups, n, self.rng, self.cfg.sampling == "least_sampled")
        self.times[idx] += 1
        self.counts["sampled"] += len(idx)
        if self.builder is not None:
            self.counts["held_since_sample"] = 0
        batch = self.table.take(pa.array(idx))
        if replayed:
            rows, self.replay_order = self._next_epoch_rows(self.replay, self.replay_order, replayed)
            self.counts["replay_sampled"] += replayed
            batch = pa.concat_tables([batch, rows])
        return batch

    def stats(self) -> dict:
        versions = self.table["policy_version"]
        return {
            "size": len(self),
            "fill": len(self) / self.cfg.capacity,
            "learner_version": self.learner_version,
            "oldest_version": pc.min(versions).as_py() if len(self) else None,
            **self.counts,
            # turns that left without being trained on once: the generation wasted
            "never_trained": self.counts["dropped_unsampled"] + self.counts["evicted_unsampled"],
        }

    def save(self, directory: str | Path) -> None:
        if self.preferences is not None:  # every pair admitted before the checkpoint is on disk
            self.preferences.flush()
        d = Path(directory)
        schema.write_parquet(self.table, d / "buffer.parquet")
        schema.write_parquet(self.reserve, d / "reserve.parquet")
        state = {
            "learner_version": self.learner_version,
            "counts": self.counts,
            "rng": self.rng.bit_generator.state,
            "times": self.times.tolist(),
            # the labelled sets' rows left in their epochs (the supervised stage, rehearsal)
            "sft_order": self.sft_order.tolist(),
            "replay_order": self.replay_order.tolist(),
        }
        if self.preferences is not None:
            state["preference_parts"] = self.preferences.parts
        write_atomic(d / "buffer_state.json", json.dumps(state))

    def load(self, directory: str | Path) -> None:
        d = Path(directory)
        self.table = schema.read_parquet(d / "buffer.parquet")
        if (d / "reserve.parquet").exists():
            self.reserve = schema.read_parquet(d / "reserve.parquet")
        state = json.loads((d / "buffer_state.json").read_text())
        self.learner_version = state["learner_version"]
        self.counts = {**self.counts, **state["counts"]}
        self.rng.bit_generator.state = state["rng"]
        self.times = np.array(state.get("times", [0] * self.table.num_rows), dtype=np.int64)
        self.sft_order = np.array(state.get("sft_order", []), dtype=np.int64)
        self.replay_order = np.array(state.get("replay_order", []), dtype=np.int64)
        self.resumed = True
        if self.preferences is not None and "preference_parts" in state:
            self.preferences.resume(state["preference_parts"])


@ray.remote(num_cpus=0)
class BufferActor:
    """Ray shell: trajectories travel as Arrow IPC bytes."""

    def __init__(
        self,
        cfg: BufferConfig,
        seed: int,
        run_id: str,
        builder: BuilderConfig | None = None,
        preferences_dir: str | None = None,
        model_path: str | None = None,
        preference_method: str | None = None,
    ):
        """`preferences_dir` (a run whose builder makes preference pairs, or whose task makes
        refine chains): where they are written, their prompts decoded with `model_path`'s
        tokenizer; `preference_method`: builder.rows, or refine."""
        preferences = None
        if preferences_dir is not None:
            _, decode = text_codec(model_path)
            preferences = PreferenceLog(preferences_dir, decode, preference_method or builder.rows)
        self.buffer = ReplayBuffer(cfg, seed, builder, preferences)
        self.gauges = {
            name: ray_metric("gauge", f"buffer_{name}", {"run": run_id})
            for name in (
                "size",
                "fill",
                "inserted",
                "sampled",
                "dropped_stale",
                "evicted",
                "dropped_unsampled",
                "evicted_unsampled",
            )
        }

    def _publish(self) -> None:
        stats = self.buffer.stats()
        for name, gauge in self.gauges.items():
            gauge.set(stats[name])

    def add(self, blob: bytes) -> int:
        kept = self.buffer.add(schema.from_ipc(blob))
        self._publish()
        return kept

    def can_insert(self) -> bool:
        return self.buffer.can_insert()

    def sample(self, n: int, learner_version: int) -> bytes | None:
        table = self.buffer.sample(n, learner_version)
        self._publish()
        return None if table is None else schema.to_ipc(table)

    def stats(self) -> dict:
        return self.buffer.stats()

    def start_sft(self, blob: bytes) -> None:
        self.buffer.start_sft(schema.from_ipc(blob))

    def end_sft(self) -> None:
        self.buffer.end_sft()

    def set_replay(self, blob: bytes, share: float) -> None:
        self.buffer.set_replay(schema.from_ipc(blob), share)

    def set_targets(self, blob: bytes) -> None:
        self.buffer.set_targets(schema.from_ipc(blob))

    def save(self, directory: str) -> None:
        self.buffer.save(directory)

    def load(self, directory: str) -> None:
        self.buffer.load(directory)
