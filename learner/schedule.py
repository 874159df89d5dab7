"""The learning rate over a run, and the weights average's decay: pure functions of how far
the run has gone.

A run ends at `total_steps` or at `time_limit_min`, whichever comes first; a time-limited
run does not know its last step in advance, so its progress is the larger of the two
fractions (as nanochat and cleanrl anneal over a known horizon, here the horizon that
binds). The driver sets the learner's rate from these between chunks of `log_every` steps.
"""

from __future__ import annotations

import math


def run_progress(step: int, total_steps: int, elapsed_s: float, time_limit_s: float) -> float:
    """How far the run is towards its end, in [0, 1]: the larger of step / total_steps and
    elapsed_s / time_limit_s (time_limit_s 0: no time limit, steps alone)."""
    by_steps = step / total_steps if total_steps > 0 else 0.0
    by_time = elapsed_s / time_limit_s if time_limit_s > 0 else 0.0
    return min(max(by_steps, by_time, 0.0), 1.0)


def scheduled_lr(lr: float, schedule: str, progress: float, final: float, decay_from: float = 0.0) -> float:
    """The learning rate at `progress` (in [0, 1], clamped): `constant` keeps `lr`;
    `linear` and `cosine` hold `lr` until `decay_from`, then go to `lr * final` at 1, in a
    straight line or along half a cosine (SGDR's, without restarts). `decay_from` 0 decays
    over the whole run; later, the run trains at `lr` and settles over its last part
    (nanochat's warmdown, the "stable-decay" of warmup-stable-decay schedules)."""
    if not 0.0 <= decay_from < 1.0:
        raise ValueError(f"learner.lr_decay_from: must be in [0, 1), got {decay_from!r}")
    p = min(max((progress - decay_from) / (1.0 - decay_from), 0.0), 1.0)
    if schedule == "constant":
        return lr
    if schedule == "linear":
        left = 1.0 - p
    elif schedule == "cosine":
        left = 0.5 * (1.0 + math.cos(math.pi * p))
    else:
        raise ValueError(
            f"learner.lr_schedule: unknown schedule {schedule!r}; choose constant, linear or cosine"
        )
    return lr * (final + (1.0 - final) * left)


def ema_decay(decay: float, updates: int) -> float:
    """The decay of the weights' moving average at its `updates`-th update
    (learner.ema_decay): min(decay, (1 + updates) / (10 + updates)), warmed up as
    TensorFlow's ExponentialMovingAverage with num_updates does, so the first updates do
    not hold the average at the initial weights (a plain 0.99 would keep 0.99^50 = 0.6 of
    them after 50 steps). Then new = decay * average + (1 - decay) * weights."""
    return min(decay, (1.0 + updates) / (10.0 + updates))
