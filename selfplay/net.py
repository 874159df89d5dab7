"""Ports for listeners that one process names and another binds later (a local cluster's
nodes, a learner group's store, a test's server)."""

from __future__ import annotations

import random
import socket

QUIET_FROM = 20000  # above Ray's default worker ports (10002-19999) and its client port (10001)
LINUX_EPHEMERAL = (32768, 60999)  # where /proc does not say (IANA's, elsewhere, is 49152-65535)
_draw = random.SystemRandom()  # never the seeded `random`: two processes would draw alike
_given: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for bind(0) and outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
    except (OSError, ValueError):
        return LINUX_EPHEMERAL
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now, for a listener that another process binds later. Drawn at
    random below the kernel's ephemeral range (and above Ray's default worker ports): the
    kernel hands the ephemeral ports to every bind(0) and outgoing connection on the host, so
    one it chose, once released, can be taken by anyone before the listener binds it (seen:
    a local cluster's node losing its runtime-env agent's port to a Ray starting beside it).
    Never the same port twice in one process; the kernel's choice where that range is empty."""
    low, _ = ephemeral_range()
    for _ in range(200 if low > QUIET_FROM else 0):
        port = _draw.randrange(QUIET_FROM, low)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:  # in use
                continue
        _given.add(port)
        return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
