"""Ray shell of the learner: pulls batches from the buffer, trains, and every
`broadcast_every` steps broadcasts weights to generators and opponents."""
from __future__ import annotations

import time
from pathlib import Path

import ray

from learner.learner import Learner
from selfplay import schema
from selfplay.config import LearnerConfig, ModelConfig
from selfplay.metrics import SECONDS, ray_metric


class BroadcastMismatch(RuntimeError):
    pass


@ray.remote
class LearnerActor:
    def __init__(self, cfg: LearnerConfig, model_cfg: ModelConfig, model_path: str, seed: int,
                 buffer, run_id: str, resume_dir: str | None = None):
        self.learner = Learner(cfg, model_cfg, model_path, seed)
        if resume_dir:
            self.learner.load(resume_dir)
        self.buffer = buffer
        self.targets: dict[str, object] = {}  # name -> actor with set_weights(blob, version)
        self.pending: list = []  # (name, ref, checksum) of the last broadcast, checked at the next
        self.checksum: str | None = None
        self.last_blob = None  # object ref of the last broadcast's weights, for generators that join later
        self.wait_s = 0.0
        self.broadcast_s = 0.0
        tags = {"run": run_id}
        self.gauges = {n: ray_metric("gauge", f"learner_{n}", tags)
                       for n in ("step", "loss", "entropy", "weight_version", "staleness_mean")}
        self.histograms = {n: ray_metric("histogram", f"learner_{n}", tags, boundaries=SECONDS)
                           for n in ("step_seconds", "broadcast_seconds")}

    def add_target(self, name: str, actor) -> None:
        """Register a generator or opponent that receives every broadcast."""
        self.targets[name] = actor

    def attach(self, name: str, actor) -> dict:
        """Register a generator joining the pool: it first loads the current version's
        weights (those of the last broadcast; before any, the learner's own, which a fresh
        or resumed run's version stands for), then receives every broadcast. Returns once
        its engine echoed the learner's checksum."""
        if self.last_blob is None:
            blob, self.checksum = self.learner.export()
            self.last_blob = ray.put(blob)
        got = ray.get(actor.set_weights.remote(self.last_blob, self.learner.version))
        if got != self.checksum:
            raise BroadcastMismatch(f"{name} loaded weights with checksum {got}, learner sent {self.checksum}")
        self.add_target(name, actor)  # no broadcast can come between: this actor runs one call at a time
        return {"version": self.learner.version, "checksum": self.checksum, "loaded": got}

    def detach(self, name: str) -> None:
        """Stop broadcasting to `name`; its acknowledgement of the last broadcast is still
        checked, so a generator leaving the pool cannot hide a bad load."""
        self.targets.pop(name, None)
        mine = [p for p in self.pending if p[0] == name]
        self.pending = [p for p in self.pending if p[0] != name]
        self._verify(mine)

    def _next_batch(self):
        start = time.perf_counter()
        delay = 0.01
        while True:
            blob = ray.get(self.buffer.sample.remote(self.learner.cfg.batch_size, self.learner.version))
            if blob is not None:
                self.wait_s += time.perf_counter() - start
                return schema.from_ipc(blob)
            time.sleep(delay)  # the buffer is below min_size or rate-limiting the learner
            delay = min(delay * 2, 0.2)

    def train(self, n_steps: int) -> list[dict]:
        out = []
        for _ in range(n_steps):
            m = self.learner.train_step(self._next_batch())
            if self.learner.step % self.learner.cfg.broadcast_every == 0:
                self.broadcast()
            m.update(weight_version=self.learner.version, learner_wait_s=self.wait_s,
                     broadcast_s=self.broadcast_s)
            for name, gauge in self.gauges.items():
                gauge.set(m[name])
            self.histograms["step_seconds"].observe(m["step_s"])
            out.append(m)
        return out

    def broadcast(self, wait: bool = False) -> dict:
        """Send the current weights as a new version to every target. Acknowledgements of
        the previous broadcast are checked first, so the learner never waits for a
        generator's engine call to finish unless `wait` is set."""
        start = time.perf_counter()
        self.verify_pending()
        blob, checksum = self.learner.export()
        self.learner.version += 1
        self.checksum = checksum
        self.last_blob = ray.put(blob)
        self.pending = [(name, a.set_weights.remote(self.last_blob, self.learner.version), checksum)
                        for name, a in self.targets.items()]
        elapsed = time.perf_counter() - start
        self.broadcast_s += elapsed
        self.histograms["broadcast_seconds"].observe(elapsed)
        result = {"version": self.learner.version, "checksum": checksum}
        if wait:
            result["acks"] = self.verify_pending()
        return result

    def verify_pending(self) -> dict[str, str]:
        pending, self.pending = self.pending, []
        return self._verify(pending)

    @staticmethod
    def _verify(pending: list) -> dict[str, str]:
        acks = {}
        for name, ref, expected in pending:
            got = ray.get(ref)
            if got != expected:
                raise BroadcastMismatch(f"{name} loaded weights with checksum {got}, learner sent {expected}")
            acks[name] = got
        return acks

    def state(self) -> dict:
        return {"step": self.learner.step, "version": self.learner.version, "checksum": self.checksum,
                "node_id": ray.get_runtime_context().get_node_id(),
                "wait_s": self.wait_s, "baselines": {f"{g}/{r}": b for (g, r), b in self.learner.baselines.items()}}

    def save(self, directory: str) -> None:
        self.verify_pending()
        self.learner.save(directory)

    def promote(self, league, member_id: str, directory: str) -> dict:
        """Snapshot the current policy into the league: an HF checkpoint in `directory`
        (model + tokenizer) and its weights, sent to the league actor as the broadcast blob."""
        path = Path(directory)
        self.learner.model.save_pretrained(path, safe_serialization=True)
        self.learner.tokenizer.save_pretrained(path)
        blob, checksum = self.learner.export()
        member = {"id": member_id, "version": self.learner.version, "step": self.learner.step,
                  "path": str(path), "checksum": checksum}
        return ray.get(league.add_member.remote(member, blob))
