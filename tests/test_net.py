"""Ports named by one process and bound by another (selfplay/net.py)."""

from __future__ import annotations

import socket

from selfplay import net


def test_ports_are_drawn_free_below_the_kernels_ephemeral_range_and_never_twice():
    low, high = net.ephemeral_range()
    assert net.QUIET_FROM < low < high
    ports = [net.free_port() for _ in range(50)]
    assert len(set(ports)) == 50 and all(net.QUIET_FROM <= p < low for p in ports)
    for port in ports[:5]:  # free: a listener binds it
        with socket.create_server(("127.0.0.1", port)):
            pass


def test_a_port_in_use_is_passed_over(monkeypatch):
    real, draws = net._draw.randrange, []

    def draw(a: int, b: int) -> int:  # the port a listener holds, then the real draws
        draws.append((a, b))
        return taken if len(draws) == 1 else real(a, b)

    with socket.create_server(("127.0.0.1", 0)) as held:
        taken = held.getsockname()[1]
        monkeypatch.setattr(net._draw, "randrange", draw)
        port = net.free_port()
    assert port != taken and len(draws) >= 2


def test_where_the_quiet_range_is_empty_the_kernel_chooses(monkeypatch):
    monkeypatch.setattr(net, "ephemeral_range", lambda: (1024, 65535))
    port = net.free_port()
    with socket.create_server(("127.0.0.1", port)):
        pass


def test_a_port_given_once_is_not_given_again(monkeypatch):
    """The draw offers a port already given first (50 random draws seldom repeat one, so the
    test above seldom met the rule): it is passed over though free."""
    first, real, draws = net.free_port(), net._draw.randrange, []

    def draw(a: int, b: int) -> int:
        draws.append((a, b))
        return first if len(draws) == 1 else real(a, b)

    monkeypatch.setattr(net._draw, "randrange", draw)
    assert net.free_port() != first and len(draws) >= 2
