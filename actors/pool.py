"""The generator pool's protocols, without Ray: grow and shrink the pool while the learner
trains, autoscale it, watch it. `actors/controller.py` is only its Ray transport.

Joining: a new generator's engine starts, it loads the learner's current weights and
echoes their checksum (`learner.attach`), and only then plays. Leaving: its wave loop
finishes the wave under way and returns once the verifier has every game it played; the
learner checks its last acknowledgement; then it goes. So no game is lost or counted
twice. `generator-0` (evaluations) never leaves.

Healing (`check`, every few seconds): a generator whose wave loop ended without a stop
(it raised, its actor died, or the learner stopped it for not acknowledging a load) or
whose loop made no progress for `generator.hang_timeout_s` (its `beats` stand still, or
it does not answer the probe) is failed: the learner drops it from the broadcast, it is
killed, and the pool grows back to its target under the freed name, the newcomer loading
the current weights before it plays (as any joining generator). The games it was playing
are lost in flight, never half-handed on: a wave reaches the verifier whole or not at
all. A name that fails more than `generator.max_restarts` times ends the run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from selfplay.config import RunConfig
from selfplay.scaling import EVAL_GENERATOR, autoscale_target, idle_shares, pool_plan

# how long `generator` waits on a live generator's stats before handing it over unanswered
STATS_WAIT_S = 30.0
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
        self.target = 0  # the size asked for last; a failed generator's place is refilled
        self.failures: dict[str, int] = {}  # name -> times it failed
        self.probes: dict[str, tuple] = {}  # name -> (stats call, time sent): the health probe
        self.progress: dict[str, tuple[int, float]] = {}  # name -> (beats, when first read)
        self.last_stats: dict[str, dict] = {}  # name -> its last probe's answer
        self.healing = threading.Lock()  # one repair at a time
        self.repairs_failed = 0  # replacements that did not start, in a row
        self.repair_after = 0.0  # monotonic time before which no repair is tried (backoff)
        self.learner_lost: str | None = None  # set when a repair failed because the learner died
        self.checking = threading.Lock()  # one check at a time

    # -- pool changes -------------------------------------------------------------------
    def scale(self, n: int, timeout_s: float = 600.0, repair: bool = False) -> dict:
        """Grow or shrink the pool to n generators; returns the pool's status. A change
        asked for that fails leaves the target at the size the pool has (`repair`: a
        replacement, whose failure leaves it for the next try)."""
        a = self.cfg.autoscale
        if a.enabled and not a.min_generators <= n <= a.max_generators:
            raise ValueError(
                f"{n} generators is outside the autoscale bounds [{a.min_generators}, "
                f"{a.max_generators}] (autoscale.min_generators / max_generators)"
            )
        with self.scale_lock:
            if self.closing.is_set():
                raise RuntimeError("training has ended: the generator pool no longer changes")
            self.target = n
            try:
                start, stop = pool_plan(list(self.live), n)
                if start:
                    self._start(start, timeout_s)
                for name in stop:
                    self._stop(name)
            except BaseException:
                if not repair:
                    self.target = len(self.live)
                raise
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
                    self.progress[name] = (-1, time.monotonic())
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
        last acknowledgement) and the generator goes. One still playing
        `generator.hang_timeout_s` after `stop` is failed (not replaced), so a pool change
        never waits on it for ever (holding the scale lock, which the end of training takes)."""
        t = self.transport
        hang = self.cfg.generator.hang_timeout_s
        with self.lock:
            self.stopping.add(name)
            peer, loop = self.live[name], self.loops[name]
        try:
            t.get(t.call(peer, "stop"))
            if not t.wait([loop], timeout=hang)[0]:
                self._fail(name, f"hung: still playing {hang:g} s after stop", limit=False)
                return
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
                failed = name not in self.live  # `_fail` took it out
                if not failed:
                    del self.live[name], self.loops[name]
                self.stopping.discard(name)
                # its probe books go with it: a later generator of the same name starts afresh
                for books in (self.probes, self.progress, self.last_stats):
                    books.pop(name, None)
            if not failed:
                self.discard(name, peer)
                self.on_size(len(self.live))

    def stop_all(self) -> dict:
        """End of training: every generator finishes its wave and stops playing; the
        generators stay for the final evaluations. One that died, failed or does not
        finish within `generator.hang_timeout_s` is failed (not replaced). Returns the
        status."""
        t = self.transport
        self.closing.set()  # a pool change under way gives up; none starts after this
        with self.scale_lock:
            with self.lock:
                self.stopping |= set(self.live)
                live, loops = dict(self.live), dict(self.loops)
            for peer in live.values():
                t.call(peer, "stop")
            deadline = time.monotonic() + self.cfg.generator.hang_timeout_s
            for name, loop in loops.items():
                if not t.wait([loop], timeout=max(deadline - time.monotonic(), 0))[0]:
                    self._fail(
                        name,
                        f"hung: still playing {self.cfg.generator.hang_timeout_s:g} s after stop",
                        limit=False,
                    )
                    continue
                try:
                    t.get(loop)
                except Exception:
                    self._fail(name, self._ended(loop), limit=False)
            with self.lock:
                self.loops.clear()
        return self.status()

    # -- autoscaling --------------------------------------------------------------------
    def autoscale(self, learner_wait_s: float, measure: bool = True) -> int | None:
        """One tick of the autoscale rule, given the learner's cumulative wait for data.
        Starts a pool change in the background and returns its target, or None. `measure`
        False: the interval is not one the rule may read (the supervised stage, whose
        generators wait for it to end, not on the rate limit, and read as too many): the
        reading is dropped, so the next tick only takes one."""
        if not measure:
            self.last_tick = None
            return None
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

    # -- watching and healing -----------------------------------------------------------
    def check(self) -> int:
        """Find failed generators (loop ended unasked, dead, or hung) and replace them in
        the background; returns the number playing. Raises only when a name has failed
        more than `generator.max_restarts` times."""
        with self.checking:
            return self._check()

    def _check(self) -> int:
        t, g = self.transport, self.cfg.generator
        with self.lock:
            watched = {n: (self.live[n], f) for n, f in self.loops.items() if n not in self.stopping}
            # after training (stop_all) the generators stay for the final evaluations and play
            # no more: only an unanswered probe tells a frozen one (SIGSTOP) from the others
            idle = dict(self.live) if self.closing.is_set() and not self.loops else {}
        for name, peer in idle.items():
            reason = self._probe(name, peer, playing=False)
            if reason:  # an evaluation waiting on it ends (the driver checks while it waits)
                self._fail(name, reason, limit=False)
        failed: dict[str, str] = {}
        if watched:
            futures = [f for _, f in watched.values()]
            done, _ = t.wait(futures, num_returns=len(futures), timeout=0)
            for name, (_, f) in watched.items():
                if any(f is d for d in done):
                    failed[name] = self._ended(f)
        for name, (peer, _) in watched.items():
            if name not in failed:
                reason = self._probe(name, peer)
                if reason:
                    failed[name] = reason
        for name, reason in failed.items():
            self._fail(name, reason)
        if self.learner_lost:  # an evaluation waiting in `generator` would wait in vain
            raise RuntimeError(self.learner_lost)
        if self.repairs_failed > g.max_restarts and not self.closing.is_set():  # (none is tried after)
            raise RuntimeError(
                f"the pool could not replace its failed generators {self.repairs_failed} times in a row "
                f"(generator.max_restarts {g.max_restarts}); see the events"
            )
        if (
            # below its size, or without generator-0 (evaluations run there) at any size: a
            # scale that failed while it was down left the target at the size without it
            (len(self.live) < self.target or (self.target and EVAL_GENERATOR not in self.live))
            and not self.closing.is_set()
            and time.monotonic() >= self.repair_after
        ):
            self._repair()
        return len(watched) - len(failed)

    def _probe(self, name: str, peer, playing: bool = True) -> str | None:
        """The health probe: read the answer to the last stats call, send the next. A reason
        when `name` is hung: its loop's `beats` stood still between two answers further
        apart than hang_timeout_s (measured from reading the first to sending the second,
        which the loop stood still through, however seldom `check` runs; only while
        `playing`), or a call went unanswered that long."""
        t, hang_s = self.transport, self.cfg.generator.hang_timeout_s
        now = time.monotonic()
        probe, sent = self.probes.get(name, (None, now))
        if probe is not None:
            if not t.wait([probe], timeout=0)[0]:
                return f"hung: the probe unanswered for {now - sent:.0f} s" if now - sent > hang_s else None
            try:
                stats = t.get(probe)
            except t.dead as err:
                return f"died: {type(err).__name__}"
            self.last_stats[name] = stats
            beats, since = self.progress[name]
            # a match (head_to_head) holds the loop on the league's members: waiting, not hung
            if stats["beats"] != beats or stats.get("matching"):
                self.progress[name] = (stats["beats"], now)
            elif playing and sent - since > hang_s:
                return f"hung: its loop stood still for {sent - since:.0f} s"
        self.probes[name] = (t.call(peer, "stats"), time.monotonic())
        return None

    def _ended(self, loop) -> str:
        """Why a wave loop that nobody stopped ended."""
        try:
            self.transport.get(loop)
        except self.transport.dead as err:
            return f"died: {type(err).__name__}"
        except Exception as err:
            return f"failed: {type(err).__name__}: {err}"[:2000]
        return "stopped playing (the learner dropped it, or its loop returned)"

    def _fail(self, name: str, reason: str, limit: bool = True) -> None:
        """Take a failed generator out: the learner stops broadcasting to it (a call that
        does not wait: the learner may be waiting for data), it is killed, its last probed
        stats are retired with the reason. `limit`: raise past max_restarts."""
        with self.lock:
            peer = self.live.pop(name)
            self.loops.pop(name, None)
            self.stopping.discard(name)
            self.probes.pop(name, None)
            self.progress.pop(name, None)
            last = self.last_stats.pop(name, None)
            self.failures[name] = self.failures.get(name, 0) + 1
            # its stats as last probed (never probed: zeros), so the books count it
            seen = last if last is not None else {"id": name, "sent": 0, **dict.fromkeys(COUNTS, 0)}
            self.retired.append({**seen, "failed": reason, "probed": last is not None})
            self.events.append(
                {
                    "event": "failed",
                    "generator": name,
                    "time": time.time(),
                    "reason": reason,
                    "failures": self.failures[name],
                    "sent_before": None if last is None else last["sent"],
                }
            )
        self.transport.call(self.learner, "drop", name, reason, peer)  # not a replacement under its name
        self.discard(name, peer)
        self.on_size(len(self.live))
        if limit and self.failures[name] > self.cfg.generator.max_restarts:
            raise RuntimeError(
                f"{name} failed {self.failures[name]} times (generator.max_restarts "
                f"{self.cfg.generator.max_restarts}); last: {reason}"
            )

    def _repair(self) -> None:
        """Grow the pool back to its target in the background (one repair at a time; a
        failed start is recorded, and a check tries again after a backoff of 10 s, 20 s,
        ... up to 5 min)."""
        if not self.healing.acquire(blocking=False):
            return

        def run():
            try:
                if not self.closing.is_set():
                    self.scale(self.target, repair=True)
                self.repairs_failed = 0
            except Exception as err:
                self.repairs_failed += 1
                self.repair_after = time.monotonic() + min(10.0 * self.repairs_failed, 300.0)
                self.learner_lost = self._learner_lost()
                with self.lock:
                    self.events.append(
                        {
                            "event": "repair_failed",
                            "time": time.time(),
                            "error": f"{type(err).__name__}: {err}"[:2000],
                        }
                    )
            finally:
                self.healing.release()

        threading.Thread(target=run, daemon=True).start()

    def _learner_lost(self) -> str | None:
        """Why no generator can be replaced any more: the learner every newcomer attaches
        to is dead (its `progress` is read without its lock, so a busy learner answers)."""
        t = self.transport
        try:
            t.get(t.call(self.learner, "progress"), timeout=30.0)
        except t.dead as err:
            return f"the learner died ({type(err).__name__}): no generator can be replaced without it"
        except TimeoutError:  # busy or slow, not dead
            pass
        return None

    def generator(self, name: str, timeout_s: float = 600.0):
        """The live generator `name`, waiting up to timeout_s while a failed one is
        replaced (checking the pool meanwhile: nobody else may be). A live one that does not
        answer its stats within STATS_WAIT_S is handed over all the same: the caller's waits
        check the pool, which fails it if it stays frozen."""
        deadline, t = time.time() + timeout_s, self.transport
        with self.checking:  # a caller asking again may have seen it die: make sure
            peer = self.live.get(name)
            if peer is not None:
                try:
                    t.get(t.call(peer, "stats"), timeout=STATS_WAIT_S)
                except t.dead as err:
                    self._fail(name, f"died: {type(err).__name__}")
                    self._repair()
                except TimeoutError:  # busy or frozen: `check` tells which (the caller's
                    pass  # waits run it) and fails a frozen one; raising here ended the run
        while name not in self.live and time.time() < deadline and not self.closing.is_set():
            time.sleep(0.5)
            self.check()
        if name not in self.live:
            raise RuntimeError(
                f"{name} is not running (training has ended, or it failed and was not replaced)"
            )
        return self.live[name]

    def status(self) -> dict:
        """Live generators' stats, retired generators' final stats, totals over both
        (COUNTS), and the pool's events (start, stop, autoscale)."""
        t = self.transport
        with self.lock:  # one snapshot: a generator is either live or retired in it
            peers, retired, events = dict(self.live), list(self.retired), list(self.events)
        live, deadline = {}, time.monotonic() + 5.0
        for name, future in [(name, t.call(p, "stats")) for name, p in peers.items()]:
            try:
                live[name] = t.get(future, timeout=max(deadline - time.monotonic(), 0))
            except (*t.dead, TimeoutError):  # dead or hung: `check` replaces it; its last answer
                if name in self.last_stats:
                    live[name] = self.last_stats[name]
        self.on_size(len(live))  # set again: Ray stops exporting a gauge soon after its last set
        totals = {k: sum(s[k] for s in [*live.values(), *retired]) for k in COUNTS}
        return {"generators": live, "retired": retired, "totals": totals, "events": events}
