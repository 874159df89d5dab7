"""The driver's watchdog (selfplay/driver.py): a run whose learner stops stepping fails
with what every part was doing, rather than hanging."""

from __future__ import annotations

from selfplay.driver import Watchdog


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_watchdog_fires_only_after_the_step_stood_still_for_the_limit():
    clock = Clock()
    dog = Watchdog(step=10, limit_s=60, clock=clock)
    clock.now = 60  # exactly the limit: not yet
    assert not dog.stalled(10)
    clock.now = 60.001
    assert dog.stalled(10)


def test_a_step_resets_the_watchdog_and_a_missing_reading_does_not():
    clock = Clock()
    dog = Watchdog(step=10, limit_s=60, clock=clock)
    clock.now = 50
    assert not dog.stalled(11)  # moved: the clock starts again at 50
    clock.now = 100
    assert not dog.stalled(None)
    clock.now = 111
    assert dog.stalled(None) and dog.step == 11
