"""LocalTransport keeps ray.wait's contract, so protocols behave the same under both."""

from __future__ import annotations

import threading

import pytest

from selfplay.transport import LocalTransport


class Peer:
    def __init__(self):
        self.gate = threading.Event()

    def now(self, x):
        return x

    def later(self, x):
        self.gate.wait()
        return x


def test_wait_returns_at_most_num_returns_done_in_the_given_order():
    t, p = LocalTransport(), Peer()
    futures = [t.call(p, "later", 0), t.call(p, "now", 1), t.call(p, "now", 2)]
    done, pending = t.wait(futures, num_returns=1, timeout=5)
    assert t.get(done) in ([1], [2]) and len(pending) == 2
    done, pending = t.wait(futures, num_returns=3, timeout=0.05)  # one still blocked: times out
    assert t.get(done) == [1, 2] and pending == [futures[0]]
    p.gate.set()
    done, pending = t.wait(futures, num_returns=3)
    assert t.get(done) == [0, 1, 2] and pending == []
    t.close()


def test_get_raises_what_the_call_raised():
    t = LocalTransport()
    with pytest.raises(KeyError, match="missing"):
        t.get(t.call({}, "pop", "missing"))
    t.close()
