"""Replay buffer (`make bench` figure 4): insert + sample rows/s of `ReplayBuffer` against
a raw pyarrow concat-and-take of the same rows, and bytes per stored turn.

What is timed: the demo's buffer settings (capacity 20,000, staleness 4, one sample per
insert, whole games) taking waves of 64 TicTacToe games (~570 turns of schema v2) and
handing out batches of 512 turns whenever its rate limit allows, as the learner asks;
each batch moves the learner's version on, so stale rows are dropped and counted. The
raw loop does the same inserts and takes as many rows at the same moments: `concat_tables`
+ `combine_chunks`, a slice to the capacity and `take` of random rows, with no schema
check, staleness, rate limit or whole-game sampling. The waves are built before either clock starts; each loop runs 3 times,
alternating, and the median rate of each is compared.

    .venv/bin/python -m bench.buffer_bench
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from actors.buffer import ReplayBuffer
from bench.suite import RESULTS, figure, machine, write
from selfplay import schema
from selfplay.config import load_config
from tests.rows import make_row

GOAL = ">= 0.5"
REPEATS = 3


def waves(n: int, games: int, seed: int) -> list[pa.Table]:
    """n waves of `games` TicTacToe games of 5-9 turns, each wave a version newer."""
    rng = np.random.default_rng(seed)
    out = []
    for w in range(n):
        rows = []
        for g in range(games):
            for t in range(int(rng.integers(5, 10))):
                rows.append(
                    make_row(
                        traj_id=f"w{w}-g{g}",
                        turn=t,
                        role=t % 2,
                        policy_version=w,
                        prompt_ids=rng.integers(6, 100, 23).tolist(),
                        response_ids=[int(rng.integers(6, 100))],
                        behaviour_logprobs=[-1.5],
                        response_text=str(t + 1),
                    )
                )
        out.append(schema.from_rows(rows))
    return out


def run_buffer(data: list[pa.Table], batch: int) -> tuple[float, int, ReplayBuffer, list[list[int]]]:
    """The buffer takes the waves; after each, batches while its rate limit allows. Also
    returns the sizes of the batches handed out after each wave (whole games: each at
    least `batch` turns), for the raw loop to take the same."""
    cfg = load_config("configs/tictactoe.yaml", []).buffer
    buf = ReplayBuffer(cfg, seed=0)
    moved, version, plan = 0, 0, []
    start = time.perf_counter()
    for wave in data:
        buf.add(wave)
        moved += wave.num_rows
        plan.append([])
        while (out := buf.sample(batch, version)) is not None:
            moved += out.num_rows
            plan[-1].append(out.num_rows)
            version += 1
    return time.perf_counter() - start, moved, buf, plan


def run_raw(data: list[pa.Table], capacity: int, plan: list[list[int]]) -> tuple[float, int]:
    rng = np.random.default_rng(0)
    table = data[0].slice(0, 0)
    moved = 0
    start = time.perf_counter()
    for wave, sizes in zip(data, plan):
        table = pa.concat_tables([table, wave]).combine_chunks()
        table = table.slice(max(table.num_rows - capacity, 0))
        moved += wave.num_rows
        for size in sizes:
            moved += table.take(pa.array(rng.integers(0, table.num_rows, size))).num_rows
    return time.perf_counter() - start, moved


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--waves", type=int, default=200)
    p.add_argument("--games", type=int, default=64)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--results", type=Path, default=None)
    args = p.parse_args(argv)
    data = waves(args.waves, args.games, seed=0)
    ours, raw = [], []
    for _ in range(REPEATS):  # side by side, alternating; the median of each
        ours_s, ours_rows, buf, plan = run_buffer(data, args.batch)
        raw_s, raw_rows = run_raw(data, buf.cfg.capacity, plan)
        ours.append(ours_rows / ours_s)
        raw.append(raw_rows / raw_s)
    ours, raw = sorted(ours)[REPEATS // 2], sorted(raw)[REPEATS // 2]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "buffer.parquet"
        schema.write_parquet(buf.table, path)
        parquet_bytes = path.stat().st_size / buf.table.num_rows
    figures = {
        "insert_sample_vs_raw_pyarrow": figure(ours / raw, GOAL, note=f"{ours:,.0f} vs {raw:,.0f} rows/s"),
        "bytes_per_turn_in_memory": figure(buf.table.nbytes / buf.table.num_rows, None),
        "bytes_per_turn_parquet": figure(parquet_bytes, None),
    }
    write(
        "buffer",
        figures,
        machine(),
        args.results or RESULTS,
        waves=args.waves,
        turns_inserted=buf.counts["inserted"],
        batches=sum(len(sizes) for sizes in plan),
        counts=buf.counts,
        buffer_rows_per_s=ours,
        raw_rows_per_s=raw,
    )
    for name, f in figures.items():
        print(f"{name}: {f['value']:.3g} {f.get('note', '')}")
    return figures


if __name__ == "__main__":
    main()
