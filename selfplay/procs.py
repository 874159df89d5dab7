"""The processes a command started, so that none outlives it. A local Ray's processes
(GCS, raylet, workers) and what they start (a vLLM engine core per engine) are this
process's descendants while their parents live; a SIGTERM to the whole process group
kills some parents first, and their children (an engine core) are orphaned out of the
tree. So the tree is remembered as it is seen, and at the end whatever of it still runs
is ended."""

from __future__ import annotations

import psutil


class Descendants:
    def __init__(self) -> None:
        self.seen: dict[int, psutil.Process] = {}

    def refresh(self) -> None:
        """Remember every current descendant (a `psutil.Process` keeps its creation time,
        so a reused pid is never mistaken for it later)."""
        for p in psutil.Process().children(recursive=True):
            self.seen.setdefault(p.pid, p)

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
        return [p.pid for p in left]
