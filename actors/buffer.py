"""Replay buffer: bounded FIFO of turns, tagged by policy version. Drops turns more than
`max_staleness` versions old, and rate-limits inserts against samples (the rule of
DeepMind's Reverb SampleToInsertRatio limiter) so fast generators cannot flood a slow
learner. Saved and restored as Parquet with the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from selfplay import schema
from selfplay.config import BufferConfig
from selfplay.metrics import ray_metric


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


class ReplayBuffer:
    def __init__(self, cfg: BufferConfig, seed: int = 0):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.table = schema.empty()
        self.learner_version = 0
        self.counts = {"inserted": 0, "sampled": 0, "dropped_stale": 0, "evicted": 0}

    def __len__(self) -> int:
        return self.table.num_rows

    def _fresh(self, table: pa.Table) -> pa.Table:
        floor = staleness_floor(self.learner_version, self.cfg.max_staleness)
        kept = table.filter(pc.greater_equal(table["policy_version"], floor))
        self.counts["dropped_stale"] += table.num_rows - kept.num_rows
        return kept

    def add(self, table: pa.Table) -> int:
        """Insert turns; returns how many were kept (stale ones are dropped and counted).
        Dropped turns still count as inserted for the rate limit: generating them cost the
        generators as much, and counting them keeps the learner from waiting on them."""
        table = schema.check(table)
        self.counts["inserted"] += table.num_rows
        fresh = self._fresh(table)
        self.table = pa.concat_tables([self.table, fresh]).combine_chunks()
        overflow = self.table.num_rows - self.cfg.capacity
        if overflow > 0:
            self.table = self.table.slice(overflow)
            self.counts["evicted"] += overflow
        return fresh.num_rows

    def can_insert(self) -> bool:
        return insert_allowed(
            self.counts["inserted"],
            self.counts["sampled"],
            self.cfg.samples_per_insert,
            self.cfg.spi_tolerance,
            len(self),
            self.cfg.min_size,
        )

    def sample(self, n: int, learner_version: int) -> pa.Table | None:
        """n distinct turns, uniformly, or None while the rate limit or min_size says wait."""
        self.learner_version = max(self.learner_version, learner_version)
        self.table = self._fresh(self.table)
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
        idx = self.rng.choice(len(self), size=n, replace=False)
        self.counts["sampled"] += n
        return self.table.take(pa.array(np.sort(idx)))

    def stats(self) -> dict:
        versions = self.table["policy_version"]
        return {
            "size": len(self),
            "fill": len(self) / self.cfg.capacity,
            "learner_version": self.learner_version,
            "oldest_version": pc.min(versions).as_py() if len(self) else None,
            **self.counts,
        }

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        schema.write_parquet(self.table, d / "buffer.parquet")
        state = {
            "learner_version": self.learner_version,
            "counts": self.counts,
            "rng": self.rng.bit_generator.state,
        }
        (d / "buffer_state.json").write_text(json.dumps(state))

    def load(self, directory: str | Path) -> None:
        d = Path(directory)
        self.table = schema.read_parquet(d / "buffer.parquet")
        state = json.loads((d / "buffer_state.json").read_text())
        self.learner_version = state["learner_version"]
        self.counts = state["counts"]
        self.rng.bit_generator.state = state["rng"]


@ray.remote(num_cpus=0)
class BufferActor:
    """Ray shell: trajectories travel as Arrow IPC bytes."""

    def __init__(self, cfg: BufferConfig, seed: int, run_id: str):
        self.buffer = ReplayBuffer(cfg, seed)
        self.gauges = {
            name: ray_metric("gauge", f"buffer_{name}", {"run": run_id})
            for name in ("size", "fill", "inserted", "sampled", "dropped_stale", "evicted")
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

    def save(self, directory: str) -> None:
        self.buffer.save(directory)

    def load(self, directory: str) -> None:
        self.buffer.load(directory)
