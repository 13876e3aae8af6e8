"""A partition between a node and Redis: every packet dropped, no reset ever comes.

Node 1 reaches Redis through a proxy that, on cue, holds everything both ways (its
connections stay open, as TCP's do across a partition or a firewall that drops); node 2 reaches
Redis directly. A subscription connection only reads, so nothing failed on node 1: an
idle node stayed ready, `bushub_redis_up` 1, for as long as the partition lasted (a
probe: 45 s), while node 2 took its agents for gone. Now node 1 asks for a PING after
a second of silence and takes the connection for lost after 3 s more with nothing read
(bushub.broker.liveness): it says so, turns not ready, refuses handshakes, and once the
partition heals it is back, its agents with it.
"""

import asyncio
import time
from typing import Any

import pytest

from tests.reliability.conftest import Faults
from tests.reliability.harness import FaultNode, in_thread
from tests.support.sessionclient import PlainSocket
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import TIMEOUT, until

pytestmark = pytest.mark.integration

# Nothing else on node 1 notices a partition sooner than the presence TTL (the default
# 10 s), past which node 2 drops its agents; the liveness watch takes 4 s at most.
PRESENCE_TTL = 10.0


def ready(node: FaultNode) -> bool:
    return node.get("/readyz")[0] == 200


@pytest.mark.parametrize("tls", [False, True], ids=["raw", "tls"])
async def test_a_node_partitioned_from_redis_says_so_and_is_back_after(
    faults: Faults, figures: Any, tls: bool
) -> None:
    redis = faults.start_redis(tls=tls)
    proxy = TcpProxy(redis.port)
    await proxy.start()
    try:
        url = redis.url.replace(f":{redis.port}/", f":{proxy.port}/")
        n1 = faults.node("n1", redis_url=url, presence_ttl=PRESENCE_TTL)
        n2 = faults.node("n2", presence_ttl=PRESENCE_TTL)
        for node in (n1, n2):
            await in_thread(node.wait_ready)  # the proxy runs on this loop meanwhile
        a = await PlainSocket.open(n1.url, "a", "b")
        b = await PlainSocket.open(n2.url, "b", "a")
        await b.send("b", "a", 1)
        await until(lambda: a.seqs() == [1], what="a pair across the nodes")

        proxy.partition()
        started = time.monotonic()
        await until(lambda: not ready(n1), timeout=PRESENCE_TTL, what="n1 not ready")
        noticed = time.monotonic() - started
        assert "redis unreachable (TimeoutError)" in n1.log_text()
        assert n1.metrics().value("bushub_redis_up") == 0
        figures("partition noticed after (s)", noticed)

        proxy.heal()
        await until(lambda: ready(n1), timeout=TIMEOUT, what="n1 ready again")
        assert "reachable again" in n1.log_text()
        # Its agent is still there, and hears its peer. (Sent until one is heard: until
        # its node has confirmed the socket's claim again, a message for it is dropped
        # `unconfirmed`, the claim fence after any broker break.)
        seq = 1

        async def heard() -> bool:
            nonlocal seq
            seq += 1
            await b.send("b", "a", seq)
            await asyncio.sleep(0.2)
            return any(n > 1 for n in a.seqs())

        deadline = time.monotonic() + TIMEOUT
        while not await heard():
            assert time.monotonic() < deadline, "a never heard b after the partition"
        await a.close()
        await b.close()
    finally:
        await proxy.close()
