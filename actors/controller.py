"""Controller: the named actor that owns a run's generator pool, so the pool can grow and
shrink while the learner trains (`selfplay scale RUN --generators N`, or the autoscale
rule). A new generator loads the learner's current weights, and echoes their checksum,
before it plays a game; a removed one finishes the wave under way and waits for the
verifier to take it before it goes, so no game is lost or counted twice."""
from __future__ import annotations

import threading
import time

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.generator import GeneratorActor
from selfplay.config import RunConfig
from selfplay.metrics import ray_metric
from selfplay.scaling import autoscale_target, generator_bundles, idle_shares, pool_plan

COUNTS = ("games", "turns", "tokens", "sent", "wait_s")


@ray.remote(num_cpus=0, max_concurrency=8)
class ControllerActor:
    def __init__(self, cfg: RunConfig, run_id: str, model_path: str, learner, verifier, buffer,
                 league=None, seed_offset: int = 0):
        self.cfg, self.run_id, self.model_path = cfg, run_id, model_path
        self.learner, self.verifier, self.buffer, self.league = learner, verifier, buffer, league
        self.seed_offset = seed_offset
        self.live: dict[str, object] = {}  # name -> generator actor, playing
        self.runs: dict[str, object] = {}  # name -> ref of its run loop
        self.groups: dict[str, object] = {}  # name -> placement group (tensor-parallel generators)
        self.stopping: set[str] = set()
        self.retired: list[dict] = []  # final stats of generators that left the pool
        self.events: list[dict] = []
        self.created = 0
        self.scale_lock = threading.Lock()  # one pool change at a time
        self.closing = threading.Event()  # set by stop_all: training is over
        self.lock = threading.Lock()  # guards live/runs/stopping/retired/events
        self.last_tick: tuple[float, float, float] | None = None  # time, learner wait, generator wait
        self.last_change = 0.0
        self.size = ray_metric("gauge", "controller_generators", {"run": run_id})

    # -- pool changes -------------------------------------------------------------------
    def scale(self, n: int, timeout_s: float = 600.0) -> dict:
        """Grow or shrink the pool to n generators; returns the pool's status."""
        a = self.cfg.autoscale
        if a.enabled and not a.min_generators <= n <= a.max_generators:
            raise ValueError(f"{n} generators is outside the autoscale bounds [{a.min_generators}, "
                             f"{a.max_generators}] (autoscale.min_generators / max_generators)")
        with self.scale_lock:
            if self.closing.is_set():
                raise RuntimeError("training has ended: the generator pool no longer changes")
            try:
                start, stop = pool_plan(list(self.live), n)
                if start:
                    self._start(start, timeout_s)
                for name in stop:
                    self._stop(name)
            finally:
                self.last_change = time.time()
        return self.status()

    def _create(self, name: str):
        g = self.cfg.generator
        index = int(name.rsplit("-", 1)[1])
        options = {"name": name, "num_cpus": g.num_cpus, "num_gpus": g.num_gpus, "resources": g.resources}
        if g.tensor_parallel_size > 1:  # the engine's workers take the GPUs of the group's bundles
            group = placement_group(generator_bundles(g), strategy="STRICT_PACK")
            self.groups[name] = group
            options.update(num_cpus=g.num_cpus / g.tensor_parallel_size, num_gpus=0,
                           scheduling_strategy=PlacementGroupSchedulingStrategy(
                               group, placement_group_bundle_index=0,
                               placement_group_capture_child_tasks=True))
        self.created += 1
        seed = self.cfg.seed + 1000 * (index + 1) + self.seed_offset + self.created
        return GeneratorActor.options(**options).remote(
            name, self.run_id, self.cfg.games, self.model_path, self.cfg.model, g, seed, 0,
            self.cfg.league.max_live_opponents)

    def _start(self, names: list[str], timeout_s: float) -> None:
        """Start generators, wait until their engines are up (or training ends), give each
        the learner's weights, then set it playing. On any failure the ones not yet
        playing are discarded, so their names and resources are free again."""
        handles = {name: self._create(name) for name in names}
        try:
            ready = {handles[name].stats.remote(): name for name in names}
            pending, deadline = list(ready), time.time() + timeout_s
            while pending and time.time() < deadline and not self.closing.is_set():
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            if self.closing.is_set():
                raise RuntimeError("training ended while generators were starting")
            if pending:
                late = sorted(ready[r] for r in pending)
                raise TimeoutError(
                    f"{', '.join(late)} not running after {timeout_s:.0f} s: each needs "
                    f"{self._needs()}; the cluster has {ray.available_resources()} free")
            stats = dict(zip(ready.values(), ray.get(list(ready))))  # an engine that failed to start raises
            for name, handle in handles.items():
                joined = ray.get(self.learner.attach.remote(name, handle))
                run = handle.run.remote(self.verifier, self.buffer, self.league)
                with self.lock:
                    self.live[name], self.runs[name] = handle, run
                    self.events.append({"event": "start", "generator": name, "time": time.time(),
                                        "version": joined["version"], "checksum": joined["checksum"],
                                        "generator_checksum": joined["loaded"],
                                        "node_id": stats[name]["node_id"]})
                self.size.set(len(self.live))
        except BaseException:
            for name, handle in handles.items():
                if name not in self.live:
                    self._discard(name, handle)
            raise

    def _needs(self) -> dict:
        g = self.cfg.generator
        return {"CPU": g.num_cpus, "GPU": g.num_gpus, **g.resources}

    def _stop(self, name: str) -> None:
        """Stop one generator: its run loop finishes the wave under way and returns once
        the verifier has every game it played; then the learner drops it (checking its
        last acknowledgement) and the actor goes."""
        with self.lock:
            self.stopping.add(name)
            handle, run = self.live[name], self.runs[name]
        try:
            ray.get(handle.stop.remote())
            final = ray.get(run)
            ray.get(self.learner.detach.remote(name))
            with self.lock:
                self.retired.append(final)
                self.events.append({"event": "stop", "generator": name, "time": time.time(),
                                    "sent": final["sent"], "version": final["version"],
                                    "checksum": final["checksum"]})
        finally:  # a generator that failed while stopping goes too; its error propagates
            with self.lock:
                del self.live[name], self.runs[name]
                self.stopping.discard(name)
            self._discard(name, handle)
            self.size.set(len(self.live))

    def _discard(self, name: str, handle) -> None:
        ray.kill(handle)
        group = self.groups.pop(name, None)
        if group is not None:
            remove_placement_group(group)

    def stop_all(self) -> dict:
        """End of training: every generator finishes its wave and stops playing; the actors
        stay for the final evaluations and go with this controller. Returns the status."""
        self.closing.set()  # a pool change under way gives up; none starts after this
        with self.scale_lock:
            with self.lock:
                self.stopping |= set(self.live)
                live, runs = dict(self.live), dict(self.runs)
            ray.get([h.stop.remote() for h in live.values()])
            ray.get(list(runs.values()))
            with self.lock:
                self.runs.clear()
        return self.status()

    # -- autoscaling --------------------------------------------------------------------
    def autoscale(self, learner_wait_s: float) -> int | None:
        """One tick of the autoscale rule, given the learner's cumulative wait for data.
        Starts a pool change in the background and returns its target, or None."""
        now, status = time.time(), self.status()
        last, self.last_tick = self.last_tick, (now, learner_wait_s, status["totals"]["wait_s"])
        a, size = self.cfg.autoscale, len(status["generators"])
        if (last is None or self.closing.is_set() or self.scale_lock.locked()
                or now - self.last_change < a.cooldown_s):
            return None
        learner_idle, generator_idle = idle_shares(last, self.last_tick, size)
        target = autoscale_target(size, learner_idle, generator_idle, a)
        if target == size:
            return None
        with self.lock:
            self.events.append({"event": "autoscale", "time": now, "from": size, "to": target,
                                "learner_idle": learner_idle, "generator_idle": generator_idle})
        threading.Thread(target=self._autoscale_to, args=(target,), daemon=True).start()
        return target

    def _autoscale_to(self, target: int) -> None:
        try:
            self.scale(target)
        except Exception as err:  # recorded where the driver logs pool events; the next tick may retry
            with self.lock:
                self.events.append({"event": "autoscale_failed", "time": time.time(), "to": target,
                                    "error": f"{type(err).__name__}: {err}"[:2000]})

    # -- watching -----------------------------------------------------------------------
    def check(self) -> int:
        """Raise if a generator's run loop ended without being stopped (it can only have
        failed); returns the pool size."""
        with self.lock:
            runs = {ref: name for name, ref in self.runs.items() if name not in self.stopping}
        if runs:
            done, _ = ray.wait(list(runs), num_returns=len(runs), timeout=0)
            for ref in done:
                ray.get(ref)
                raise RuntimeError(f"{runs[ref]} stopped playing while training")
        return len(runs)

    def generator(self, name: str):
        return self.live[name]

    def status(self) -> dict:
        """Live generators' stats, retired generators' final stats, totals over both
        (COUNTS), and the pool's events (start, stop, autoscale)."""
        for attempt in range(3):
            with self.lock:  # one snapshot: a generator is either live or retired in it
                handles, retired, events = dict(self.live), list(self.retired), list(self.events)
            try:
                live = dict(zip(handles, ray.get([h.stats.remote() for h in handles.values()])))
                break
            except ray.exceptions.RayActorError:
                if attempt == 2 or set(handles) <= set(self.live):
                    raise  # a live generator died: that is a failure, not a pool change
        self.size.set(len(live))  # set again: Ray stops exporting a gauge soon after its last set
        totals = {k: sum(s[k] for s in [*live.values(), *retired]) for k in COUNTS}
        return {"generators": live, "retired": retired, "totals": totals, "events": events}
