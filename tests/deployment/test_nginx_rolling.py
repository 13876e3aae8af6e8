"""The shipped nginx config through a rolling restart of two nodes.

A node that refused a connect while it restarted must take sockets as soon as it is
ready again. nginx's passive health check (``max_fails``) took such a node back only
once a request sent to it after ``fail_timeout`` had ended, and a WebSocket does not
end: with the earlier default (``max_fails=1 fail_timeout=10s``) the restarted node
took one socket per 10 s, and once the other node drained every other reconnect got
502. The defaults of ``render.sh`` are what is tested here (no ``--fail-timeout``).
"""

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.deployment.test_load_balancer import Deployment
from tests.integration.procs import TIMEOUT
from tests.support.waiting import wait_until

# Bounds time under faults: run alone (see the Makefile).
pytestmark = [pytest.mark.integration, pytest.mark.serial]

SOCKETS = 10
# Every socket must be back within this of the drain's start (a handshake takes
# milliseconds; the old default let one through per 10 s).
BACK_WITHIN = 5.0


@pytest.fixture
def two_nodes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    d = Deployment(tmp_path, request, nodes=2, fail_timeout=None)
    try:
        d.start()
        yield d
    finally:
        d.stop()


async def dial(url: str, deadline: float) -> ClientConnection:
    """Connect, again and again while nginx answers 502/503, until ``deadline``."""
    while True:
        try:
            return await connect(url, open_timeout=TIMEOUT)
        except (InvalidStatus, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def closed(ws: ClientConnection) -> None:
    try:
        while True:
            await ws.recv()
    except ConnectionClosed:
        return


async def test_a_node_back_from_a_restart_takes_the_next_nodes_sockets_at_once(
    two_nodes: Deployment,
) -> None:
    n1, n2 = two_nodes.nodes
    base = f"{two_nodes.nginx.url}/ws"
    # Roll n1: drained, and a handshake tried on it while it is down (nginx's
    # least_conn picks the node with fewer sockets: n1, with none).
    n1.signal(signal.SIGTERM)
    assert n1.wait() == 0
    refused = "connect() failed (111: Connection refused) while connecting to upstream"
    for _ in range(20):
        probe = await dial(f"{base}/probe", time.monotonic() + TIMEOUT)
        await probe.close()
        log = two_nodes.nginx.error_log.read_text(errors="replace")
        if refused in log and f"127.0.0.1:{n1.port}" in log:
            break
    else:
        raise AssertionError("nginx never tried n1 while it was down")
    n1.spawn()
    await asyncio.to_thread(n1.wait_ready)

    # Sockets held open (least_conn puts them on both nodes); then n2 is rolled.
    sockets = [await dial(f"{base}/s{i}", time.monotonic() + TIMEOUT) for i in range(SOCKETS)]
    started = time.monotonic()
    n2.signal(signal.SIGTERM)
    on_n2 = [ws for ws, done in zip(sockets, await _ended(sockets), strict=True) if done]
    assert on_n2, "n2 held none of the sockets"
    back = [await dial(f"{base}/s{sockets.index(ws)}", started + BACK_WITHIN) for ws in on_n2]
    assert time.monotonic() - started < BACK_WITHIN
    everyone_on_n1 = {f"s{i}": "n1" for i in range(SOCKETS)}
    assert await asyncio.to_thread(
        wait_until, lambda: {a: n for a, n in n1.agents().items() if a != "probe"} == everyone_on_n1
    )
    for ws in back + sockets:
        await ws.close()


async def _ended(sockets: list[ClientConnection]) -> list[bool]:
    """Which sockets n2's drain closed (1012), after it has had time to close them."""
    waits = [asyncio.ensure_future(closed(ws)) for ws in sockets]
    await asyncio.wait(waits, timeout=2.0)
    for wait in waits:
        wait.cancel()
    return [ws.close_code == 1012 for ws in sockets]
