"""How the plain protocol classes talk to other parts: call a method of a peer, wait for
calls, read results, share a large value. `RayTransport` carries them between Ray actors
(the actors' only job); `LocalTransport` runs the same protocols in one process on
threads, which is how their tests run without Ray.

A peer is whatever the transport can call: a Ray actor handle, or a plain object. A call
returns a future; `get` reads one (or a list) and raises what the call raised."""

from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Any


class PeerDied(RuntimeError):
    """Raised by a plain peer that is gone: over LocalTransport, what a killed actor's calls
    raise over Ray (RayActorError)."""


class LocalTransport:
    """Calls run on a thread pool; `put` shares by reference (one process, no copy)."""

    dead: tuple[type[BaseException], ...] = (PeerDied,)

    def __init__(self, workers: int = 16):
        self.pool = cf.ThreadPoolExecutor(max_workers=workers)

    def call(self, peer, method: str, *args) -> cf.Future:
        return self.pool.submit(getattr(peer, method), *args)

    def get(self, future, timeout: float | None = None):
        try:
            if isinstance(future, list):
                return [f.result(timeout) for f in future]
            return future.result(timeout)
        except cf.TimeoutError as err:  # the builtin TimeoutError, as Ray's, from Python 3.11 only
            raise TimeoutError(f"no answer within {timeout} s") from err

    def wait(self, futures: list, num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
        """(done, pending) as ray.wait: at most num_returns done, in the order given."""
        want = min(num_returns, len(futures))
        deadline = None if timeout is None else time.monotonic() + timeout
        while sum(f.done() for f in futures) < want:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            cf.wait([f for f in futures if not f.done()], timeout=left, return_when=cf.FIRST_COMPLETED)
        done = [f for f in futures if f.done()][:num_returns]
        return done, [f for f in futures if all(f is not d for d in done)]

    def put(self, value: Any) -> Any:
        return value

    def available(self) -> dict:
        return {}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class RayTransport:
    """Calls are actor method calls (`handle.method.remote(*args)`); `put` stores a value in
    the object store once, and a reference passed as a call argument arrives resolved."""

    def __init__(self):
        import ray

        self.ray = ray
        self.dead = (ray.exceptions.RayActorError,)

    def call(self, peer, method: str, *args):
        return getattr(peer, method).remote(*args)

    def get(self, ref, timeout: float | None = None):
        return self.ray.get(ref, timeout=timeout)

    def wait(self, refs: list, num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
        return self.ray.wait(refs, num_returns=num_returns, timeout=timeout)

    def put(self, value: Any):
        return self.ray.put(value)

    def available(self) -> dict:
        return self.ray.available_resources()

    def close(self) -> None:
        pass
