"""The learner's protocols, without Ray: take batches, train, and keep every generator on
the learner's weights. `learner/actor.py` is only its Ray transport.

Weight versions: the learner's `version` names the weights generators hold. A broadcast
exports the current weights, bumps the version and sends both to every target; each
target answers with the checksum of what its engine loaded, and those answers are
checked at the next broadcast (or at once with `wait`), so the learner never waits on a
generator's engine call. A generator joining the pool (`attach`) first loads the weights
of the current version and must echo their checksum before it receives broadcasts.

Weights travel by `learner.weight_sync`: through the transport's shared store (the object
store), or by one collective broadcast to every target (selfplay/collective.py), which
falls back to the shared store for a version whose broadcast fails.

A target that dies is dropped from the broadcast; one that has not answered within
`ack_timeout_s` of the send is dropped and told to stop, so its pool replaces it (a
hung engine never stalls training). A wrong checksum from a live target still raises."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
from safetensors.torch import save as save_safetensors

from learner.learner import Learner
from selfplay import collective


def locked(method):
    """Run under the service's lock: the pool attaches and drops generators while the
    learner waits for data, never in the middle of a step or a broadcast."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


class BroadcastMismatch(RuntimeError):
    """A generator reports loading weights other than the ones the learner sent."""


class LearnerService:
    """`sample(n, version)` returns a batch of n turns, or None while the buffer says wait.
    Targets (generators, opponents) are peers of `transport` with
    `set_weights(blob, version) -> checksum` (and, for learner.weight_sync collective,
    `receive_collective(sync, version) -> checksum`)."""

    def __init__(
        self,
        learner: Learner,
        sample: Callable[[int, int], pa.Table | None],
        transport,
        sync_host: str = "127.0.0.1",
    ):
        """`sync_host`: where a collective broadcast's store listens (learner.weight_sync
        collective): this node's address on the network its generators reach."""
        self.learner = learner
        self.sample = sample
        self.transport = transport
        self.targets: dict[str, object] = {}  # name -> peer that receives every broadcast
        self.pending: list = []  # (name, peer, future, checksum, sent at) of the last broadcast
        # targets dropped as dead or unresponsive: {name, reason, version (the last sent)}
        self.dropped: list[dict] = []
        self.checksum: str | None = None
        self.last_blob = None  # the last broadcast's weights (shared once), for generators that join later
        self.last_tensors = None  # ... as tensors, when the broadcast was collective (shared on demand)
        self.blob_step = -1  # the learner step whose weights the last broadcast (or attach) sent
        self.sync_host = sync_host
        # the collective broadcast's backend, chosen now so that a wrong one fails at start
        self.sync_backend = (
            collective.pick_backend(learner.cfg.sync_backend, learner.device)
            if learner.cfg.weight_sync == "collective"
            else None
        )
        self.rendezvous: collective.Rendezvous | None = None  # made at the first collective broadcast
        # collective broadcasts that failed and went by the object store: {version, error}
        self.sync_fallbacks: list[dict] = []
        self.frozen: dict[bool, dict] = {}  # current_weights' last answer, trained and averaged
        self.wait_s = 0.0
        self.broadcast_s = 0.0
        self.lock = threading.RLock()  # held by a step and its broadcast, and by every other call
        self.cut = threading.Event()  # cut_short: the running `train` stops waiting for data

    # -- training -------------------------------------------------------------------------
    def next_batch(self) -> pa.Table | None:
        """Wait (backing off to 0.2 s) until the buffer hands out a batch; None once
        `cut_short` is called."""
        start = time.perf_counter()
        delay = 0.01
        while not self.cut.is_set():
            table = self.sample(self.learner.cfg.batch_size, self.learner.version)
            if table is not None:
                self.wait_s += time.perf_counter() - start
                return table
            self.cut.wait(delay)  # the buffer is below min_size or rate-limiting the learner
            delay = min(delay * 2, 0.2)
        self.wait_s += time.perf_counter() - start
        return None

    def cut_short(self) -> None:
        """End the running `train` at its next wait for data (a step under way finishes):
        the run's time is up or it was stopped while the learner starves. Called from
        another thread than `train`'s."""
        self.cut.set()

    def train(self, n_steps: int, rates: list[float] | None = None) -> list[dict]:
        """Up to n learner steps, broadcasting every `broadcast_every`; one metrics dict per
        step (with `broadcast_seconds` on the steps that broadcast). Fewer, or none, when
        `cut_short` ends the wait for a batch. `rates`: each step's learning rate (None: the
        one set)."""
        self.cut.clear()
        out = []
        for i in range(n_steps):
            batch = self.next_batch()  # unlocked: generators join and leave while it waits
            if batch is None:
                break
            with self.lock:
                if rates is not None:
                    self.learner.set_lr(rates[i])
                m = self.learner.train_step(batch)
                if self.learner.step % self.learner.cfg.broadcast_every == 0:
                    m["broadcast_seconds"] = self.broadcast()["seconds"]
            m.update(
                weight_version=self.learner.version,
                learner_wait_s=self.wait_s,
                broadcast_s=self.broadcast_s,
                sync_fallbacks=len(self.sync_fallbacks),
            )
            out.append(m)
        return out

    @locked
    def set_lr(self, lr: float) -> None:
        self.learner.set_lr(lr)

    @locked
    def reset_reference(self) -> bool:
        return self.learner.reset_reference()

    # -- weights --------------------------------------------------------------------------
    @locked
    def add_target(self, name: str, peer) -> None:
        """Register a generator or opponent that receives every broadcast."""
        self.targets[name] = peer

    @locked
    def attach(self, name: str, peer) -> dict:
        """Register a generator joining the pool: it first loads the current version's
        weights (those of the last broadcast; before any, the learner's own, which a fresh
        or resumed run's version stands for), then receives every broadcast. Returns once
        its engine echoed the learner's checksum."""
        if self.checksum is None:
            self._export()
        got = self.transport.get(
            self.transport.call(peer, "set_weights", self._shared(), self.learner.version),
            timeout=self.learner.cfg.ack_timeout_s,
        )
        if got != self.checksum:
            raise BroadcastMismatch(
                f"{name} loaded weights with checksum {got}, learner sent {self.checksum}"
            )
        self.add_target(name, peer)  # no broadcast comes between: it holds the lock
        return {"version": self.learner.version, "checksum": self.checksum, "loaded": got}

    @locked
    def detach(self, name: str) -> None:
        """Stop broadcasting to `name`; its acknowledgement of the last broadcast is still
        checked, so a generator leaving the pool cannot hide a bad load."""
        self.targets.pop(name, None)
        mine = [p for p in self.pending if p[0] == name]
        self.pending = [p for p in self.pending if p[0] != name]
        self._verify(mine)

    @locked
    def drop(self, name: str, reason: str, peer=None) -> None:
        """Stop broadcasting to `name`, which failed (its pool replaces it): its pending
        acknowledgement is not waited for. `peer`: the failed generator, when the call may
        arrive after a replacement joined under its name (the pool's does not wait): then
        nothing is dropped (actor handles compare by actor id)."""
        if peer is not None and self.targets.get(name) != peer:
            return
        if self.targets.pop(name, None) is not None:
            self.dropped.append({"name": name, "reason": reason, "version": self.learner.version})
        self.pending = [p for p in self.pending if p[0] != name]

    @locked
    def broadcast(self, wait: bool = False) -> dict:
        """Send the current weights as a new version to every target. Acknowledgements of
        the previous broadcast are checked first, so the learner never waits for a
        generator's engine call to finish unless `wait` is set."""
        start = time.perf_counter()
        self.verify_pending()
        collective_sync = self.learner.cfg.weight_sync == "collective" and bool(self.targets)
        tensors = self._export(keep_tensors=collective_sync)
        self.learner.version += 1
        result = {"version": self.learner.version, "checksum": self.checksum}
        if collective_sync:
            result["sync"] = self._send_collective(tensors)
        if not collective_sync or result["sync"] == "object_store":
            self.pending = self._send_shared()
        result["seconds"] = elapsed = time.perf_counter() - start
        self.broadcast_s += elapsed
        if wait:
            result["acks"] = self.verify_pending()
        return result

    def _export(self, keep_tensors: bool = False) -> dict:
        """Export the current weights as what the next send carries: kept as tensors for a
        collective broadcast (shared through the object store only if asked), else shared
        at once. Returns the tensors."""
        tensors, self.checksum = self.learner.export_tensors()
        self.blob_step = self.learner.step
        self.last_tensors, self.last_blob = tensors, None
        if not keep_tensors:
            self._shared()
        return tensors

    def _shared(self):
        """The last export's weights as safetensors bytes shared once through the transport
        (for a generator that joins, an evaluation, or a broadcast by the object store)."""
        if self.last_blob is None:
            self.last_blob = self.transport.put(save_safetensors(self.last_tensors))
            self.last_tensors = None
        return self.last_blob

    def _send_shared(self) -> list:
        sent = time.monotonic()
        blob = self._shared()
        return [
            (
                name,
                peer,
                self.transport.call(peer, "set_weights", blob, self.learner.version),
                self.checksum,
                sent,
            )
            for name, peer in self.targets.items()
        ]

    def _send_collective(self, tensors: dict) -> str:
        """Broadcast `tensors` to every target at once (rank 0 of a group of its own for this
        version): each target takes them while it plays and answers with the checksum its
        engine loaded, as `set_weights` does. Returns "collective", or "object_store" when the
        broadcast failed: a target whose buckets were cut short loads nothing, and the caller
        sends the same version through the object store (a target that took them all loads
        the same weights twice)."""
        cfg = self.learner.cfg
        if self.rendezvous is None:
            self.rendezvous = collective.Rendezvous(
                self.sync_host, cfg.sync_timeout_s, self.sync_backend, self.learner.device
            )
        entries = collective.manifest(tensors)
        plan = collective.buckets(entries, int(cfg.sync_bucket_mb * 2**20))
        version, world = self.learner.version, len(self.targets) + 1
        prefix = f"v{version}/"
        sent = time.monotonic()
        pending = []
        for rank, (name, peer) in enumerate(self.targets.items(), start=1):
            sync = {
                "address": self.rendezvous.address,
                "prefix": prefix,
                "rank": rank,
                "world": world,
                "entries": entries,
                "plan": plan,
                "timeout_s": cfg.sync_timeout_s,
                "backend": self.sync_backend,
            }
            future = self.transport.call(peer, "receive_collective", sync, version)
            pending.append((name, peer, future, self.checksum, sent))
        try:
            self.rendezvous.send(prefix, world, tensors, plan)
        except RuntimeError as err:  # gloo's and NCCL's errors (a rank gone, a timeout) are RuntimeErrors
            self.sync_fallbacks.append({"version": version, "error": f"{type(err).__name__}: {err}"[:300]})
            return "object_store"
        self.pending = pending
        return "collective"

    @locked
    def verify_pending(self) -> dict[str, str]:
        pending, self.pending = self.pending, []
        return self._verify(pending)

    def _verify(self, pending: list) -> dict[str, str]:
        acks = {}
        for name, peer, future, expected, sent in pending:
            left = max(sent + self.learner.cfg.ack_timeout_s - time.monotonic(), 0.0)
            try:
                got = self.transport.get(future, timeout=left)
            except self.transport.dead as err:
                self._lost(name, peer, f"died: {type(err).__name__}")
                continue
            except TimeoutError:
                self._lost(name, peer, f"no acknowledgement in {self.learner.cfg.ack_timeout_s:g} s")
                self.transport.call(peer, "stop")  # if it still plays, its loop ends and the pool replaces it
                continue
            if got != expected:
                raise BroadcastMismatch(f"{name} loaded weights with checksum {got}, learner sent {expected}")
            acks[name] = got
        return acks

    def _lost(self, name: str, peer, reason: str) -> None:
        if self.targets.get(name) is peer:  # not a replacement that joined under the same name
            self.drop(name, reason)

    def progress(self) -> int:
        """The learner's step, read without the lock: answers while a step trains (the
        driver's watchdog, the pool's check that the learner lives)."""
        return self.learner.step

    @locked
    def current_weights(self, averaged: bool = False) -> dict:
        """The weights as they are now, shared once, for evaluations that must measure one
        fixed policy while training goes on: {ref: [shared weights], version, step,
        checksum, averaged}. The last broadcast's when nothing trained since (no second
        export). `averaged`: the weights' moving average (learner.ema_decay), which no
        broadcast sends."""
        step = self.learner.step
        frozen = self.frozen.get(averaged)
        # by version too: settle's broadcast makes a new version of the same step's weights
        # (kept by step alone, a settled evaluation read the version before, and generator-0
        # took its own engine for another's and loaded a second one)
        if frozen is None or frozen["step"] != step or frozen["version"] != self.learner.version:
            if not averaged and self.checksum is not None and self.blob_step == step:
                ref, checksum = self._shared(), self.checksum
            else:
                blob, checksum = self.learner.export(averaged)
                ref = self.transport.put(blob)
            frozen = {
                "ref": [ref],
                "version": self.learner.version,
                "step": step,
                "checksum": checksum,
                "averaged": averaged,
            }
            self.frozen[averaged] = frozen
        return frozen

    @locked
    def settle(self) -> dict:
        """`current_weights`, marked settled: broadcast first (and acknowledged) if training
        moved them since the last broadcast, so every generator's own engine holds them.
        For an evaluation while nothing trains (the driver waits on it between learner
        calls): it may run on generator-0's own engine, no second engine needed."""
        if self.checksum is None or self.blob_step != self.learner.step:
            self.broadcast(wait=True)
        else:
            self.verify_pending()  # the last broadcast has landed everywhere
        return {**self.current_weights(), "settled": True}

    # -- snapshots ------------------------------------------------------------------------
    @locked
    def save(self, directory: str) -> None:
        """A checkpoint of the learner; every broadcast so far is acknowledged first."""
        self.verify_pending()
        self.learner.save(directory)

    @locked
    def promote(self, league, member_id: str, directory: str) -> dict:
        """Snapshot the current policy into the league: an HF checkpoint in `directory` and
        its weights, handed to the league (a peer with `add_member(member, blob)`) as a
        broadcast would send them."""
        self.learner.save_model(Path(directory))
        blob, checksum = self.learner.export()
        member = {
            "id": member_id,
            "version": self.learner.version,
            "step": self.learner.step,
            "path": str(directory),
            "checksum": checksum,
        }
        return self.transport.get(self.transport.call(league, "add_member", member, blob))

    @locked
    def state(self) -> dict:
        return {
            "step": self.learner.step,
            "version": self.learner.version,
            "checksum": self.checksum,
            "wait_s": self.wait_s,
            "dropped_targets": list(self.dropped),
            "sync_fallbacks": list(self.sync_fallbacks),
            "baselines": {f"{g}/{r}": b for (g, r), b in self.learner.baselines.items()},
        }
