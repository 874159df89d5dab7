"""Controller: the named actor that owns a run's generator pool, so the pool can grow and
shrink while the learner trains (`selfplay scale RUN --generators N`, or the autoscale
rule). `GeneratorPool` (actors/pool.py) holds the protocols; this class only carries
them over Ray and publishes the pool's size."""

from __future__ import annotations

import ray

from actors.pool import GeneratorPool
from selfplay.config import RunConfig
from selfplay.metrics import ray_metric
from selfplay.transport import RayTransport


@ray.remote(num_cpus=0, max_concurrency=8)
class ControllerActor:
    def __init__(
        self,
        cfg: RunConfig,
        run_id: str,
        model_path: str,
        learner,
        verifier,
        buffer,
        league=None,
        seed_offset: int = 0,
    ):
        from selfplay.program import discard_generator, spawn_generator  # the program builds this actor

        size = ray_metric("gauge", "controller_generators", {"run": run_id})
        groups: dict[str, object] = {}  # name -> placement group of a tensor-parallel generator

        def spawn(name: str, serial: int):
            handle, groups[name] = spawn_generator(cfg, run_id, model_path, name, seed_offset + serial)
            return handle

        self.pool = GeneratorPool(
            cfg,
            RayTransport(),
            spawn,
            lambda name, handle: discard_generator(name, handle, groups.pop(name, None)),
            learner,
            verifier,
            buffer,
            league,
            on_size=size.set,
        )

    def scale(self, n: int, timeout_s: float = 600.0) -> dict:
        return self.pool.scale(n, timeout_s)

    def stop_all(self) -> dict:
        return self.pool.stop_all()

    def autoscale(self, learner_wait_s: float, measure: bool = True) -> int | None:
        return self.pool.autoscale(learner_wait_s, measure)

    def check(self) -> int:
        return self.pool.check()

    def generator(self, name: str):
        return self.pool.generator(name)

    def status(self) -> dict:
        return self.pool.status()
