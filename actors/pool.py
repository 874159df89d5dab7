"""The generator pool's protocols, without Ray: grow and shrink the pool while the learner
trains, autoscale it, watch it. `actors/controller.py` is only its Ray transport.

Joining: a new generator's engine starts, it loads the learner's current weights and
echoes their checksum (`learner.attach`), and only then plays. Leaving: its wave loop
finishes the wave under way and returns once the verifier has every game it played; the
learner checks its last acknowledgement; then it goes. So no game is lost or counted
twice. `generator-0` (evaluations) never leaves."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from selfplay.config import RunConfig
from selfplay.scaling import autoscale_target, idle_shares, pool_plan

COUNTS = ("games", "turns", "tokens", "sent", "wait_s", "play_s", "eval_games", "eval_turns", "eval_tokens")


class GeneratorPool:
    """`spawn(name, serial) -> peer` starts a generator (`serial` counts the generators this
    pool started, so a restarted name draws new games; placement is the program's decision,
    see selfplay/program.py); `discard(name, peer)` ends one and frees what it held.
    Generators, learner, verifier, buffer and league are peers of `transport`."""

    def __init__(
        self,
        cfg: RunConfig,
        transport,
        spawn: Callable[[str, int], object],
        discard: Callable[[str, object], None],
        learner,
        verifier,
        buffer,
        league=None,
        on_size: Callable[[int], None] = lambda n: None,
    ):
        self.cfg = cfg
        self.transport = transport
        self.spawn = spawn
        self.discard = discard
        self.learner = learner
        self.verifier = verifier
        self.buffer = buffer
        self.league = league
        self.on_size = on_size  # the pool's size after every change (the controller's gauge)
        self.live: dict[str, object] = {}  # name -> generator, playing
        self.loops: dict[str, object] = {}  # name -> future of its wave loop
        self.stopping: set[str] = set()
        self.retired: list[dict] = []  # final stats of generators that left the pool
        self.events: list[dict] = []
        self.scale_lock = threading.Lock()  # one pool change at a time
        self.closing = threading.Event()  # set by stop_all: training is over
        self.lock = threading.Lock()  # guards live/loops/stopping/retired/events
        self.last_tick: tuple[float, float, float] | None = None  # time, learner wait, generator wait
        self.last_change = 0.0
        self.created = 0

    # -- pool changes -------------------------------------------------------------------
    def scale(self, n: int, timeout_s: float = 600.0) -> dict:
        """Grow or shrink the pool to n generators; returns the pool's status."""
        a = self.cfg.autoscale
        if a.enabled and not a.min_generators <= n <= a.max_generators:
            raise ValueError(
                f"{n} generators is outside the autoscale bounds [{a.min_generators}, "
                f"{a.max_generators}] (autoscale.min_generators / max_generators)"
            )
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

    def _start(self, names: list[str], timeout_s: float) -> None:
        """Start generators, wait until their engines are up (or training ends), give each
        the learner's weights, then set it playing. On any failure the ones not yet
        playing are discarded, so their names and resources are free again."""
        t = self.transport
        peers = {}
        try:
            for name in names:
                self.created += 1
                peers[name] = self.spawn(name, self.created)
            ready = {name: t.call(peers[name], "stats") for name in names}
            pending, deadline = list(ready.values()), time.time() + timeout_s
            while pending and time.time() < deadline and not self.closing.is_set():
                _, pending = t.wait(pending, num_returns=len(pending), timeout=1.0)
            if self.closing.is_set():
                raise RuntimeError("training ended while generators were starting")
            if pending:
                late = sorted(name for name, f in ready.items() if any(f is p for p in pending))
                raise TimeoutError(
                    f"{', '.join(late)} not running after {timeout_s:.0f} s: each needs "
                    f"{self._needs()}; the cluster has {t.available()} free"
                )
            stats = {name: t.get(f) for name, f in ready.items()}  # an engine that failed to start raises
            for name, peer in peers.items():
                joined = t.get(t.call(self.learner, "attach", name, peer))
                loop = t.call(peer, "play_loop", self.verifier, self.buffer, self.league)
                with self.lock:
                    self.live[name], self.loops[name] = peer, loop
                    self.events.append(
                        {
                            "event": "start",
                            "generator": name,
                            "time": time.time(),
                            "version": joined["version"],
                            "checksum": joined["checksum"],
                            "generator_checksum": joined["loaded"],
                            "node_id": stats[name].get("node_id"),
                        }
                    )
                self.on_size(len(self.live))
        except BaseException:
            for name, peer in peers.items():
                if name not in self.live:
                    self.discard(name, peer)
            raise

    def _needs(self) -> dict:
        g = self.cfg.generator
        return {"CPU": g.num_cpus, "GPU": g.num_gpus, **g.resources}

    def _stop(self, name: str) -> None:
        """Stop one generator: its wave loop finishes the wave under way and returns once
        the verifier has every game it played; then the learner drops it (checking its
        last acknowledgement) and the generator goes."""
        t = self.transport
        with self.lock:
            self.stopping.add(name)
            peer, loop = self.live[name], self.loops[name]
        try:
            t.get(t.call(peer, "stop"))
            final = t.get(loop)
            t.get(t.call(self.learner, "detach", name))
            with self.lock:
                self.retired.append(final)
                self.events.append(
                    {
                        "event": "stop",
                        "generator": name,
                        "time": time.time(),
                        "sent": final["sent"],
                        "version": final["version"],
                        "checksum": final["checksum"],
                    }
                )
        finally:  # a generator that failed while stopping goes too; its error propagates
            with self.lock:
                del self.live[name], self.loops[name]
                self.stopping.discard(name)
            self.discard(name, peer)
            self.on_size(len(self.live))

    def stop_all(self) -> dict:
        """End of training: every generator finishes its wave and stops playing; the
        generators stay for the final evaluations. Returns the status."""
        t = self.transport
        self.closing.set()  # a pool change under way gives up; none starts after this
        with self.scale_lock:
            with self.lock:
                self.stopping |= set(self.live)
                live, loops = dict(self.live), dict(self.loops)
            t.get([t.call(peer, "stop") for peer in live.values()])
            t.get(list(loops.values()))
            with self.lock:
                self.loops.clear()
        return self.status()

    # -- autoscaling --------------------------------------------------------------------
    def autoscale(self, learner_wait_s: float) -> int | None:
        """One tick of the autoscale rule, given the learner's cumulative wait for data.
        Starts a pool change in the background and returns its target, or None."""
        now, status = time.time(), self.status()
        last, self.last_tick = self.last_tick, (now, learner_wait_s, status["totals"]["wait_s"])
        a, size = self.cfg.autoscale, len(status["generators"])
        if (
            last is None
            or self.closing.is_set()
            or self.scale_lock.locked()
            or now - self.last_change < a.cooldown_s
        ):
            return None
        learner_idle, generator_idle = idle_shares(last, self.last_tick, size)
        target = autoscale_target(size, learner_idle, generator_idle, a)
        if target == size:
            return None
        with self.lock:
            self.events.append(
                {
                    "event": "autoscale",
                    "time": now,
                    "from": size,
                    "to": target,
                    "learner_idle": learner_idle,
                    "generator_idle": generator_idle,
                }
            )
        threading.Thread(target=self._autoscale_to, args=(target,), daemon=True).start()
        return target

    def _autoscale_to(self, target: int) -> None:
        try:
            self.scale(target)
        except Exception as err:  # recorded where the driver logs pool events; the next tick may retry
            with self.lock:
                self.events.append(
                    {
                        "event": "autoscale_failed",
                        "time": time.time(),
                        "to": target,
                        "error": f"{type(err).__name__}: {err}"[:2000],
                    }
                )

    # -- watching -----------------------------------------------------------------------
    def check(self) -> int:
        """Raise if a generator's wave loop ended without being stopped (it can only have
        failed); returns the pool size."""
        t = self.transport
        with self.lock:
            loops = [(name, f) for name, f in self.loops.items() if name not in self.stopping]
        if loops:
            done, _ = t.wait([f for _, f in loops], num_returns=len(loops), timeout=0)
            for name, f in loops:
                if any(f is d for d in done):
                    t.get(f)
                    raise RuntimeError(f"{name} stopped playing while training")
        return len(loops)

    def generator(self, name: str):
        return self.live[name]

    def status(self) -> dict:
        """Live generators' stats, retired generators' final stats, totals over both
        (COUNTS), and the pool's events (start, stop, autoscale)."""
        t = self.transport
        for attempt in range(3):
            with self.lock:  # one snapshot: a generator is either live or retired in it
                peers, retired, events = dict(self.live), list(self.retired), list(self.events)
            try:
                live = dict(zip(peers, t.get([t.call(p, "stats") for p in peers.values()])))
                break
            except t.dead:
                if attempt == 2 or set(peers) <= set(self.live):
                    raise  # a live generator died: that is a failure, not a pool change
        self.on_size(len(live))  # set again: Ray stops exporting a gauge soon after its last set
        totals = {k: sum(s[k] for s in [*live.values(), *retired]) for k in COUNTS}
        return {"generators": live, "retired": retired, "totals": totals, "events": events}
