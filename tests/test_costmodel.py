"""The cost model (selfplay/costmodel.py) on hand-computed values."""

from __future__ import annotations

import pytest

from selfplay.costmodel import Parts, Workload, learner_step_s, predict

WORK = Workload(batch_rows=100, row_tokens=10, reply_tokens=2, wave_rows=50, ahead_rows=200)


def test_the_learner_step_counts_its_tokens_its_ranks_and_its_share_of_a_broadcast():
    parts = Parts(
        gen_tokens_per_s=1000, learner_tokens_per_s=500, broadcast_s=0.5, broadcast_s_per_engine=0.1
    )
    # 1000 tokens at 500/s, plus 0.5 s + 2 further engines x 0.1 s
    assert learner_step_s(parts, WORK, ranks=1, engines=3) == pytest.approx(2.0 + 0.7)
    # 2 ranks at 90% for the second: 1000 / 950 s; a broadcast every 2 steps: half of it
    every_2 = Workload(**{**WORK.__dict__, "broadcast_every": 2})
    assert learner_step_s(parts, every_2, ranks=2, engines=1) == pytest.approx(1000 / 950 + 0.25)


def test_separate_devices_go_as_fast_as_the_slowest_part():
    parts = Parts(gen_tokens_per_s=100, learner_tokens_per_s=1000)  # 50 rows/s per engine; learner 100 rows/s
    one = predict(parts, WORK, engines=1)
    assert one["bound"] == "generation" and one["rows_per_s"] == pytest.approx(50)
    assert one["busy"] == {"generation": 1.0, "learner": pytest.approx(0.5)}
    # 2 s between steps; a wave of 50 rows takes 1 s; nothing queues: half a wave over 2 s
    assert one["staleness"] == pytest.approx(0.25)
    four = predict(parts, WORK, engines=4)
    assert four["bound"] == "learner" and four["rows_per_s"] == pytest.approx(100)
    # 1 s between steps; a wave takes an engine 1 s; ahead: 200 rows + 4 waves of 50 = 4 s
    assert four["staleness"] == pytest.approx((1 + 4) / 2 / 1)
    capped = predict(Parts(100, 1000, verifier_rows_per_s=60), WORK, engines=4)
    assert capped["bound"] == "verifier" and capped["rows_per_s"] == 60


def test_shared_cores_add_the_work_of_generation_and_learning():
    parts = Parts(gen_tokens_per_s=200, learner_tokens_per_s=1000)  # 100 rows/s each, alone
    both = predict(parts, WORK, engines=1, shared_cores=True)
    assert both["bound"] == "shared cores" and both["rows_per_s"] == pytest.approx(50)
    # 2 s between steps; the engine plays at the run's 50 rows/s: a wave 1 s; 250 rows ahead: 5 s
    assert both["staleness"] == pytest.approx((1 + 5) / 2 / 2)
    # engines beyond the cores add nothing
    limited = Parts(gen_tokens_per_s=200, learner_tokens_per_s=10**9, max_busy_engines=2)
    assert predict(limited, WORK, engines=4)["capacity"]["generation"] == pytest.approx(200)
    # and each of the 4 plays its waves at half an engine's speed: as 4 half-speed engines,
    # whose rows are as old when trained (it read them at a whole engine's speed: half as old)
    half = Parts(gen_tokens_per_s=100, learner_tokens_per_s=10**9)
    assert predict(limited, WORK, engines=4)["staleness"] == pytest.approx(
        predict(half, WORK, engines=4)["staleness"]
    )


def test_a_run_needs_an_engine_and_a_rank():
    with pytest.raises(ValueError, match="needs an engine"):
        predict(Parts(1, 1), WORK, engines=0)
    with pytest.raises(ValueError, match=r"needs an engine and a learner rank \(got 1, 0\)"):
        predict(Parts(1, 1), WORK, engines=1, ranks=0)


def test_scaling_md_shows_what_the_model_prints():
    """cluster/SCALING.md's tables are `python -m cluster.scaling`'s output, from the
    per-part rates in bench/results/ (a new `make bench` asks for them again)."""
    from pathlib import Path

    from cluster import scaling

    doc = (Path(__file__).resolve().parent.parent / "cluster" / "SCALING.md").read_text()
    assert "\n".join(scaling.check_here()) in doc
    for title, *scenario in scaling.SCENARIOS:
        assert f"{title}:\n\n" + "\n".join(scaling.cluster_table(*scenario)) in doc
