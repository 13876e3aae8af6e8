"""Thousands of connections come and go; nothing of them stays behind.

1,000 pairs (2,100 sockets with the reconnects) live and die in batches of 100 pairs on
two nodes, one end of each pair on each node. Every pair exchanges numbered messages,
then ends one of five ways: a clean close after everything arrived; a close with
messages still in flight; a TCP reset with no close frame (the process vanished); a TCP
FIN with no close frame; or a reconnect of one end mid-stream (its newer socket takes
the name over) before both close.

Afterwards both nodes report no connections and no agents, Redis holds no presence
records and no channel of any closed agent has a subscriber, and each node's RSS and
file descriptors are back near what they were after a warm-up batch.
"""

import asyncio
import time
from typing import Any

import pytest

from buswire.channels import ops_channel
from tests.reliability.conftest import Faults
from tests.reliability.harness import FaultNode, Inbox, fd_breakdown, in_thread, open_ws
from tests.support.messages import encode, task_request
from tests.support.waiting import until

pytestmark = pytest.mark.integration

PAIRS = 1000
BATCH = 100
MESSAGES = 10
# Allocator high-water marks, the Redis pool's buffers; see RELIABILITY.md.
RSS_TOLERANCE_KB = 30_000
RSS_SECOND_HALF_KB = 8_000
# The command pool keeps every connection it opened at peak concurrency (it has no
# max_connections): bounded by concurrent handshakes, not by how many came and went.
REDIS_POOL_BOUND = 2 * BATCH


async def _pair_life(n1: FaultNode, n2: FaultNode, batch: int, i: int, opened: list[int]) -> str:
    a_name, b_name = f"ch{batch}-{i}-a", f"ch{batch}-{i}-b"
    node_a, node_b = (n1, n2) if i % 2 else (n2, n1)
    b = await Inbox.open(node_b, b_name, a_name, on_peer_lost="keep")
    a = await open_ws(node_a, a_name, b_name, on_peer_lost="keep")
    opened[0] += 2
    await b.announced_peer(a_name)
    mode = i % 10
    count = MESSAGES if mode < 4 else 2 * MESSAGES
    for seq in range(count):
        await a.send(encode(task_request(a_name, b_name, seq)))
        if mode == 9 and seq == MESSAGES:
            # A reconnect mid-stream: the newer socket takes the name over.
            a_old, a = a, await open_ws(node_a, a_name, b_name, on_peer_lost="keep")
            opened[0] += 1
            await a_old.wait_closed()
            assert a_old.close_code == 4001, a_old.close_code
    if mode < 4:
        assert await b.count(count), f"{b_name} got {len(b.seqs)} of {count}"
        await a.close()
        await b.close()
        return "clean"
    if mode < 6:
        await a.close()  # messages still in flight
        await b.close()
        return "in_flight"
    if mode < 8:
        a.transport.abort()  # RST, no close frame
        b.ws.transport.abort()
        await b.close()
        return "reset"
    if mode == 8:
        a.transport.close()  # FIN, no close frame
        await b.close()
        return "fin"
    await a.close()
    await b.close()
    return "reconnect"


async def _batch(n1: FaultNode, n2: FaultNode, batch: int, opened: list[int]) -> list[str]:
    return list(await asyncio.gather(*(_pair_life(n1, n2, batch, i, opened) for i in range(BATCH))))


def _quiet(node: FaultNode) -> bool:
    samples = node.metrics()
    return samples.value("bushub_connections") == 0 and samples.value("bushub_agents") == 0


async def test_churn_leaves_nothing_behind(faults: Faults, figures: Any) -> None:
    n1, n2 = faults.ready("n1", "n2", presence_ttl=2.0, peer_grace=1.0)
    redis = faults.redis
    assert redis is not None
    nodes = (n1, n2)

    warm: list[int] = [0]
    await _batch(n1, n2, -1, warm)  # the same concurrency once, so pools and caches exist
    for node in nodes:
        assert await until(lambda node=node: in_thread(_quiet, node), timeout=10)
    await asyncio.sleep(0.5)
    base = {
        n.node_id: (n.rss_kb(), fd_breakdown(n, redis.port), await in_thread(n.metrics))
        for n in nodes
    }

    opened: list[int] = [0]
    modes: dict[str, int] = {}
    halfway: dict[str, int] = {}
    started = time.monotonic()
    for batch in range(PAIRS // BATCH):
        for mode in await _batch(n1, n2, batch, opened):
            modes[mode] = modes.get(mode, 0) + 1
        if batch == PAIRS // BATCH // 2 - 1:
            halfway = {n.node_id: n.rss_kb() for n in nodes}
    churn_s = time.monotonic() - started

    quiet_at = time.monotonic()
    for node in nodes:
        assert await until(lambda node=node: in_thread(_quiet, node), timeout=10), (
            node.metrics().value("bushub_connections"),
            node.metrics().value("bushub_agents"),
        )
    quiet_s = time.monotonic() - quiet_at
    assert await until(lambda: in_thread(lambda: redis.keys("bushub:agent:*") == []), timeout=3)
    assert await until(lambda: in_thread(lambda: redis.keys("bushub:claim:*") == []), timeout=3)
    channels = redis.channels("bushub:*")
    # Each node's own channel and the operators' notices stay subscribed while it runs.
    leftover = [c for c in channels if not c.startswith("bushub:node:") and c != ops_channel()]
    sample = [f"bushub:msg:{{ch{b}-{i}-a}}" for b in (0, 9) for i in (0, 6, 9)]
    numsub = redis.numsub(*sample)
    await asyncio.sleep(0.5)

    figures("connections opened (pairs x 2 + reconnects)", opened[0])
    figures("endings", modes)
    figures("s of churn", churn_s)
    figures("s until both nodes report 0 connections and 0 agents", quiet_s)
    figures("PUBSUB CHANNELS bushub:* after", channels)
    kinds = ("clients", "other", "tcp_other", "unmatched_sockets")
    for node in nodes:
        rss0, fds0, m0 = base[node.node_id]
        m1 = await in_thread(node.metrics)
        opened_delta = m1.value("bushub_connections_opened_total") - m0.value(
            "bushub_connections_opened_total"
        )
        closed = {
            k: v - m0.by_label("bushub_connections_closed_total", "reason").get(k, 0)
            for k, v in m1.by_label("bushub_connections_closed_total", "reason").items()
        }

        def settled(node: FaultNode = node, fds0: dict[str, Any] = fds0) -> bool:
            now = fd_breakdown(node, redis.port)
            return all(now[k] == (0 if k == "clients" else fds0[k]) for k in kinds)

        await until(lambda: in_thread(settled), timeout=5)  # sockets closing right now
        fds = fd_breakdown(node, redis.port)
        figures(
            f"{node.node_id} opened / closed by reason",
            (opened_delta, {k: v for k, v in closed.items() if v}),
        )
        rss_half, rss_end = halfway[node.node_id], node.rss_kb()
        figures(
            f"{node.node_id} VmRSS kB baseline / halfway / after",
            f"{rss0} / {rss_half} / {rss_end}",
        )
        figures(f"{node.node_id} fds baseline / after", f"{fds0} / {fds}")
        assert opened_delta == sum(closed.values())
        assert fds["clients"] == 0, fds
        for kind in kinds[1:]:
            assert fds[kind] == fds0[kind], (kind, fds0, fds)
        assert fds["redis"] <= REDIS_POOL_BOUND, (fds0, fds)
        # Memory settles at a high-water mark: the second half of the churn adds little.
        assert rss_end - rss0 < RSS_TOLERANCE_KB, (rss0, rss_half, rss_end)
        assert rss_end - rss_half < RSS_SECOND_HALF_KB, (rss0, rss_half, rss_end)
    total_opened = 0.0
    for n in nodes:
        m = await in_thread(n.metrics)
        total_opened += m.value("bushub_connections_opened_total") - base[n.node_id][2].value(
            "bushub_connections_opened_total"
        )
    assert total_opened == opened[0]
    assert leftover == [], leftover
    assert set(numsub.values()) == {0}, numsub
