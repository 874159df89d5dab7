"""Waiting in a test on a condition, never on a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate, timeout: float, what: str | Callable[[], str], poll: float = 1.0):
    """Call `predicate` every `poll` seconds until it returns something true, and return
    that; after `timeout` seconds, a TimeoutError naming `what` (a callable is read then,
    e.g. for the tail of a log)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what() if callable(what) else what} not seen within {timeout:.0f} s")
