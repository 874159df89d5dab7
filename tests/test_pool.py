"""The generator pool's protocols (actors/pool.py), without Ray: the real learner service
on a tiny model, generators that play counted waves until stopped, calls carried by
LocalTransport's threads. The same protocols run on a real cluster in test_cluster.py."""

from __future__ import annotations

import threading
import time

import pytest

from actors.pool import GeneratorPool
from learner.learner import Learner
from learner.service import LearnerService
from selfplay.config import load_config
from selfplay.model import create_default_model
from selfplay.transport import LocalTransport
from tests.test_learner_service import Receiver, batch


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(create_default_model(tmp_path_factory.mktemp("m"), preset="1m", max_positions=64))


class WaveGenerator(Receiver):
    """Loads weights as an engine does (checksum of what arrived) and plays waves of
    `wave` games until stopped; records the order of what happened to it."""

    def __init__(
        self,
        name: str,
        wave: int = 4,
        fail_start: bool = False,
        hang_start: bool = False,
        crash_after: int | None = None,
    ):
        super().__init__()
        self.name = name
        self.wave = wave
        self.fail_start = fail_start
        self.hang_start = hang_start
        self.crash_after = crash_after
        self.stopped = threading.Event()
        self.sent = 0
        self.history: list[str] = []

    def stats(self) -> dict:
        if self.fail_start:
            raise RuntimeError(f"{self.name}: engine failed to start")
        if self.hang_start:
            self.stopped.wait()
        version, checksum = self.loads[-1] if self.loads else (0, None)
        return {
            "id": self.name,
            "version": version,
            "checksum": checksum,
            "sent": self.sent,
            "games": self.sent,
            "turns": 5 * self.sent,
            "tokens": 5 * self.sent,
            "wait_s": 0.0,
            "play_s": 0.0,
            "eval_games": 0,
            "eval_turns": 0,
            "eval_tokens": 0,
            "node_id": "local",
        }

    def set_weights(self, blob: bytes, version: int) -> str:
        self.history.append(f"weights v{version}")
        return super().set_weights(blob, version)

    def play_loop(self, verifier, buffer, league=None) -> dict:
        self.history.append("play")
        waves = 0
        while not self.stopped.is_set():
            if self.crash_after is not None and waves == self.crash_after:
                raise RuntimeError(f"{self.name}: engine died")
            self.sent += self.wave
            waves += 1
            time.sleep(0.01)
        return self.stats()

    def stop(self) -> None:
        self.stopped.set()


class Cluster:
    """Spawns and discards WaveGenerators, as selfplay/program.py does actors."""

    def __init__(self, **special):
        self.special = special  # name -> WaveGenerator keyword arguments
        self.spawned: dict[str, WaveGenerator] = {}
        self.discarded: list[str] = []

    def spawn(self, name: str, serial: int) -> WaveGenerator:
        self.spawned[name] = WaveGenerator(name, **self.special.get(name, {}))
        return self.spawned[name]

    def discard(self, name: str, generator: WaveGenerator) -> None:
        generator.stop()
        self.discarded.append(name)


def make_pool(model_dir, cluster: Cluster, overrides=()) -> GeneratorPool:
    cfg = load_config(None, ["learner.batch_size=4", *overrides])
    transport = LocalTransport()
    learner = LearnerService(
        Learner(cfg.learner, cfg.model, model_dir, seed=0), lambda n, v: batch(n), transport
    )
    return GeneratorPool(cfg, transport, cluster.spawn, cluster.discard, learner, verifier=None, buffer=None)


def test_a_new_generator_loads_the_learners_weights_before_it_plays(model_dir):
    cluster = Cluster()
    pool = make_pool(model_dir, cluster)
    status = pool.scale(2)
    assert sorted(status["generators"]) == ["generator-0", "generator-1"]
    checksum = pool.learner.checksum
    for g in cluster.spawned.values():
        assert g.history[:2] == ["weights v0", "play"]
        assert g.loads[0] == (0, checksum)
    starts = [e for e in status["events"] if e["event"] == "start"]
    assert {e["generator"] for e in starts} == {"generator-0", "generator-1"}
    assert all(e["checksum"] == e["generator_checksum"] == checksum for e in starts)
    pool.stop_all()


def test_scaling_down_retires_the_highest_generator_with_its_books_whole(model_dir):
    cluster = Cluster()
    pool = make_pool(model_dir, cluster)
    pool.scale(3)
    status = pool.scale(2)
    assert sorted(status["generators"]) == ["generator-0", "generator-1"]
    (retired,) = status["retired"]
    assert retired["id"] == "generator-2" and retired["sent"] == cluster.spawned["generator-2"].sent > 0
    assert cluster.discarded == ["generator-2"] and "generator-2" not in pool.learner.targets
    final = pool.stop_all()
    assert final["totals"]["sent"] == sum(g.sent for g in cluster.spawned.values())


def test_a_generator_whose_engine_fails_to_start_is_discarded_and_its_name_freed(model_dir):
    cluster = Cluster(**{"generator-1": {"fail_start": True}})
    pool = make_pool(model_dir, cluster)
    pool.scale(1)
    with pytest.raises(RuntimeError, match="engine failed to start"):
        pool.scale(2)
    assert list(pool.live) == ["generator-0"] and cluster.discarded == ["generator-1"]
    assert "generator-1" not in pool.learner.targets
    pool.stop_all()


def test_a_generator_that_does_not_start_in_time_is_named_and_discarded(model_dir):
    cluster = Cluster(**{"generator-0": {"hang_start": True}})
    pool = make_pool(model_dir, cluster)
    with pytest.raises(TimeoutError, match="generator-0 not running after 1 s"):
        pool.scale(1, timeout_s=1.0)
    assert pool.live == {} and cluster.discarded == ["generator-0"]


def test_a_generator_that_stops_playing_on_its_own_is_reported(model_dir):
    cluster = Cluster(**{"generator-1": {"crash_after": 2}})
    pool = make_pool(model_dir, cluster)
    pool.scale(2)
    deadline = time.time() + 10
    with pytest.raises(RuntimeError, match="engine died"):
        while time.time() < deadline:
            pool.check()
            time.sleep(0.01)
    assert cluster.spawned["generator-0"].stopped.is_set() is False
    cluster.spawned["generator-0"].stop()


def test_after_stop_all_the_pool_no_longer_changes(model_dir):
    cluster = Cluster()
    pool = make_pool(model_dir, cluster)
    pool.scale(1)
    pool.stop_all()
    assert cluster.spawned["generator-0"].stopped.is_set()
    with pytest.raises(RuntimeError, match="training has ended"):
        pool.scale(2)


def test_autoscale_grows_the_pool_while_the_learner_waits(model_dir):
    cluster = Cluster()
    pool = make_pool(
        model_dir, cluster, ["autoscale.enabled=true", "autoscale.cooldown_s=0", "autoscale.max_generators=2"]
    )
    pool.scale(1)
    assert pool.autoscale(learner_wait_s=0.0) is None  # the first tick only takes a reading
    time.sleep(0.2)
    assert pool.autoscale(learner_wait_s=10.0) == 2  # waited the whole interval: one more
    deadline = time.time() + 10
    while len(pool.live) < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert sorted(pool.live) == ["generator-0", "generator-1"]
    assert [e["event"] for e in pool.status()["events"]] == ["start", "autoscale", "start"]
    pool.stop_all()
