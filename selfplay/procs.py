"""The processes a command started, so that none outlives it. A local Ray's processes
(GCS, raylet, workers) and what they start (a vLLM engine core per engine) are this
process's descendants while their parents live; a SIGTERM to the whole process group
kills some parents first, and their children (an engine core) are orphaned out of the
tree. So the tree is remembered as it is seen, and at the end whatever of it still runs
is ended."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import psutil

SHM = Path("/dev/shm")
SEGMENT_PREFIX = "psm_"  # Python's shared_memory names, as vLLM's message queues use them


def gone(p: psutil.Process) -> bool:
    """Ended, or a zombie (dead, not yet waited for by its parent)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Descendants:
    """The descendants of this process started after it was made."""

    def __init__(self, anchors: tuple[str, ...] = ("gcs_server", "raylet")) -> None:
        """`anchors`: names of the processes without which the rest is useless (a local
        Ray's GCS and raylet): once one is seen to die, `watch` ends everything else at
        once; Ray would end this process a minute later, leaving the orphans."""
        self.seen: dict[int, psutil.Process] = {}
        self.anchor_names = anchors
        self.anchors: list[tuple[str, psutil.Process]] = []
        # what this process had started before: not this command's (a test session's Ray)
        self.earlier = {p.pid: p for p in psutil.Process().children(recursive=True)}
        self.segments_before = segments()
        self.removed_segments: list[
            str
        ] = []  # shared memory left by processes killed before they unlinked it
        self.done = threading.Event()  # set: `watch` stops

    def refresh(self) -> None:
        """Remember every current descendant (a `psutil.Process` keeps its creation time,
        so a reused pid is never mistaken for it later), but for the processes started
        before, and theirs: a child that an earlier helper (a test session's Ray, a shell
        loop) starts later is not this command's (it was adopted, and ended at `close`)."""
        earlier = {pid for pid, q in self.earlier.items() if q.is_running()}
        for p in psutil.Process().children(recursive=True):
            if p.pid in earlier:
                continue
            try:
                if any(a.pid in earlier for a in p.parents()):
                    continue
            except psutil.NoSuchProcess:
                continue
            known = self.seen.get(p.pid)
            if known is None or not known.is_running():  # new, or a reused pid
                self.seen[p.pid] = p
                try:
                    name = p.name()
                except psutil.NoSuchProcess:
                    continue
                if name in self.anchor_names:
                    self.anchors.append((name, p))

    def watch(self, every_s: float = 2.0, on_lost=None) -> threading.Event:
        """Refresh every `every_s` in a daemon thread until `close` (or the returned event
        is set), or until an anchor dies: then `reap` (a SIGTERM to the process group kills
        the raylet with the rest, and the engine cores it orphans must not outlive the
        command) and call `on_lost(names of the anchors lost, pids ended)`."""
        done = self.done

        def loop() -> None:
            while not done.wait(every_s):
                try:
                    self.refresh()
                except psutil.Error:  # a process vanished mid-walk: the next look sees the rest
                    pass
                lost = sorted({name for name, p in self.anchors if gone(p)})
                if lost and not done.is_set():
                    ended = self.reap()
                    if on_lost is not None:
                        on_lost(lost, ended)
                    return

        self.refresh()
        threading.Thread(target=loop, name="descendants", daemon=True).start()
        return done

    def close(self, shutdown) -> list[int]:
        """The command's end: stop watching; `shutdown()` (Ray's own, gracefully: engines
        close) while the GCS still runs (with it dead, a Ray call would hang until Ray ends
        this process); then end whatever is left. Returns the pids that had to be ended."""
        self.done.set()
        self.refresh()
        if self.alive("gcs_server"):
            shutdown()
        return self.reap()

    def alive(self, name: str | None = None) -> list[psutil.Process]:
        out = []
        for p in self.seen.values():
            try:
                if (
                    p.is_running()
                    and p.status() != psutil.STATUS_ZOMBIE
                    and (name is None or p.name() == name)
                ):
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    def reap(self, grace_s: float = 10.0) -> list[int]:
        """SIGTERM every remembered process still running, SIGKILL those still there after
        `grace_s`; the pids that had to be ended."""
        left = self.alive()
        for p in left:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, stubborn = psutil.wait_procs(left, timeout=grace_s)
        for p in stubborn:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(stubborn, timeout=grace_s)
        self.removed_segments += remove_leaked_segments(self.segments_before)
        return [p.pid for p in left]


def segments(directory: Path = SHM) -> set[str]:
    """The shared-memory segments there now (Python's, `psm_*`)."""
    return {p.name for p in directory.glob(f"{SEGMENT_PREFIX}*")} if directory.is_dir() else set()


def held_segments(directory: Path = SHM) -> set[str]:
    """Names of the files under `directory` that a live process maps or holds open (of
    the processes this user may read)."""
    held, prefix = set(), f"{directory}/"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    path = line.rstrip("\n").split(maxsplit=5)[-1]
                    if path.startswith(prefix):
                        held.add(path[len(prefix) :].removesuffix(" (deleted)"))
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(prefix):
                    held.add(target[len(prefix) :])
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return held


def remove_leaked_segments(before: set[str], directory: Path = SHM) -> list[str]:
    """Remove the shared-memory segments made since `before` that no live process holds:
    those a process killed before it could unlink them left behind (a SIGKILLed vLLM
    engine core leaves its message queues, each up to 250 MB of /dev/shm, i.e. of RAM,
    for good). Returns their names."""
    leaked = sorted(segments(directory) - before - held_segments(directory))
    removed = []
    for name in leaked:
        try:
            (directory / name).unlink()
            removed.append(name)
        except OSError:  # gone meanwhile, or another user's
            pass
    return removed


def local_ray_lost(names: list[str], ended: list[int]) -> None:
    """The local Ray lost its raylet or GCS (a SIGTERM to the process group, say): what it
    left is ended, and so is this process (Ray would end it a minute later, unable to
    finish anything; the last complete checkpoint is what a resume starts from)."""
    print(
        f"selfplay: the local Ray's {' and '.join(names)} died; ended {len(ended)} processes it left",
        file=sys.stderr,
        flush=True,
    )
    os._exit(1)
