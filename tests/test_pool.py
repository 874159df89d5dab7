"""The generator pool's protocols (actors/pool.py), without Ray: the real learner service
on a tiny model, generators that play counted waves until stopped, calls carried by
LocalTransport's threads. The same protocols run on a real cluster in test_cluster.py."""

from __future__ import annotations

import threading
import time

import pytest

from actors import pool as pool_module
from actors.pool import GeneratorPool
from learner.learner import Learner
from learner.service import LearnerService
from selfplay.config import load_config
from selfplay.model import create_default_model
from selfplay.transport import LocalTransport, PeerDied
from tests.test_learner_service import Receiver, batch
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(create_default_model(tmp_path_factory.mktemp("m"), preset="1m", max_positions=64))


STARTED: list[WaveGenerator] = []  # every wave generator a test made, released after it


@pytest.fixture(autouse=True)
def release_generators():
    """Stop every wave loop a test started, even one that failed midway: a loop left running
    on a LocalTransport worker thread keeps the interpreter from exiting after the run."""
    yield
    for g in STARTED:
        g.stopped.set()
        g.killed.set()
    STARTED.clear()


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
        die_after: int | None = None,
        hang_after: int | None = None,
        freeze_after: int | None = None,
    ):
        super().__init__()
        self.name = name
        self.wave = wave
        self.fail_start = fail_start
        self.hang_start = hang_start
        self.crash_after = crash_after
        self.die_after = die_after  # then every call raises PeerDied, as a killed actor's do
        self.hang_after = hang_after  # then its loop blocks, beats standing still, until killed
        self.freeze_after = freeze_after  # as hang_after, and calls go unanswered too (SIGSTOP)
        self.dead = False
        self.stopped = threading.Event()
        self.killed = threading.Event()
        self.hanging = threading.Event()
        self.beats = 0
        self.matching = False  # a head-to-head match holds its loop
        self.sent = 0
        self.history: list[str] = []
        STARTED.append(self)

    def stats(self) -> dict:
        if self.dead:
            raise PeerDied(self.name)
        if self.freeze_after is not None and self.hanging.is_set():
            self.killed.wait()
            raise PeerDied(self.name)
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
            "beats": self.beats,
            "matching": self.matching,
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
        if self.dead:
            raise PeerDied(self.name)
        self.history.append(f"weights v{version}")
        return super().set_weights(blob, version)

    def play_loop(self, verifier, buffer, league=None) -> dict:
        self.history.append("play")
        waves = 0
        while not self.stopped.is_set():
            self.beats += 1
            if self.crash_after is not None and waves == self.crash_after:
                raise RuntimeError(f"{self.name}: engine died")
            if self.die_after is not None and waves == self.die_after:
                self.dead = True
                raise PeerDied(self.name)
            if waves in (self.hang_after, self.freeze_after):
                self.hanging.set()
                self.killed.wait()
                raise PeerDied(self.name)
            self.sent += self.wave
            waves += 1
            time.sleep(0.01)
        return self.stats()

    def stop(self) -> None:
        self.stopped.set()


class Cluster:
    """Spawns and discards WaveGenerators, as selfplay/program.py does actors."""

    def __init__(self, **special):
        self.special = special  # name -> WaveGenerator keyword arguments (its first start only)
        self.spawned: dict[str, WaveGenerator] = {}
        self.all: list[WaveGenerator] = []  # every generator started, replacements included
        self.discarded: list[str] = []

    def spawn(self, name: str, serial: int) -> WaveGenerator:
        first = all(g.name != name for g in self.all)
        self.spawned[name] = WaveGenerator(name, **(self.special.get(name, {}) if first else {}))
        self.all.append(self.spawned[name])
        return self.spawned[name]

    def discard(self, name: str, generator: WaveGenerator) -> None:
        generator.stop()
        generator.killed.set()
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


def test_a_generator_hung_when_scaled_down_is_failed_and_the_pool_change_ends(model_dir):
    """Before, the pool change waited on its loop for ever, holding the scale lock that the
    end of training (stop_all) takes."""
    cluster = Cluster(**{"generator-1": {"hang_after": 1}})
    pool = make_pool(model_dir, cluster, ["generator.hang_timeout_s=0.5"])
    pool.scale(2)
    pool.check()  # a probe of each generator is under way, as in a run
    assert cluster.spawned["generator-1"].hanging.wait(5)
    status = pool.scale(1)
    assert list(status["generators"]) == ["generator-0"] and cluster.discarded == ["generator-1"]
    assert [(e["generator"], e["reason"]) for e in status["events"] if e["event"] == "failed"] == [
        ("generator-1", "hung: still playing 0.5 s after stop")
    ]
    assert "generator-1" not in pool.learner.targets
    # no book of it is left for a later generator of its name to inherit
    assert all("generator-1" not in books for books in (pool.probes, pool.progress, pool.last_stats))
    pool.scale(2)  # the name again, a new generator: it starts afresh and plays
    assert cluster.spawned["generator-1"] is cluster.all[-1] and "generator-1" in pool.live
    final = pool.stop_all()
    assert sorted(final["generators"]) == ["generator-0", "generator-1"]


def test_a_generator_scaled_down_leaves_no_probe_books_behind(model_dir):
    cluster = Cluster()
    pool = make_pool(model_dir, cluster)
    pool.scale(2)
    # probes sent and read: each generator has books
    wait_for(lambda: pool.check() is not None and "generator-1" in pool.last_stats, 10, "a probe read", 0.05)
    assert all("generator-1" in books for books in (pool.probes, pool.progress, pool.last_stats))
    pool.scale(1)
    assert all("generator-1" not in books for books in (pool.probes, pool.progress, pool.last_stats))
    pool.stop_all()


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


def heal(pool: GeneratorPool, until, timeout_s: float = 10.0) -> None:
    """Check the pool (as the driver does every few seconds) until `until()` holds."""
    deadline = time.time() + timeout_s
    while not until():
        assert time.time() < deadline, pool.status()["events"]
        pool.check()
        time.sleep(0.01)


@pytest.mark.parametrize(
    "fault, reason",
    [
        ({"crash_after": 2}, "failed: RuntimeError: generator-1: engine died"),
        ({"die_after": 2}, "died: PeerDied"),
    ],
)
def test_a_failed_generator_is_replaced_under_its_name_with_the_current_weights(model_dir, fault, reason):
    cluster = Cluster(**{"generator-1": fault})
    pool = make_pool(model_dir, cluster)
    pool.scale(2)
    first = cluster.spawned["generator-1"]
    pool.learner.train(2)  # the replacement must get these weights, not the initial ones
    heal(  # until the replacement has joined and its play (a call on its own thread) began
        pool,
        lambda: (
            cluster.spawned["generator-1"] is not first
            and "generator-1" in pool.live
            and "play" in cluster.spawned["generator-1"].history
        ),
    )
    new = cluster.spawned["generator-1"]
    assert new.history[:2] == ["weights v2", "play"] and new.loads[0] == (2, pool.learner.checksum)
    events = [(e["event"], e.get("generator"), e.get("reason")) for e in pool.status()["events"]]
    assert events[2:] == [("failed", "generator-1", reason), ("start", "generator-1", None)]
    assert cluster.discarded == ["generator-1"] and pool.learner.targets["generator-1"] is new
    assert not cluster.spawned["generator-0"].stopped.is_set()  # the others played on
    final = pool.stop_all()
    assert sorted(final["generators"]) == ["generator-0", "generator-1"]


@pytest.mark.parametrize(
    "fault, reason",
    [
        ({"hang_after": 1}, "hung: its loop stood still for"),  # answers, but plays no more
        ({"freeze_after": 1}, "hung: the probe unanswered for"),  # nothing answers (SIGSTOP)
    ],
)
def test_a_hung_generator_is_replaced_and_the_learner_stops_waiting_for_it(model_dir, fault, reason):
    cluster = Cluster(**{"generator-1": fault})
    pool = make_pool(model_dir, cluster, ["generator.hang_timeout_s=0.5", "learner.ack_timeout_s=0.5"])
    dropped, real_drop = [], pool.learner.drop  # the learner told, not only spared by its replacement

    def drop(name, reason, peer=None):
        dropped.append((name, peer))
        return real_drop(name, reason, peer)

    pool.learner.drop = drop
    pool.scale(2)
    hung = cluster.spawned["generator-1"]
    heal(pool, lambda: hung.killed.is_set() and "generator-1" in pool.live)
    assert hung.hanging.is_set() and dropped[0] == ("generator-1", hung)
    (failed,) = [e for e in pool.status()["events"] if e["event"] == "failed"]
    assert failed["reason"].startswith(reason) and failed["generator"] == "generator-1"
    pool.learner.train(2)
    pool.learner.verify_pending()  # nothing waits on the hung one: it left the broadcast
    assert cluster.spawned["generator-1"].loads[-1] == (2, pool.learner.checksum)
    pool.stop_all()


def test_a_generator_frozen_after_training_is_failed_by_a_check_and_not_replaced(model_dir):
    """After stop_all the generators stay, idle, for the final evaluations: their loops stand
    still by design, and only an unanswered probe tells a frozen one (SIGSTOP) from them.
    Before, nothing probed them, and an evaluation waiting on generator-0 waited for ever."""
    cluster = Cluster(**{"generator-0": {"freeze_after": 10**9}})  # frozen when told, below
    pool = make_pool(model_dir, cluster, ["generator.hang_timeout_s=0.3"])
    pool.scale(2)
    pool.check()  # a probe of each under way, as in a run
    pool.stop_all()
    for _ in range(4):  # idle, loops still, probes answered: longer than the timeout, not hung
        time.sleep(0.4)
        pool.check()
    assert [e["event"] for e in pool.status()["events"]] == ["start", "start"]
    frozen = cluster.spawned["generator-0"]
    frozen.hanging.set()  # its calls go unanswered from now on
    heal(pool, lambda: "generator-0" not in pool.live)
    (failed,) = [e for e in pool.status()["events"] if e["event"] == "failed"]
    assert failed["generator"] == "generator-0" and failed["reason"].startswith(
        "hung: the probe unanswered for"
    )
    assert frozen.killed.is_set() and cluster.discarded == ["generator-0"]
    assert list(pool.live) == ["generator-1"] and len(cluster.all) == 2  # training is over: no replacement
    with pytest.raises(RuntimeError, match="generator-0 is not running"):
        pool.generator("generator-0")  # what the driver's evaluation asks for next


def test_a_generator_frozen_as_it_is_asked_for_is_handed_over_for_the_checks_to_fail(model_dir, monkeypatch):
    """The driver asks the pool for generator-0 before each evaluation, and the pool first
    makes sure it answers. One that froze just then left that call unanswered, and the
    timeout ended the run; now the handle is returned, and the checks that the caller's
    wait runs fail the frozen generator (here the pool's own) as they would any other."""
    monkeypatch.setattr(pool_module, "STATS_WAIT_S", 0.2)
    cluster = Cluster(**{"generator-0": {"freeze_after": 10**9}})
    pool = make_pool(model_dir, cluster, ["generator.hang_timeout_s=0.3"])
    pool.scale(1)
    frozen = cluster.spawned["generator-0"]
    frozen.hanging.set()  # its calls go unanswered from now on
    assert pool.generator("generator-0") is frozen
    heal(pool, lambda: frozen.killed.is_set() and "generator-0" in pool.live)
    assert cluster.spawned["generator-0"] is not frozen
    (failed,) = [e for e in pool.status()["events"] if e["event"] == "failed"]
    assert failed["generator"] == "generator-0" and failed["reason"].startswith("hung: the probe unanswered")
    pool.stop_all()


def test_a_generator_whose_loop_waits_on_a_match_is_not_called_hung(model_dir):
    """A promotion match on generator-0 holds its league members (member_lock) for as long
    as it lasts, and the wave loop waits on them: its beats stand still, but it is not hung.
    The driver checks the pool while it waits on the match; before `matching`, a match
    longer than hang_timeout_s failed generator-0 under it, and each retry failed again."""
    cluster = Cluster(**{"generator-0": {"hang_after": 1}})  # its loop stands still (answering)
    pool = make_pool(model_dir, cluster, ["generator.hang_timeout_s=0.3"])
    pool.scale(1)
    waiting = cluster.spawned["generator-0"]
    waiting.matching = True
    assert waiting.hanging.wait(5)
    for _ in range(4):
        time.sleep(0.4)
        pool.check()
    assert [e["event"] for e in pool.status()["events"]] == ["start"]
    waiting.matching = False  # the match is over and the loop still stands: hung
    heal(pool, lambda: waiting.killed.is_set())
    (failed,) = [e for e in pool.status()["events"] if e["event"] == "failed"]
    assert failed["reason"].startswith("hung: its loop stood still for")
    pool.stop_all()


def test_repairs_that_failed_as_training_ended_do_not_end_the_final_evaluations(model_dir):
    """A repair still starting a generator when stop_all came fails ("training ended while
    generators were starting") and is counted; the checks of the final evaluations' waits
    must not read the count as the pool giving up (no repair is tried after training)."""
    pool = make_pool(model_dir, Cluster(), ["generator.max_restarts=1"])
    pool.scale(1)
    pool.stop_all()
    pool.repairs_failed = 2  # past max_restarts, the last as training ended
    assert pool.check() == 0


def test_a_healthy_generator_is_not_called_hung_however_seldom_the_pool_is_checked(model_dir):
    cluster = Cluster()
    pool = make_pool(model_dir, cluster, ["generator.hang_timeout_s=0.2"])
    pool.scale(1)
    for _ in range(4):
        time.sleep(0.5)  # longer than the hang timeout between checks: the probes say it played
        pool.check()
    assert [e["event"] for e in pool.status()["events"]] == ["start"]
    pool.stop_all()


def test_a_generator_failing_again_and_again_ends_the_run(model_dir):
    cluster = Cluster()
    pool = make_pool(model_dir, cluster, ["generator.max_restarts=1"])
    pool.scale(1)
    for expect in (None, "generator-0 failed 2 times"):
        cluster.spawned["generator-0"].crash_after = cluster.spawned["generator-0"].beats + 1
        if expect is None:
            heal(pool, lambda: len(cluster.all) == 2 and "generator-0" in pool.live)
        else:
            with pytest.raises(RuntimeError, match=expect):
                heal(pool, lambda: False)


def test_a_pool_without_generator_0_is_repaired_at_the_size_it_has(model_dir):
    """Generator-0 failed, and a scale (not a repair) that failed meanwhile left the target
    at the size without it: the pool was at its target, no check repaired it, and the next
    evaluation waited for it until the run ended."""
    cluster = Cluster()
    pool = make_pool(model_dir, cluster)
    pool.scale(2)
    pool._fail("generator-0", "test", limit=False)
    pool.target = len(pool.live)  # as a failed scale leaves it
    heal(pool, lambda: sorted(pool.live) == ["generator-0"])  # in generator-1's place: the size asked for
    pool.stop_all()


def test_an_evaluation_waits_for_generator_0_to_be_replaced(model_dir):
    cluster = Cluster(**{"generator-0": {"die_after": 1}})
    pool = make_pool(model_dir, cluster)
    pool.scale(1)
    first = cluster.spawned["generator-0"]
    while not first.dead:
        time.sleep(0.01)
    assert pool.generator("generator-0", timeout_s=10) is cluster.spawned["generator-0"] is not first
    pool.stop_all()


class Dying:
    """A peer that answers as `target` until `dead`, then raises as a killed actor does."""

    def __init__(self, target):
        self.target = target
        self.dead = False

    def __getattr__(self, name):
        method = getattr(self.target, name)

        def call(*args):
            if self.dead:  # raised by the call, as a dead actor's call raises on get
                raise PeerDied("learner")
            return method(*args)

        return call


def test_an_evaluation_waiting_for_a_replacement_fails_at_once_when_the_learner_died(model_dir):
    """No generator can join without the learner: waiting for one (an evaluation on
    generator-0) ends with the learner's death, not after the wait's timeout."""
    cluster = Cluster(**{"generator-0": {"die_after": 1}})
    pool = make_pool(model_dir, cluster)
    pool.learner = Dying(pool.learner)
    pool.scale(1)
    pool.learner.dead = True
    while not cluster.spawned["generator-0"].dead:
        time.sleep(0.01)
    start = time.time()
    with pytest.raises(RuntimeError, match=r"the learner died \(PeerDied\): no generator can be replaced"):
        pool.generator("generator-0", timeout_s=60)
    assert time.time() - start < 10
    pool.stop_all()


def test_a_generator_that_dies_at_the_end_of_training_is_failed_not_awaited(model_dir):
    cluster = Cluster(**{"generator-1": {"hang_after": 1}})
    pool = make_pool(model_dir, cluster, ["generator.hang_timeout_s=0.5"])
    pool.scale(2)
    assert cluster.spawned["generator-1"].hanging.wait(5)
    final = pool.stop_all()
    assert list(final["generators"]) == ["generator-0"]
    assert [e["reason"] for e in final["events"] if e["event"] == "failed"] == [
        "hung: still playing 0.5 s after stop"
    ]


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


def test_autoscale_does_not_read_an_interval_it_is_told_not_to_measure(model_dir):
    """The supervised stage: generators wait for it to end (the buffer takes no inserts),
    which reads as held back by the rate limit; the driver tells the pool not to measure
    it, and the first tick after only takes a reading (the pool shrank through the stage)."""
    cluster = Cluster()
    pool = make_pool(
        model_dir, cluster, ["autoscale.enabled=true", "autoscale.cooldown_s=0", "autoscale.max_generators=2"]
    )
    pool.scale(1)
    assert pool.autoscale(learner_wait_s=0.0) is None  # a reading
    time.sleep(0.2)
    assert pool.autoscale(learner_wait_s=10.0, measure=False) is None  # not read, and dropped
    time.sleep(0.2)
    assert pool.autoscale(learner_wait_s=20.0) is None  # so this one is a reading again
    assert pool.status()["events"][-1]["event"] == "start"
    time.sleep(0.2)
    assert pool.autoscale(learner_wait_s=30.0) == 2
    pool.stop_all()


def test_a_replacement_that_fails_to_start_is_tried_again_and_a_refused_scale_is_not(model_dir):
    cluster = Cluster(**{"generator-1": {"fail_start": True}})
    pool = make_pool(model_dir, cluster)
    pool.scale(1)
    with pytest.raises(RuntimeError, match="engine failed to start"):
        pool.scale(2)  # asked for, refused: the pool stays at 1 and does not retry on its own
    assert pool.target == 1
    for _ in range(20):
        pool.check()
        time.sleep(0.01)
    assert [g.name for g in cluster.all] == ["generator-0", "generator-1"]
    # a failed generator whose replacement cannot start at first: tried again after a backoff
    cluster.special = {"generator-0": {"fail_start": True}}
    cluster.all = []  # so the next generator-0 is a "first start", with fail_start
    cluster.spawned["generator-0"].crash_after = cluster.spawned["generator-0"].beats + 1
    heal(pool, lambda: pool.repairs_failed == 1)
    assert pool.live == {} and pool.repair_after > time.monotonic()
    pool.repair_after = 0.0  # the backoff has passed
    heal(pool, lambda: "generator-0" in pool.live)
    # the repair thread joins the newcomer to `live` before `scale` returns and the count is
    # cleared: read it once that thread has finished (it holds `healing` until then)
    assert pool.healing.acquire(timeout=10.0)
    pool.healing.release()
    assert pool.repairs_failed == 0
    pool.stop_all()
