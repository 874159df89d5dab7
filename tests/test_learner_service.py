"""The learner's broadcast and snapshot protocols (learner/service.py), without Ray: a real
learner on a tiny model, receivers that checksum what they load as the engine's worker
extension does, calls carried by LocalTransport's threads."""

from __future__ import annotations

import threading

import pytest
from safetensors.torch import load as load_safetensors

from learner.learner import Learner
from learner.service import BroadcastMismatch, LearnerService
from selfplay import collective, schema
from selfplay.config import load_config
from selfplay.model import create_default_model
from selfplay.transport import LocalTransport, PeerDied
from selfplay.weights import state_checksum
from tests.rows import make_row


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(create_default_model(tmp_path_factory.mktemp("m"), preset="1m", max_positions=64))


class Receiver:
    """Loads weights the way actors/engine_ext.py does: parse the safetensors bytes and
    answer with the checksum of the tensors that arrived."""

    def __init__(self, corrupt: bool = False):
        self.corrupt = corrupt
        self.dead = False  # killed: every call raises PeerDied, as a dead actor's do
        self.stopped = threading.Event()
        self.loads: list[tuple[int, str]] = []  # (version, checksum) of every load
        self.paths: list[str] = []  # how each load came: object_store or collective
        self.gate = threading.Event()
        self.gate.set()

    def set_weights(self, blob: bytes, version: int) -> str:
        if self.dead:
            raise PeerDied("the actor died")
        self.gate.wait()
        return self.load(load_safetensors(blob), version, "object_store")

    def receive_collective(self, sync: dict, version: int) -> str:
        """As GeneratorActor's: take the broadcast (selfplay/collective.py), then load."""
        if self.dead:
            raise PeerDied("the actor died")
        tensors = collective.receive(**sync)
        self.gate.wait()
        return self.load(tensors, version, "collective")

    def load(self, tensors: dict, version: int, path: str) -> str:
        if self.corrupt:  # one parameter arrives changed
            name = sorted(tensors)[0]
            tensors[name] = tensors[name] + 1
        checksum = state_checksum(tensors)
        self.loads.append((version, checksum))
        self.paths.append(path)
        return checksum

    def stop(self) -> None:
        self.stopped.set()


class Quitter(Receiver):
    """Joins a collective broadcast, takes its first bucket and leaves (a generator that dies
    half-way); loads through the object store as any other."""

    def receive_collective(self, sync: dict, version: int) -> str:
        collective.receive(**{**sync, "plan": sync["plan"][:1]})
        raise PeerDied("died half-way through the broadcast")


class League:
    def __init__(self):
        self.members: list[tuple[dict, bytes]] = []

    def add_member(self, member: dict, blob: bytes) -> dict:
        self.members.append((member, blob))
        return member


def batch(n: int = 4):
    return schema.from_rows([make_row(traj_id=f"t{i}", ret=1.0 if i % 2 else -1.0) for i in range(n)])


def make_service(model_dir, overrides=(), sample=None):
    cfg = load_config(None, ["learner.batch_size=4", "learner.lr=1e-2", *overrides])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    return LearnerService(learner, sample or (lambda n, version: batch(n)), LocalTransport())


def test_attach_loads_the_current_weights_before_any_broadcast(model_dir):
    service = make_service(model_dir)
    r = Receiver()
    joined = service.attach("generator-1", r)
    _, checksum = service.learner.export()
    assert joined == {"version": 0, "checksum": checksum, "loaded": checksum}
    assert r.loads == [(0, checksum)] and "generator-1" in service.targets


def test_a_generator_that_loads_other_weights_is_refused_at_attach(model_dir):
    service = make_service(model_dir)
    with pytest.raises(BroadcastMismatch, match="generator-1 loaded weights"):
        service.attach("generator-1", Receiver(corrupt=True))
    assert "generator-1" not in service.targets


def test_every_target_loads_each_new_version_after_training(model_dir):
    service = make_service(model_dir)
    a, b = Receiver(), Receiver()
    service.attach("generator-0", a)
    service.add_target("opponent", b)
    before = service.checksum
    steps = service.train(2)  # broadcast_every=1: two broadcasts
    service.verify_pending()
    assert [m["weight_version"] for m in steps] == [1, 2]
    assert all("broadcast_seconds" in m for m in steps)
    assert [v for v, _ in a.loads] == [0, 1, 2] and [v for v, _ in b.loads] == [1, 2]
    assert a.loads[-1][1] == b.loads[-1][1] == service.checksum != before  # training moved the weights


def test_a_starving_learner_cut_short_returns_the_steps_it_made(model_dir):
    """The buffer hands out one batch, then none: `train(3)` waits for the second until
    another thread cuts it short (the run's time is up), and returns the one step made;
    the next `train` waits afresh."""
    handed = []

    def sample(n, version):
        if handed:
            return None
        handed.append(version)
        return batch(n)

    service = make_service(model_dir, sample=sample)
    result = []
    worker = threading.Thread(target=lambda: result.append(service.train(3)))
    worker.start()
    worker.join(timeout=1.0)
    assert worker.is_alive()  # starving: waits for the second batch
    service.cut_short()
    worker.join(timeout=10)
    assert not worker.is_alive()
    (steps,) = result
    assert [m["step"] for m in steps] == [1]
    assert steps[0]["learner_wait_s"] < 1.0  # the wait after the last step is not in that step's
    handed.clear()
    assert [m["step"] for m in service.train(1)] == [2]  # the cut does not outlive its train


def test_a_bad_load_is_caught_at_the_next_broadcast_not_before(model_dir):
    service = make_service(model_dir)
    service.add_target("generator-1", Receiver(corrupt=True))
    service.broadcast()  # sent; the learner does not wait for the answer
    with pytest.raises(BroadcastMismatch, match="generator-1"):
        service.broadcast()


def test_broadcast_does_not_wait_for_a_busy_engine_unless_asked(model_dir):
    service = make_service(model_dir)
    slow = Receiver()
    slow.gate.clear()  # the engine is mid-call: the load cannot land yet
    service.add_target("generator-0", slow)
    sent = service.broadcast()
    assert "acks" not in sent and slow.loads == []
    slow.gate.set()
    assert service.verify_pending() == {"generator-0": sent["checksum"]}


def test_detach_still_checks_the_leaving_generators_last_load(model_dir):
    service = make_service(model_dir)
    service.add_target("generator-2", Receiver(corrupt=True))
    service.add_target("generator-0", Receiver())
    service.broadcast()
    with pytest.raises(BroadcastMismatch, match="generator-2"):
        service.detach("generator-2")
    assert list(service.targets) == ["generator-0"]
    assert [p[0] for p in service.pending] == ["generator-0"]


def test_a_dead_target_is_dropped_and_training_goes_on(model_dir):
    service = make_service(model_dir)
    dead, alive = Receiver(), Receiver()
    service.attach("generator-1", dead)
    service.attach("generator-0", alive)
    dead.dead = True
    steps = service.train(3)  # each broadcast checks the previous one's acknowledgements
    service.verify_pending()
    assert [m["weight_version"] for m in steps] == [1, 2, 3]
    assert list(service.targets) == ["generator-0"] and [v for v, _ in alive.loads] == [0, 1, 2, 3]
    assert service.state()["dropped_targets"] == [
        {"name": "generator-1", "reason": "died: PeerDied", "version": 1}  # the last version sent to it
    ]


def test_a_target_that_never_acknowledges_is_dropped_and_told_to_stop(model_dir):
    service = make_service(model_dir, ["learner.ack_timeout_s=0.2"])
    hung = Receiver()
    service.attach("generator-1", hung)
    hung.gate.clear()  # its engine hangs in the load
    service.broadcast()
    service.broadcast()  # waits at most ack_timeout_s for the first one's answer
    assert "generator-1" not in service.targets and hung.stopped.wait(5)
    assert service.dropped[0]["reason"] == "no acknowledgement in 0.2 s"
    hung.gate.set()


def test_a_replacement_under_the_same_name_is_not_dropped_for_its_predecessor(model_dir):
    service = make_service(model_dir)
    old, new = Receiver(), Receiver()
    service.attach("generator-1", old)
    service.broadcast(wait=True)
    old.dead = True
    service.broadcast()  # sent to the dead one; the pool replaces it before the answer is read
    service.attach("generator-1", new)
    service.broadcast()
    assert service.targets["generator-1"] is new and service.dropped == []
    service.verify_pending()
    assert new.loads[-1] == (3, service.checksum)


def test_a_late_drop_of_a_failed_generator_leaves_its_replacement(model_dir):
    """The pool's drop does not wait: it may land after the replacement joined."""
    service = make_service(model_dir)
    old, new = Receiver(), Receiver()
    service.attach("generator-1", old)
    service.attach("generator-1", new)
    service.drop("generator-1", "died", old)
    assert service.targets["generator-1"] is new and service.dropped == []
    service.drop("generator-1", "died", new)
    assert "generator-1" not in service.targets and service.dropped[0]["reason"] == "died"


def test_a_generator_that_hangs_while_joining_is_refused(model_dir):
    service = make_service(model_dir, ["learner.ack_timeout_s=0.2"])
    hung = Receiver()
    hung.gate.clear()
    with pytest.raises(TimeoutError):
        service.attach("generator-1", hung)
    assert "generator-1" not in service.targets
    hung.gate.set()


def test_the_learner_waits_while_the_buffer_says_wait(model_dir):
    answers = [None, None, batch(4)]
    service = make_service(model_dir, sample=lambda n, version: answers.pop(0))
    (m,) = service.train(1)
    # waited its backoff (0.01 s, then 0.02 s) between the asks, not a busy spin
    assert answers == [] and m["step"] == 1 and m["learner_wait_s"] >= 0.025


def test_promote_hands_the_league_a_checkpoint_and_the_broadcast_weights(model_dir, tmp_path):
    service = make_service(model_dir)
    service.train(1)
    league = League()
    service.promote(league, "snap-0", str(tmp_path / "snap-0"))
    ((member, blob),) = league.members
    assert member["id"] == "snap-0" and member["version"] == 1 and member["step"] == 1
    assert member["checksum"] == state_checksum(load_safetensors(blob)) == service.learner.export()[1]
    assert (tmp_path / "snap-0" / "config.json").exists() and (
        tmp_path / "snap-0" / "tokenizer_config.json"
    ).exists()


def test_current_weights_are_the_weights_of_this_step_shared_once(model_dir):
    service = make_service(model_dir)
    before = service.current_weights()
    assert before["step"] == 0 and before["checksum"] == service.learner.export()[1]
    assert service.current_weights() is before  # nothing trained: the same shared copy
    service.train(1)  # broadcast_every=1: the broadcast exported this step's weights
    now = service.current_weights()
    assert (now["step"], now["version"]) == (1, 1) and now["checksum"] == service.checksum != before[
        "checksum"
    ]
    assert now["ref"] == [service.last_blob]  # reused, not exported again
    blob = service.transport.get(service.transport.call(Receiver(), "set_weights", now["ref"][0], 1))
    assert blob == now["checksum"]


def test_settled_weights_name_the_version_generator_0_holds_after_an_earlier_read(model_dir):
    """broadcast_every 2, 3 steps: the periodic evaluation reads the weights of step 3
    (version 1, broadcast at step 2), then a waited one settles them, broadcasting version 2:
    it named version 1 while the engine held version 2."""
    service = make_service(model_dir, ["learner.broadcast_every=2"])
    r = Receiver()
    service.attach("generator-0", r)
    service.train(3)
    assert service.current_weights()["version"] == 1
    settled = service.settle()
    assert (settled["version"], settled["checksum"]) == r.loads[-1] == (2, service.checksum)


def test_current_weights_averaged_are_the_weights_average_which_no_broadcast_sends(model_dir):
    service = make_service(model_dir, ["learner.ema_decay=0.5"])
    service.train(2)
    trained, averaged = service.current_weights(), service.current_weights(averaged=True)
    assert averaged["checksum"] == service.learner.export(averaged=True)[1] != trained["checksum"]
    assert trained["checksum"] == service.checksum  # the broadcast's
    assert (averaged["step"], averaged["version"], averaged["averaged"]) == (2, 2, True)
    assert service.current_weights(averaged=True) is averaged and service.current_weights() is trained
    got = service.transport.get(service.transport.call(Receiver(), "set_weights", averaged["ref"][0], 2))
    assert got == averaged["checksum"]  # what was shared is the average


COLLECTIVE = ("learner.weight_sync=collective", "learner.sync_bucket_mb=0.25", "learner.sync_timeout_s=5")


def test_a_collective_broadcast_reaches_every_target_at_once_and_is_verified(model_dir):
    service = make_service(model_dir, COLLECTIVE)
    a, b = Receiver(), Receiver()
    service.attach("generator-0", a)  # a generator joins through the object store
    service.add_target("generator-1", b)
    steps = service.train(2)
    sent = service.broadcast(wait=True)
    assert sent["sync"] == "collective" and sent["acks"] == {
        "generator-0": sent["checksum"],
        "generator-1": sent["checksum"],
    }
    assert a.paths == ["object_store", "collective", "collective", "collective"]
    assert [v for v, _ in a.loads] == [0, 1, 2, 3] and [v for v, _ in b.loads] == [1, 2, 3]
    assert a.loads[1:] == b.loads and a.loads[-1][1] == service.checksum
    assert all(m["sync_fallbacks"] == 0 for m in steps)
    assert service.last_blob is None  # nothing went through the object store...
    weights = service.current_weights()  # ...until an evaluation asks: the same weights, shared once
    assert state_checksum(load_safetensors(weights["ref"][0])) == sent["checksum"] == weights["checksum"]
    c = Receiver()
    assert service.attach("generator-2", c)["loaded"] == sent["checksum"]  # a later joiner, same version
    assert c.loads == [(3, sent["checksum"])]


def test_a_collective_broadcast_by_nccl_from_a_cpu_learner_fails_at_start(model_dir):
    with pytest.raises(ValueError, match="^learner.sync_backend: nccl sends from a GPU"):
        make_service(model_dir, (*COLLECTIVE, "learner.sync_backend=nccl"))
    assert make_service(model_dir, COLLECTIVE).sync_backend == "gloo"  # auto, on this CPU


def test_a_collective_broadcast_that_fails_half_way_goes_by_the_object_store(model_dir):
    """A target dies after the first bucket: nobody loads what it staged, the learner sends
    the same version through the object store, every live target ends on it, and the dead
    one is dropped as any dead target is."""
    service = make_service(model_dir, COLLECTIVE)
    good, quitter = Receiver(), Quitter()
    service.add_target("generator-0", good)
    service.add_target("generator-1", quitter)
    service.train(1)
    assert service.state()["sync_fallbacks"][0]["version"] == 1
    service.verify_pending()
    assert good.loads == quitter.loads == [(1, service.checksum)]
    assert good.paths == quitter.paths == ["object_store"]
    quitter.dead = True  # it never joins the next group: that broadcast waits out its timeout
    sent = service.broadcast(wait=True)
    assert sent["sync"] == "object_store" and sent["acks"] == {"generator-0": sent["checksum"]}
    assert [d["name"] for d in service.dropped] == ["generator-1"]
    sent = service.broadcast(wait=True)  # without the dead one, collective again
    assert sent["sync"] == "collective" and good.loads[-2:] == [(2, good.loads[-2][1]), (3, sent["checksum"])]
    assert good.paths == ["object_store", "object_store", "collective"]


def test_a_bad_collective_load_is_caught_as_any_bad_load(model_dir):
    service = make_service(model_dir, COLLECTIVE)
    service.add_target("generator-1", Receiver(corrupt=True))
    with pytest.raises(BroadcastMismatch, match="generator-1"):
        service.broadcast(wait=True)
