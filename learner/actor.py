"""Ray shell of the learner: `LearnerService` (learner/service.py) does the work; this
class carries its calls over Ray (batches from the buffer actor as Arrow IPC, weights to
generator actors through the object store) and publishes its metrics. Two calls run at
once, so the pool can attach or drop a generator while training waits for data;
LearnerService's lock keeps them out of a step and its broadcast."""

from __future__ import annotations

import ray

from selfplay import schema
from selfplay.config import LearnerConfig, ModelConfig
from selfplay.metrics import SECONDS, ray_metric
from selfplay.transport import RayTransport


@ray.remote(
    max_concurrency=2
)  # train, and one other call (the pool's attach or drop) while it waits for data
class LearnerActor:
    def __init__(
        self,
        cfg: LearnerConfig,
        model_cfg: ModelConfig,
        model_path: str,
        seed: int,
        buffer,
        run_id: str,
        resume_dir: str | None = None,
        temperature: float = 1.0,
        group: dict | None = None,
        workers: list | None = None,
    ):
        """`group`, `workers`: rank 0 of a learner group (learner/group.py): {address, rank,
        world} and the LearnerWorker actors of ranks 1..N-1."""
        # torch and transformers load here, in the learner's process, not with this module:
        # Ray imports an actor's class module wherever a handle to the actor is deserialized,
        # and the controller, which holds the learner's handle, needs neither
        from learner.group import GroupLearner, join_group
        from learner.learner import Learner
        from learner.service import LearnerService

        if group:
            join_group(group, cfg)
        learner = Learner(cfg, model_cfg, model_path, seed, temperature, sharded=bool(group))
        if resume_dir:
            learner.load(resume_dir)  # the workers load theirs at the same time
        if group:
            learner = GroupLearner(learner, workers, RayTransport())

        def sample(n: int, version: int):
            blob = ray.get(buffer.sample.remote(n, version))
            return None if blob is None else schema.from_ipc(blob)

        host = ray.util.get_node_ip_address() if cfg.sync_host == "node" else cfg.sync_host
        self.service = LearnerService(learner, sample, RayTransport(), sync_host=host)
        tags = {"run": run_id}
        self.gauges = {
            n: ray_metric("gauge", f"learner_{n}", tags)
            for n in (
                *("step", "loss", "weight_version"),
                *("entropy", "staleness_mean"),  # a batch with policy-gradient or sft rows
                *("reward_margin", "reward_accuracy"),  # a batch with preference pairs
            )
        }
        self.histograms = {
            n: ray_metric("histogram", f"learner_{n}", tags, boundaries=SECONDS)
            for n in ("step_seconds", "broadcast_seconds")
        }

    def train(self, n_steps: int, rates: list[float] | None = None) -> list[dict]:
        steps = self.service.train(n_steps, rates)
        for m in steps:
            for name, gauge in self.gauges.items():
                if name in m:
                    gauge.set(m[name])
            self.histograms["step_seconds"].observe(m["step_s"])
            if "broadcast_seconds" in m:
                self.histograms["broadcast_seconds"].observe(m["broadcast_seconds"])
        return steps

    def cut_short(self) -> None:
        self.service.cut_short()

    def set_lr(self, lr: float) -> None:
        self.service.set_lr(lr)

    def reset_reference(self) -> bool:
        return self.service.reset_reference()

    def drop(self, name: str, reason: str, peer=None) -> None:
        self.service.drop(name, reason, peer)

    def broadcast(self, wait: bool = False) -> dict:
        result = self.service.broadcast(wait)
        self.histograms["broadcast_seconds"].observe(result["seconds"])
        return result

    def add_target(self, name: str, actor) -> None:
        self.service.add_target(name, actor)

    def attach(self, name: str, actor) -> dict:
        return self.service.attach(name, actor)

    def detach(self, name: str) -> None:
        self.service.detach(name)

    def current_weights(self, averaged: bool = False) -> dict:
        return self.service.current_weights(averaged)

    def settle(self) -> dict:
        return self.service.settle()

    def verify_pending(self) -> dict[str, str]:
        return self.service.verify_pending()

    def save(self, directory: str) -> None:
        self.service.save(directory)

    def promote(self, league, member_id: str, directory: str) -> dict:
        return self.service.promote(league, member_id, directory)

    def progress(self) -> int:
        return self.service.progress()

    def state(self) -> dict:
        return {**self.service.state(), "node_id": ray.get_runtime_context().get_node_id()}
