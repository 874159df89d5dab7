"""The learner's protocols, without Ray: take batches, train, and keep every generator on
the learner's weights. `learner/actor.py` is only its Ray transport.

Weight versions: the learner's `version` names the weights generators hold. A broadcast
exports the current weights, bumps the version and sends both to every target; each
target answers with the checksum of what its engine loaded, and those answers are
checked at the next broadcast (or at once with `wait`), so the learner never waits on a
generator's engine call. A generator joining the pool (`attach`) first loads the weights
of the current version and must echo their checksum before it receives broadcasts."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from learner.learner import Learner


class BroadcastMismatch(RuntimeError):
    """A generator reports loading weights other than the ones the learner sent."""


class LearnerService:
    """`sample(n, version)` returns a batch of n turns, or None while the buffer says wait.
    Targets (generators, opponents) are peers of `transport` with
    `set_weights(blob, version) -> checksum`."""

    def __init__(self, learner: Learner, sample: Callable[[int, int], pa.Table | None], transport):
        self.learner = learner
        self.sample = sample
        self.transport = transport
        self.targets: dict[str, object] = {}  # name -> peer that receives every broadcast
        self.pending: list = []  # (name, future, checksum) of the last broadcast, checked at the next
        self.checksum: str | None = None
        self.last_blob = None  # the last broadcast's weights (shared once), for generators that join later
        self.blob_step = -1  # the learner step whose weights last_blob holds
        self.frozen: dict | None = None  # current_weights' last answer
        self.wait_s = 0.0
        self.broadcast_s = 0.0

    # -- training -------------------------------------------------------------------------
    def next_batch(self) -> pa.Table:
        """Wait (backing off to 0.2 s) until the buffer hands out a batch."""
        start = time.perf_counter()
        delay = 0.01
        while True:
            table = self.sample(self.learner.cfg.batch_size, self.learner.version)
            if table is not None:
                self.wait_s += time.perf_counter() - start
                return table
            time.sleep(delay)  # the buffer is below min_size or rate-limiting the learner
            delay = min(delay * 2, 0.2)

    def train(self, n_steps: int) -> list[dict]:
        """n learner steps, broadcasting every `broadcast_every`; one metrics dict per step
        (with `broadcast_seconds` on the steps that broadcast)."""
        out = []
        for _ in range(n_steps):
            m = self.learner.train_step(self.next_batch())
            if self.learner.step % self.learner.cfg.broadcast_every == 0:
                m["broadcast_seconds"] = self.broadcast()["seconds"]
            m.update(
                weight_version=self.learner.version, learner_wait_s=self.wait_s, broadcast_s=self.broadcast_s
            )
            out.append(m)
        return out

    # -- weights --------------------------------------------------------------------------
    def add_target(self, name: str, peer) -> None:
        """Register a generator or opponent that receives every broadcast."""
        self.targets[name] = peer

    def attach(self, name: str, peer) -> dict:
        """Register a generator joining the pool: it first loads the current version's
        weights (those of the last broadcast; before any, the learner's own, which a fresh
        or resumed run's version stands for), then receives every broadcast. Returns once
        its engine echoed the learner's checksum."""
        if self.last_blob is None:
            blob, self.checksum = self.learner.export()
            self.last_blob = self.transport.put(blob)
            self.blob_step = self.learner.step
        got = self.transport.get(
            self.transport.call(peer, "set_weights", self.last_blob, self.learner.version)
        )
        if got != self.checksum:
            raise BroadcastMismatch(
                f"{name} loaded weights with checksum {got}, learner sent {self.checksum}"
            )
        self.add_target(name, peer)  # no broadcast comes between: the service handles one call at a time
        return {"version": self.learner.version, "checksum": self.checksum, "loaded": got}

    def detach(self, name: str) -> None:
        """Stop broadcasting to `name`; its acknowledgement of the last broadcast is still
        checked, so a generator leaving the pool cannot hide a bad load."""
        self.targets.pop(name, None)
        mine = [p for p in self.pending if p[0] == name]
        self.pending = [p for p in self.pending if p[0] != name]
        self._verify(mine)

    def broadcast(self, wait: bool = False) -> dict:
        """Send the current weights as a new version to every target. Acknowledgements of
        the previous broadcast are checked first, so the learner never waits for a
        generator's engine call to finish unless `wait` is set."""
        start = time.perf_counter()
        self.verify_pending()
        blob, checksum = self.learner.export()
        self.learner.version += 1
        self.checksum = checksum
        self.last_blob = self.transport.put(blob)
        self.blob_step = self.learner.step
        self.pending = [
            (name, self.transport.call(peer, "set_weights", self.last_blob, self.learner.version), checksum)
            for name, peer in self.targets.items()
        ]
        elapsed = time.perf_counter() - start
        self.broadcast_s += elapsed
        result = {"version": self.learner.version, "checksum": checksum, "seconds": elapsed}
        if wait:
            result["acks"] = self.verify_pending()
        return result

    def verify_pending(self) -> dict[str, str]:
        pending, self.pending = self.pending, []
        return self._verify(pending)

    def _verify(self, pending: list) -> dict[str, str]:
        acks = {}
        for name, future, expected in pending:
            got = self.transport.get(future)
            if got != expected:
                raise BroadcastMismatch(f"{name} loaded weights with checksum {got}, learner sent {expected}")
            acks[name] = got
        return acks

    def current_weights(self) -> dict:
        """The weights as they are now, shared once, for evaluations that must measure one
        fixed policy while training goes on: {ref: [shared weights], version, step,
        checksum}. The last broadcast's when nothing trained since (no second export)."""
        step = self.learner.step
        if self.frozen is None or self.frozen["step"] != step:
            if self.last_blob is not None and self.blob_step == step:
                ref, checksum = self.last_blob, self.checksum
            else:
                blob, checksum = self.learner.export()
                ref = self.transport.put(blob)
            self.frozen = {"ref": [ref], "version": self.learner.version, "step": step, "checksum": checksum}
        return self.frozen

    # -- snapshots ------------------------------------------------------------------------
    def save(self, directory: str) -> None:
        """A checkpoint of the learner; every broadcast so far is acknowledged first."""
        self.verify_pending()
        self.learner.save(directory)

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

    def state(self) -> dict:
        return {
            "step": self.learner.step,
            "version": self.learner.version,
            "checksum": self.checksum,
            "wait_s": self.wait_s,
            "baselines": {f"{g}/{r}": b for (g, r), b in self.learner.baselines.items()},
        }
