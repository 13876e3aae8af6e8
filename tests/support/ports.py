"""Ports for the servers tests start, safe when several test processes run at once.

A port is chosen before the server that binds it starts, so two choosers could pick
the same free port in between. The kernel's own choice (``bind(("", 0))``) comes from
the ephemeral range that every outgoing connection on the machine draws from too. So
ports here are drawn from below that range (Linux's default, 32768 up), from a band of
their own per test process
(``pytest -n``: ``PYTEST_XDIST_WORKER`` is ``gw<i>`` of ``PYTEST_XDIST_WORKER_COUNT``),
checked free, and not handed out twice by one process while its server may not have
bound yet.

Two kinds: a plain port (``free_port``), and a Redis Cluster node's port whose
cluster-bus port (+10000) must be free too (``cluster_port``).
"""

import os
import random
import socket
from collections import deque

CLUSTER_BUS_OFFSET = 10_000
# Below Linux's default ephemeral range (32768-60999): cluster nodes' ports and, 10000
# up, their bus ports; plain ports in between.
_CLUSTER_PORTS = (20_000, 22_699)
_PLAIN_PORTS = (22_700, 29_999)
# A port stays out of the draw this many hand-outs later: long enough for its server
# to have bound it (or to have failed and been started on another).
_recent: deque[int] = deque(maxlen=256)


def _worker() -> tuple[int, int]:
    """This process's index and the number of test processes."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    try:
        index = int(name.removeprefix("gw"))
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    except ValueError:
        return 0, 1
    return (index, count) if 0 <= index < count else (0, 1)


def _band(low: int, high: int) -> tuple[int, int]:
    """This process's share of ``[low, high]``."""
    index, count = _worker()
    size = (high - low + 1) // count
    return low + index * size, low + (index + 1) * size - 1


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _draw(low: int, high: int, offsets: tuple[int, ...]) -> int:
    while True:
        port = random.randint(low, high)
        if port in _recent or port == 6379:
            continue
        if all(_is_free(port + offset) for offset in offsets):
            _recent.append(port)
            return port


def free_port() -> int:
    """A free loopback port of this test process's band."""
    return _draw(*_band(*_PLAIN_PORTS), (0,))


def cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too, of this process's band."""
    return _draw(*_band(*_CLUSTER_PORTS), (0, CLUSTER_BUS_OFFSET))
