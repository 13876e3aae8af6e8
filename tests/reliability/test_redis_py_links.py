"""Nodes on ``rediss://`` and ``unix://`` URLs, which publish and subscribe through
redis-py's connections instead of the raw ones, under what the raw ones take: a
storm of handshakes at once. Real redis-server (TLS, or its unix socket) and hub
processes. (The 2 s Redis outage, the away session's replay and a refused
subscription run over these URLs too: test_redis_outage.py, test_sessions.py,
test_redis_errors.py.)
"""

import asyncio
import time

import pytest

from tests.reliability.conftest import Faults
from tests.reliability.harness import FaultNode, open_ws
from tests.support.waiting import until

pytestmark = pytest.mark.integration

STORM = 300


def redis_py_node(faults: Faults, redis_link: str) -> FaultNode:
    redis = faults.start_redis(unix_socket=redis_link == "unix", tls=redis_link == "tls")
    node = faults.node("n1", redis_url=redis.unix_url if redis_link == "unix" else redis.url)
    node.wait_ready()
    return node


@pytest.mark.parametrize("redis_link", ["tls", "unix"])
async def test_a_storm_of_handshakes_is_taken_at_once(
    faults: Faults, figures, redis_link: str
) -> None:
    """300 sockets dial one node at once: every one is taken. Each handshake
    subscribes its name's presence channel and then publishes its claim there, on
    another connection; the claim must come back through that subscription. Before,
    redis-py's pub/sub connection wrote one SUBSCRIBE per turn of its writer task,
    so past 20-30 handshakes at once the claims reached Redis before their
    subscriptions, were never heard, and the handshakes were refused 503 after the
    takeover timeout (`broker_unreachable`)."""
    node = redis_py_node(faults, redis_link)
    started = time.monotonic()
    sockets = await asyncio.gather(
        *(open_ws(node, f"st-{i}", "nobody", on_peer_lost="keep") for i in range(STORM)),
        return_exceptions=True,
    )
    taken_in = time.monotonic() - started
    refused = [s for s in sockets if isinstance(s, BaseException)]
    figures("s until all 300 were taken", taken_in)
    assert refused == [], f"{len(refused)} refused: {refused[:3]}"
    assert await until(
        lambda: node.metrics().value("bushub_connections") == STORM, what="every socket counted"
    )
    await asyncio.gather(*(s.close() for s in sockets if not isinstance(s, BaseException)))
