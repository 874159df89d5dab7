"""The learning-rate schedule (learner/schedule.py) on hand-computed values."""

from __future__ import annotations

import math

import pytest

from learner.schedule import ema_decay, run_progress, scheduled_lr
from selfplay.config import ConfigError, load_config


def test_progress_is_the_larger_of_the_step_and_time_fractions():
    assert run_progress(200, 1000, 300.0, 900.0) == pytest.approx(1 / 3)  # time binds: 300/900
    assert run_progress(600, 1000, 300.0, 900.0) == pytest.approx(0.6)  # steps bind
    assert run_progress(250, 1000, 1e9, 0.0) == pytest.approx(0.25)  # no time limit: steps alone
    assert run_progress(1200, 1000, 0.0, 0.0) == 1.0  # clamped
    assert run_progress(0, 1000, 0.0, 900.0) == 0.0


def test_linear_and_cosine_go_from_lr_to_lr_times_final():
    lr, final = 1e-3, 0.1
    assert scheduled_lr(lr, "constant", 0.7, final) == lr
    assert scheduled_lr(lr, "linear", 0.0, final) == pytest.approx(1e-3)
    assert scheduled_lr(lr, "linear", 0.25, final) == pytest.approx(7.75e-4)  # 0.1 + 0.9 * 0.75
    assert scheduled_lr(lr, "linear", 1.0, final) == pytest.approx(1e-4)
    assert scheduled_lr(lr, "cosine", 0.5, final) == pytest.approx(5.5e-4)  # half way: 0.1 + 0.9 / 2
    # at a quarter: (1 + cos(pi / 4)) / 2 = 0.853553 left of the way down
    assert scheduled_lr(lr, "cosine", 0.25, final) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.853553), rel=1e-5)
    assert scheduled_lr(lr, "cosine", 1.0, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert scheduled_lr(lr, "linear", 1.5, final) == pytest.approx(1e-4)  # progress clamped
    assert math.isclose(scheduled_lr(2e-4, "linear", 0.5, 0.5), 1.5e-4)
    with pytest.raises(ValueError, match="learner.lr_schedule"):
        scheduled_lr(lr, "step", 0.5, final)


def test_a_late_decay_holds_the_rate_then_decays_over_the_rest():
    lr, final = 1e-3, 0.1
    assert scheduled_lr(lr, "linear", 0.3, final, decay_from=0.6) == lr  # held
    assert scheduled_lr(lr, "linear", 0.6, final, decay_from=0.6) == pytest.approx(1e-3)
    assert scheduled_lr(lr, "linear", 0.8, final, decay_from=0.6) == pytest.approx(5.5e-4)  # half of the rest
    assert scheduled_lr(lr, "linear", 0.9, final, decay_from=0.6) == pytest.approx(3.25e-4)  # 0.1 + 0.9 / 4
    assert scheduled_lr(lr, "cosine", 0.8, final, decay_from=0.6) == pytest.approx(5.5e-4)
    assert scheduled_lr(lr, "linear", 1.0, final, decay_from=0.6) == pytest.approx(1e-4)
    assert scheduled_lr(lr, "constant", 0.9, final, decay_from=0.6) == lr
    with pytest.raises(ValueError, match="learner.lr_decay_from"):
        scheduled_lr(lr, "linear", 0.5, final, decay_from=1.0)


def test_config_names_a_bad_schedule_field():
    assert load_config(None, ["learner.lr_schedule=cosine"]).learner.lr_schedule == "cosine"
    with pytest.raises(ConfigError, match="learner.lr_schedule"):
        load_config(None, ["learner.lr_schedule=step"])
    with pytest.raises(ConfigError, match="learner.lr_final"):
        load_config(None, ["learner.lr_final=1.5"])
    with pytest.raises(ConfigError, match="learner.lr_decay_from"):
        load_config(None, ["learner.lr_decay_from=1"])


def test_the_averages_decay_warms_up_to_its_setting():
    assert ema_decay(0.99, 0) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay(0.99, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.99, 90) == pytest.approx(0.91)  # 91 / 100
    assert ema_decay(0.99, 890) == pytest.approx(0.99)  # 891 / 900 = 0.99: the setting from here
    assert ema_decay(0.99, 5000) == 0.99
    assert ema_decay(0.5, 1) == pytest.approx(2 / 11) and ema_decay(0.5, 8) == 0.5  # 9 / 18


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_an_ema_decay_outside_0_to_1_is_refused_by_name(value):
    with pytest.raises(ConfigError, match="learner.ema_decay: must be in"):
        load_config(None, [f"learner.ema_decay={value}"])


def test_a_resumed_session_keeps_the_runs_time_limit_and_its_schedule():
    """A run killed 13 minutes into its 15 and resumed with the same command trains 2 more
    minutes, at the rate it had reached (before: a fresh 15 minutes, the rate back near lr)."""
    import dataclasses
    import time
    import types

    from selfplay import driver
    from selfplay.config import RunConfig

    cfg = RunConfig(total_steps=2000, time_limit_min=15)
    cfg = dataclasses.replace(
        cfg, learner=dataclasses.replace(cfg.learner, lr=3e-4, lr_schedule="linear", lr_final=0.1)
    )

    def session(wall_offset: float, in_session_s: float) -> types.SimpleNamespace:
        now = time.time()
        run = types.SimpleNamespace(cfg=cfg, step=300, start=now - in_session_s, wall_offset=wall_offset)
        run.wall = types.MethodType(driver.Run.wall, run)
        run.rates = driver.Run.scheduled_rates(run, 2)
        run.left_s = driver.Run.deadline(run) - now
        return run

    first = session(0.0, 13 * 60)  # killed here, its checkpoint at 13 minutes
    resumed = session(13 * 60, 0.0)
    assert first.left_s == pytest.approx(120, abs=1) and resumed.left_s == pytest.approx(120, abs=1)
    # linear from 3e-4 to 3e-5 over the run: 13/15 of the way (time binds: 300/2000 steps)
    for run in (first, resumed):
        assert run.rates == [pytest.approx(3e-4 * (1 - 0.9 * 13 / 15), rel=1e-3)] * 2
    assert driver.Run.deadline(types.SimpleNamespace(cfg=RunConfig(time_limit_min=0))) == float("inf")


def test_each_step_of_a_chunk_takes_its_own_rate():
    """By steps, every step's rate follows the schedule: a chunk of 5 steps of a 100-step run
    decaying from 0.9 took one rate (the last chunk 0.55 lr, never lr_final's 0.1)."""
    import dataclasses
    import time
    import types

    from selfplay import driver
    from selfplay.config import RunConfig

    cfg = RunConfig(total_steps=100)
    cfg = dataclasses.replace(
        cfg,
        learner=dataclasses.replace(
            cfg.learner, lr=1.0, lr_schedule="linear", lr_final=0.1, lr_decay_from=0.9
        ),
    )
    run = types.SimpleNamespace(cfg=cfg, step=95, start=time.time(), wall_offset=0.0)
    run.wall = types.MethodType(driver.Run.wall, run)
    # steps 96..100, taken at progress 0.95 .. 0.99: 1 - 0.9 (p - 0.9) / 0.1
    assert driver.Run.scheduled_rates(run, 5) == pytest.approx([0.55, 0.46, 0.37, 0.28, 0.19])
