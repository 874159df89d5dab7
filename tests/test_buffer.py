"""Replay buffer: staleness, FIFO capacity, the sample/insert rate limit, save/load.
Exercises the plain ReplayBuffer; no Ray is started."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from actors.buffer import (
    ReplayBuffer,
    insert_allowed,
    pick_rows,
    reserve_order,
    sample_allowed,
    staleness_floor,
)
from selfplay import schema
from selfplay.config import BufferConfig, BuilderConfig
from tests.rows import make_row, make_task_row


def turns(versions: list[int], prefix: str = "t") -> pa.Table:
    """One row per version, traj_id '<prefix><index>' so rows can be told apart."""
    return schema.from_rows(
        [make_row(traj_id=f"{prefix}{i}", policy_version=v) for i, v in enumerate(versions)]
    )


def buffer(**cfg) -> ReplayBuffer:
    """Generous defaults so each test only sets the limit it is about."""
    base = dict(capacity=1000, max_staleness=100, samples_per_insert=1.0, spi_tolerance=10_000, min_size=1)
    return ReplayBuffer(BufferConfig(**{**base, **cfg}), seed=0)


def ids(table) -> list[str]:
    return table["traj_id"].to_pylist()


# ---- pure rules -----------------------------------------------------------------------


def test_pick_rows_takes_the_least_sampled_first():
    times = np.array([2, 0, 1, 0, 3, 0])
    rng = np.random.default_rng(0)
    assert pick_rows(times, None, 3, rng, least_sampled=True).tolist() == [1, 3, 5]  # the three 0s
    assert pick_rows(times, None, 4, rng, least_sampled=True).tolist() == [1, 2, 3, 5]  # then the 1


def test_pick_rows_takes_nothing_for_no_rows():
    # a batch whose replayed share rounds to all of it asks the buffer for 0 rows: it took one
    times = np.zeros(5, dtype=np.int64)
    for least_sampled in (True, False):
        assert pick_rows(times, None, 0, np.random.default_rng(0), least_sampled).tolist() == []
        assert (
            pick_rows(times, np.array([0, 0, 1, 1, 2]), 0, np.random.default_rng(0), least_sampled).tolist()
            == []
        )


def test_pick_rows_breaks_ties_at_random():
    times = np.zeros(10, dtype=np.int64)
    picks = {tuple(pick_rows(times, None, 3, np.random.default_rng(s), True)) for s in range(20)}
    assert len(picks) > 10


def test_pick_rows_takes_whole_games_until_they_hold_n_rows():
    # games 0 (3 rows), 1 (2 rows), 2 (1 row); game 1 sampled once already (its max)
    groups = np.array([0, 1, 0, 2, 1, 0])
    times = np.array([0, 1, 0, 0, 0, 0])
    rng = np.random.default_rng(0)
    rows = pick_rows(times, groups, 4, rng, least_sampled=True)
    assert rows.tolist() == [0, 2, 3, 5]  # games 0 and 2 (never sampled): 4 rows
    rows = pick_rows(times, groups, 5, rng, least_sampled=True)
    assert rows.tolist() == [0, 1, 2, 3, 4, 5]  # 4 rows are not enough: game 1 too


def test_uniform_pick_rows_ignores_times():
    times = np.array([5, 0, 5, 0])
    picks = {tuple(pick_rows(times, None, 2, np.random.default_rng(s), False)) for s in range(20)}
    assert any(0 in p for p in picks)
    assert len(picks) > 3 and any(0 not in p for p in picks)  # drawn at random, not the first rows


def test_staleness_floor():
    assert staleness_floor(5, 2) == 3
    assert staleness_floor(5, 0) == 5
    assert staleness_floor(1, 4) == -3


def test_insert_allowed_up_to_and_including_tolerance():
    # inserted * spi - sampled: 10 * 2 - 12 = 8 <= 8; 10 * 2 - 11 = 9 > 8 (buffer at min_size)
    assert insert_allowed(10, 12, 2.0, 8, size=5, min_size=5)
    assert not insert_allowed(10, 11, 2.0, 8, size=5, min_size=5)
    assert insert_allowed(0, 0, 2.0, 0, size=0, min_size=0)


def test_insert_always_allowed_below_min_size():
    # 10 * 2 - 0 = 20 > 8, but with 4 < 5 rows the learner cannot sample: refusing would deadlock
    assert insert_allowed(10, 0, 2.0, 8, size=4, min_size=5)
    assert not insert_allowed(10, 0, 2.0, 8, size=5, min_size=5)


def test_stale_drops_below_min_size_do_not_deadlock():
    buf = buffer(samples_per_insert=2.0, spi_tolerance=0, min_size=4, max_staleness=0)
    buf.add(turns([0, 0, 0, 0]))
    assert not buf.can_insert()  # 4 * 2 - 0 = 8 > 0 with 4 rows held
    assert buf.sample(4, learner_version=1) is None  # all four are stale now and dropped
    assert buf.can_insert()  # 0 rows < min_size 4: generators must be let in


def test_sample_allowed_rate_boundary():
    # sampled + n - inserted * spi: 20 + 8 - 10 * 2 = 8 <= 8; with n = 9 it is 9 > 8
    assert sample_allowed(10, 20, 8, 2.0, 8, size=100, min_size=1)
    assert not sample_allowed(10, 20, 9, 2.0, 8, size=100, min_size=1)


def test_sample_allowed_size_boundary():
    assert sample_allowed(10, 0, 4, 1.0, 0, size=8, min_size=8)
    assert not sample_allowed(10, 0, 4, 1.0, 0, size=7, min_size=8)
    # more than the buffer holds is never allowed, whatever min_size says
    assert not sample_allowed(100, 0, 12, 1.0, 0, size=10, min_size=4)
    assert sample_allowed(100, 0, 10, 1.0, 0, size=10, min_size=4)


# ---- ReplayBuffer ---------------------------------------------------------------------


def test_stale_samples_are_dropped():
    buf = buffer(max_staleness=2)
    assert buf.add(turns([0, 1, 2, 3, 4, 5])) == 6
    out = buf.sample(3, learner_version=5)  # floor 5 - 2 = 3: versions 0, 1, 2 go
    assert out["policy_version"].to_pylist() == [3, 4, 5]
    assert buf.table["policy_version"].to_pylist() == [3, 4, 5]
    assert buf.counts == {
        "inserted": 6,
        "sampled": 3,
        "dropped_stale": 3,
        "evicted": 0,
        "dropped_unsampled": 3,
        "evicted_unsampled": 0,
    }
    assert buf.learner_version == 5


def test_stale_rows_out_of_insertion_order_are_dropped_where_they_sit():
    """A slow generator's older wave lands after a newer one: the stale rows are not the
    oldest inserted (no slice can drop them), and every sampled-count stays with its row."""
    buf = buffer(max_staleness=2)
    buf.add(turns([4, 5, 1, 6, 2, 3, 7]))
    buf.sample(7, learner_version=0)  # every row sampled once
    buf.add(turns([8], prefix="new"))
    buf.sample(1, learner_version=6)  # floor 4: versions 1, 2, 3 go
    assert buf.table["policy_version"].to_pylist() == [4, 5, 6, 7, 8]
    assert buf.times.tolist() == [1, 1, 1, 1, 1]
    assert buf.counts["dropped_stale"] == 3 and buf.counts["dropped_unsampled"] == 0


def test_learner_version_never_goes_back():
    buf = buffer(max_staleness=2)
    buf.add(turns([3, 4, 5]))
    buf.sample(1, learner_version=5)
    buf.sample(1, learner_version=1)
    assert buf.learner_version == 5


def test_stale_rows_are_dropped_at_insert_after_learner_advanced():
    buf = buffer(max_staleness=2, min_size=10)
    assert buf.sample(1, learner_version=5) is None  # empty, but the learner is now at 5
    assert buf.add(turns([1, 2, 3, 4])) == 2
    assert buf.table["policy_version"].to_pylist() == [3, 4]
    assert buf.counts["dropped_stale"] == 2
    assert buf.counts["inserted"] == 4  # the rate limit counts what generators produced


def test_capacity_evicts_oldest_rows_first():
    buf = buffer(capacity=4)
    buf.add(turns([0, 0, 0], prefix="a"))
    buf.add(turns([0, 0, 0], prefix="b"))
    assert ids(buf.table) == ["a2", "b0", "b1", "b2"]
    assert buf.counts["evicted"] == 2
    assert len(buf) == 4


def test_one_insert_larger_than_capacity_keeps_its_newest_rows():
    buf = buffer(capacity=4)
    assert buf.add(turns([0] * 6)) == 6  # kept = not stale; eviction is counted apart
    assert ids(buf.table) == ["t2", "t3", "t4", "t5"]
    assert buf.counts["evicted"] == 2


def test_sample_waits_below_min_size():
    buf = buffer(min_size=5)
    buf.add(turns([0, 0, 0, 0]))
    assert buf.sample(1, learner_version=0) is None
    assert buf.counts["sampled"] == 0
    buf.add(turns([0], prefix="late"))
    assert buf.sample(1, learner_version=0).num_rows == 1


def test_sample_waits_when_rate_limit_says_so():
    buf = buffer(samples_per_insert=1.0, spi_tolerance=0)
    buf.add(turns([0, 0, 0, 0]))
    assert buf.sample(4, learner_version=0).num_rows == 4  # 0 + 4 - 4 * 1 = 0 <= 0
    assert buf.sample(1, learner_version=0) is None  # 4 + 1 - 4 = 1 > 0
    assert buf.counts["sampled"] == 4
    buf.add(turns([0], prefix="n"))
    assert buf.sample(1, learner_version=0).num_rows == 1  # 4 + 1 - 5 = 0


def test_sample_returns_n_distinct_rows():
    buf = buffer()
    buf.add(turns([0] * 20))
    out = buf.sample(10, learner_version=0)
    assert out.num_rows == 10
    assert len(set(ids(out))) == 10
    assert set(ids(out)) <= {f"t{i}" for i in range(20)}
    assert out.schema.equals(schema.SCHEMA)
    assert buf.counts["sampled"] == 10
    assert len(buf) == 20  # sampling does not remove


def test_can_insert_flips_at_tolerance():
    buf = buffer(samples_per_insert=2.0, spi_tolerance=8)
    buf.add(turns([0, 0, 0, 0]))
    assert buf.can_insert()  # 4 * 2 - 0 = 8 <= 8
    buf.add(turns([0], prefix="x"))
    assert not buf.can_insert()  # 5 * 2 - 0 = 10 > 8
    buf.sample(2, learner_version=0)
    assert buf.can_insert()  # 10 - 2 = 8 <= 8


def test_add_refuses_a_table_without_the_schema():
    buf = buffer()
    with pytest.raises(schema.SchemaError):
        buf.add(pa.table({"policy_version": [0]}))
    assert len(buf) == 0


def test_stats_report_size_and_oldest_version():
    buf = buffer()
    assert buf.stats()["oldest_version"] is None
    buf.add(turns([4, 2, 7]))
    stats = buf.stats()
    assert stats["size"] == 3
    assert stats["oldest_version"] == 2
    assert stats["inserted"] == 3


def test_save_then_load_restores_table_counts_and_rng(tmp_path):
    a = buffer(max_staleness=3)
    a.add(turns(list(range(20))))
    a.sample(4, learner_version=18)  # drops versions < 15 and advances the rng
    a.save(tmp_path)

    b = ReplayBuffer(a.cfg, seed=12345)
    b.load(tmp_path)
    assert b.table.equals(a.table)
    assert b.counts == a.counts
    assert b.learner_version == 18
    for _ in range(3):
        assert ids(b.sample(2, learner_version=18)) == ids(a.sample(2, learner_version=18))


def test_least_sampled_trains_on_every_turn_once_before_any_twice():
    buf = buffer()
    buf.add(turns([0] * 12))
    seen = [t for _ in range(3) for t in ids(buf.sample(4, learner_version=0))]
    assert sorted(seen) == sorted(f"t{i}" for i in range(12))
    assert buf.times.tolist() == [1] * 12


def test_turns_that_leave_never_sampled_are_counted_apart():
    buf = buffer(capacity=4, max_staleness=1)
    buf.add(turns([0, 0, 0]))
    buf.sample(3, learner_version=0)  # t0 t1 t2 each sampled once
    buf.add(turns([1, 1, 1], prefix="x"))  # over capacity: t0 and t1 go, both sampled
    assert (buf.counts["evicted"], buf.counts["evicted_unsampled"]) == (2, 0)
    buf.sample(1, learner_version=2)  # t2 (version 0) is stale now, but was sampled; one x is
    assert (buf.counts["dropped_stale"], buf.counts["dropped_unsampled"]) == (1, 0)
    buf.add(turns([0], prefix="late"))  # stale at insert: never sampled
    assert (buf.counts["dropped_stale"], buf.counts["dropped_unsampled"]) == (2, 1)
    buf.add(turns([2, 2, 2, 2], prefix="y"))  # x0 x1 x2 go: one of them was sampled
    assert (buf.counts["evicted"], buf.counts["evicted_unsampled"]) == (5, 2)
    assert buf.stats()["evicted_unsampled"] == 2
    assert buf.stats()["never_trained"] == 1 + 2  # "late", and two of x0 x1 x2


def test_whole_games_are_sampled_together():
    rows = [make_row(traj_id=f"g{g}", turn=t) for g in range(5) for t in range(3)]
    buf = buffer(whole_games=True)
    buf.add(schema.from_rows(rows))
    out = buf.sample(4, learner_version=0)
    games = ids(out)
    assert out.num_rows == 6 and all(games.count(g) == 3 for g in set(games))
    assert buf.counts["sampled"] == 6


# ---- task runs: the builder, the reserve, the supervised stage ---------------------------


def task_buffer(builder: BuilderConfig, **cfg) -> ReplayBuffer:
    base = dict(capacity=1000, max_staleness=100, samples_per_insert=1.0, spi_tolerance=10_000, min_size=1)
    return ReplayBuffer(BufferConfig(**{**base, **cfg}), seed=0, builder=builder)


def groups(*rewards_per_group: list[float], version: int = 0) -> pa.Table:
    """One group per list of rewards, g0, g1, ...; each sample's reply is its index."""
    return schema.from_rows(
        [
            make_task_row(f"g{g}-v{version}", r, str(i), policy_version=version)
            for g, rewards in enumerate(rewards_per_group)
            for i, r in enumerate(rewards)
        ]
    )


def test_held_back_groups_count_neither_as_inserted_nor_against_the_rate():
    buf = task_buffer(BuilderConfig(variance_filter=True), spi_tolerance=0)
    kept = buf.add(groups([1, 0], [1, 1], [0, 0]))
    assert kept == 2 and len(buf) == 2 and buf.reserve.num_rows == 4
    assert buf.counts["inserted"] == 2 and buf.counts["held_since_sample"] == 4
    assert buf.counts["groups_held_back"] == 2 and buf.counts["groups"] == 3


def test_a_batch_that_cannot_fill_is_topped_up_from_the_newest_held_back_groups():
    buf = task_buffer(BuilderConfig(variance_filter=True, fill_after=6), min_size=4)
    buf.add(groups([1, 0], [1, 1], version=0))  # 2 admitted, 2 held back
    assert buf.sample(4, learner_version=0) is None  # 2 rows < 4; only 2 held back so far: wait
    buf.add(groups([0, 0], version=1))  # 4 held back in all: still under fill_after
    assert buf.sample(4, learner_version=1) is None
    buf.add(groups([0, 0], version=2))  # 6 held back: the newest fill the batch, whole groups
    out = buf.sample(4, learner_version=2)
    assert out.num_rows == 4 and buf.counts["filled_from_reserve"] == 2
    assert set(ids(out)) >= {r["traj_id"] for r in groups([0, 0], version=2).to_pylist()}
    assert buf.counts["held_since_sample"] == 0 and buf.reserve.num_rows == 4


def test_stale_held_back_rows_never_fill_a_batch():
    buf = task_buffer(BuilderConfig(variance_filter=True, fill_after=1), max_staleness=1, min_size=2)
    buf.add(groups([1, 1], version=0))
    assert buf.sample(2, learner_version=5) is None and buf.reserve.num_rows == 0


def test_the_supervised_stage_hands_out_every_labelled_row_once_per_epoch_and_holds_generators():
    buf = task_buffer(BuilderConfig(), min_size=1000)
    labelled = schema.from_rows([make_task_row(f"s{i}", 1.0, label="sft") for i in range(6)])
    buf.start_sft(labelled)
    assert not buf.can_insert()
    first = [t for _ in range(3) for t in ids(buf.sample(2, learner_version=0))]
    assert sorted(first) == sorted(ids(labelled))  # one epoch: every row once
    assert buf.sample(4, learner_version=0).num_rows == 4  # epochs run on
    assert buf.counts["sft_sampled"] == 10 and buf.counts["sampled"] == 0
    buf.end_sft()
    assert buf.can_insert() and buf.sample(2, learner_version=0) is None  # back to generated rows


def test_a_resumed_supervised_stage_takes_the_batches_an_uninterrupted_one_would(tmp_path):
    labelled = schema.from_rows([make_task_row(f"s{i}", 1.0, label="sft") for i in range(5)])
    whole = task_buffer(BuilderConfig())
    whole.start_sft(labelled)
    # 3-row batches over a 5-row set: the checkpoint falls mid-epoch, the next epoch's
    # order comes from the saved random state
    expected = [ids(whole.sample(3, learner_version=0)) for _ in range(5)]
    first = task_buffer(BuilderConfig())
    first.start_sft(labelled)
    assert ids(first.sample(3, learner_version=0)) == expected[0]
    first.set_replay(labelled, 0.5)  # a rehearsed set's epoch is kept the same way
    first.replay_order = np.array([4, 0], dtype=np.int64)
    first.save(tmp_path)
    resumed = task_buffer(BuilderConfig())
    resumed.load(tmp_path)
    resumed.start_sft(labelled)  # as the driver hands the set again on resume
    assert [ids(resumed.sample(3, learner_version=0)) for _ in range(4)] == expected[1:]
    resumed.set_replay(labelled, 0.5)
    assert resumed.replay_order.tolist() == [4, 0]
    # a buffer not resumed starts a fresh epoch
    fresh = task_buffer(BuilderConfig())
    fresh.sft_order = np.array([1], dtype=np.int64)
    fresh.start_sft(labelled)
    assert fresh.sft_order.tolist() == []


def test_a_game_buffer_has_no_supervised_stage():
    with pytest.raises(ValueError, match="supervised stage is a task run's"):
        buffer().start_sft(schema.from_rows([make_row()]))


def test_the_reserve_survives_save_and_load(tmp_path):
    a = task_buffer(BuilderConfig(variance_filter=True))
    a.add(groups([1, 0], [1, 1]))
    a.save(tmp_path)
    b = task_buffer(BuilderConfig(variance_filter=True))
    b.load(tmp_path)
    assert b.reserve.equals(a.reserve) and b.counts == a.counts


def test_a_learner_held_by_the_rate_is_filled_from_the_reserve_too():
    """Rows enough for a batch, but the rate says wait (spi 1, tolerance 0: 4 inserted, 4
    sampled); then only agreeing groups arrive, which never count as inserted."""
    buf = task_buffer(BuilderConfig(variance_filter=True, fill_after=4), spi_tolerance=0, min_size=2)
    buf.add(groups([1, 0], [0, 1], version=0))
    assert buf.sample(4, learner_version=0).num_rows == 4  # every row sampled once
    buf.add(groups([1, 0], version=1))  # 2 fresh rows: the rate allows 2 more samples, not 4
    assert buf.sample(4, learner_version=1) is None
    buf.add(groups([1, 1], [0, 0], version=2))  # 4 held back: the rate shortfall (2) is filled
    out = buf.sample(4, learner_version=2)
    assert out is not None and buf.counts["filled_from_reserve"] == 2
    assert buf.counts["inserted"] == 8 and buf.counts["sampled"] == 8


def test_the_reserve_admits_the_groups_whose_rewards_differ_most_first():
    cfg = BuilderConfig(variance_filter=True, min_reward_std=0.45, fill_after=1)
    buf = task_buffer(cfg, min_size=2)
    buf.add(groups([1, 1], [0.2, 0.8], [1, 0.2], [0, 0]))  # stds 0, 0.3, 0.4, 0: all held back
    out = buf.sample(2, learner_version=0)
    assert {r["group_id"] for r in out.to_pylist()} == {"g2-v0"} and buf.reserve.num_rows == 6


def test_held_back_rows_that_go_stale_or_overflow_the_reserve_are_counted():
    buf = task_buffer(
        BuilderConfig(variance_filter=True, fill_after=1), capacity=4, max_staleness=1, min_size=8
    )
    buf.add(groups([1, 1], [0, 0], [1, 1], version=0))  # 6 held back, the reserve keeps 4
    assert buf.counts["reserve_dropped"] == 2 and buf.reserve.num_rows == 4
    assert buf.sample(8, learner_version=5) is None and buf.counts["reserve_dropped"] == 6


def test_the_reserve_ranks_each_roles_group_apart():
    """A solver + checker problem: solvers all right, checkers all wrong. Each role's group
    agrees (std 0, held back); together they would look like the most informative group."""
    rows = [make_task_row("p", 1.0, f"s{i}", role=0) for i in range(2)]
    rows += [make_task_row("p", 0.0, f"c{i}", role=1) for i in range(2)]
    rows += [make_task_row("q", r, f"q{i}", role=0) for i, r in enumerate([0.2, 0.6])]  # std 0.2
    reserve = schema.from_rows(rows)
    assert list(reserve_order(reserve, 2)) == [4, 5]
    assert list(reserve_order(reserve, 0)) == []


def test_a_rate_shortfall_is_filled_counting_each_insert_as_spi_samples():
    """samples_per_insert 2: the rate allows two samples an insert, so the reserve fills
    half as many rows as samples are missing (every test before had spi 1)."""
    buf = task_buffer(
        BuilderConfig(variance_filter=True, fill_after=4), samples_per_insert=2.0, spi_tolerance=0, min_size=2
    )
    buf.add(groups([1, 0], [0, 1], version=0))  # 4 inserted: 8 samples allowed
    assert buf.sample(4, learner_version=0).num_rows == 4 and buf.sample(4, learner_version=0).num_rows == 4
    buf.add(groups([1, 1], [0, 0], version=1))  # held back; ceil((8 + 4 - 0) / 2) - 4 = 2 inserts missing
    assert buf.sample(4, learner_version=1).num_rows == 4
    assert buf.counts["filled_from_reserve"] == 2 and buf.reserve.num_rows == 2


def test_a_batch_larger_than_min_size_is_topped_up_to_the_batch():
    buf = task_buffer(BuilderConfig(variance_filter=True, fill_after=1), min_size=2)
    buf.add(groups([1, 0], [1, 1], [0, 0], version=0))  # 2 admitted, 4 held back
    out = buf.sample(4, learner_version=0)
    assert out is not None and out.num_rows == 4 and buf.counts["filled_from_reserve"] == 2


def test_held_back_rows_at_the_staleness_floor_still_fill_a_batch():
    buf = task_buffer(BuilderConfig(variance_filter=True, fill_after=1), max_staleness=1, min_size=2)
    buf.add(groups([1, 1], version=4))
    out = buf.sample(2, learner_version=5)  # floor 4: version 4 is fresh, as the buffer keeps it
    assert out is not None and out.num_rows == 2 and buf.counts["reserve_dropped"] == 0
