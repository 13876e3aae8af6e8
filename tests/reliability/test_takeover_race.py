"""Two clients keep taking one agent name from each other on two nodes while a third
sends to that name: no message is delivered to two sockets.

Each contender reconnects as soon as its socket ends (taken over, or refused because a
newer claim beat it), one on each node, so claims race across nodes many times a
second. The sender numbers every message; afterwards every socket's list of received
numbers is compared with every other's.
"""

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from bushub.hub import RESUBSCRIBE_SETTLE
from tests.integration.procs import TIMEOUT
from tests.integration.redis_cluster import RedisClusterServers
from tests.reliability.conftest import Faults
from tests.reliability.harness import FaultNode, Inbox, in_thread, open_ws
from tests.support.messages import encode, task_request
from tests.support.reports import register_log
from tests.support.waiting import until

pytestmark = pytest.mark.integration

AGENT = "contested"
RACE_SECONDS = 6.0
RATE = 100  # messages per second from the sender
# Sanity bounds, so that a run where nothing raced (or nothing arrived) cannot pass.
MIN_SOCKETS = 20
MIN_DELIVERED_SHARE = 0.1


@pytest.fixture(params=["redis", "redis-cluster"])
def two_nodes(
    faults: Faults, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[list[FaultNode]]:
    """Two nodes on one Redis, or on a Redis Cluster (where sharded pub/sub orders a
    name's claims and messages on the shard owning its hash slot)."""
    if request.param == "redis":
        yield faults.ready("n1", "n2")
        return
    servers = RedisClusterServers(tmp_path / "redis-cluster")
    try:
        servers.start()
        nodes = []
        for node_id in ("n1", "n2"):
            node = FaultNode(node_id, tmp_path / f"hub-{node_id}.log", servers.url)
            register_log(request, f"hub {node_id} log", node.log_path)
            faults.nodes.append(node)
            node.spawn()
            nodes.append(node)
        for node in nodes:
            node.wait_ready()
        yield nodes
    finally:
        faults.stop()  # the nodes before the cluster under them
        servers.stop()


async def _contend(node: FaultNode, deadline: float, sockets: list[Inbox]) -> int:
    """Hold AGENT on ``node``, reconnecting whenever the socket ends; returns refusals."""
    refused = 0
    while time.monotonic() < deadline:
        try:
            inbox = Inbox(await open_ws(node, AGENT), f"{AGENT}@{node.node_id}")
        except InvalidStatus:
            refused += 1  # a newer claim beat this one before its handshake completed
            continue
        sockets.append(inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(inbox.closed.wait(), max(0.0, deadline - time.monotonic()))
    return refused


async def _send(node: FaultNode, deadline: float) -> int:
    """Send numbered messages to AGENT at RATE until ``deadline``; returns how many."""
    ws = await open_ws(node, "sender")
    seq = 0
    start = time.monotonic()
    try:
        while time.monotonic() < deadline:
            await ws.send(encode(task_request("sender", AGENT, seq)))
            seq += 1
            await asyncio.sleep(max(0.0, start + seq / RATE - time.monotonic()))
    finally:
        await ws.close()
    return seq


async def test_no_message_reaches_two_sockets_while_nodes_race_for_a_name(
    two_nodes: list[FaultNode], figures: Any
) -> None:
    n1, n2 = two_nodes
    sockets: list[Inbox] = []
    deadline = time.monotonic() + RACE_SECONDS
    sent, refused_1, refused_2 = await asyncio.gather(
        _send(n1, deadline), _contend(n1, deadline, sockets), _contend(n2, deadline, sockets)
    )
    await asyncio.sleep(0.3)  # the last messages in flight
    for inbox in sockets:
        await inbox.close()

    seen_by = Counter(seq for inbox in sockets for seq in set(inbox.seqs))
    twice = sorted(seq for seq, n in seen_by.items() if n > 1)
    taken_over = sum(inbox.close_code == 4001 for inbox in sockets)
    figures("sent", sent)
    figures("sockets", len(sockets))
    figures("closed 4001", taken_over)
    figures("refused handshakes", refused_1 + refused_2)
    figures("ids delivered", len(seen_by))
    figures("ids delivered to two sockets", len(twice))
    for node in (n1, n2):
        drops = {k: v for k, v in node.metrics().dropped().items() if v}
        figures(f"drops on {node.node_id}", drops)

    assert len(sockets) >= MIN_SOCKETS, f"only {len(sockets)} sockets: the nodes did not race"
    assert taken_over >= MIN_SOCKETS // 2, f"only {taken_over} takeovers"
    assert len(seen_by) >= MIN_DELIVERED_SHARE * sent, f"{len(seen_by)} of {sent} delivered"
    for node in (n1, n2):
        got = sum(len(i.seqs) for i in sockets if i.name.endswith("@" + node.node_id))
        assert got, f"no socket on {node.node_id} received anything: the race was one-sided"
    assert twice == [], f"{len(twice)} of {sent} ids delivered to two sockets: {twice[:20]}"


async def test_a_node_that_missed_the_newer_claim_delivers_nothing_more(
    faults: Faults, figures: Any
) -> None:
    """Node 1 holds the name; its pub/sub connection is cut while it is stalled, and
    node 2 claims the name meanwhile: node 1 never receives that claim. Once running
    and subscribed again, node 1 must not deliver to its socket what node 2 delivers
    to the newer one. (A long presence TTL keeps node 1's periodic reconcile, which
    would notice the newer presence record, out of the way.)"""
    n1, n2 = faults.ready("n1", "n2", presence_ttl=9.0)
    redis = faults.redis
    assert redis is not None
    older = await Inbox.open(n1, AGENT)
    deadline = time.monotonic() + 8.0
    sender = asyncio.create_task(_send(n2, deadline))
    assert await older.count(20), f"older socket got {len(older.seqs)}"

    n1.signal(signal.SIGSTOP)
    try:
        # Both nodes' subscriber connections; node 2 comes back at once, and holds
        # its publishes for a second while nodes resubscribe: wait that out.
        redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
        assert await until(lambda: in_thread(lambda: n2.http_status("/readyz") == 200))
        await asyncio.sleep(RESUBSCRIBE_SETTLE + 0.3)
        # Node 2 publishes the claim while node 1 has no subscription; the handshake
        # waits (up to the takeover timeout) for node 1's socket to close.
        opening = asyncio.create_task(open_ws(n2, AGENT))
        await asyncio.sleep(0.3)
    finally:
        n1.signal(signal.SIGCONT)
    newer = Inbox(await opening, f"{AGENT}@n2")
    await asyncio.wait_for(older.closed.wait(), TIMEOUT)
    assert await newer.count(len(newer.seqs) + 50), f"newer socket got {len(newer.seqs)}"
    sent = await sender
    await newer.close()

    twice = sorted(set(older.seqs) & set(newer.seqs))
    figures("sent", sent)
    figures("older socket got", len(older.seqs))
    figures("newer socket got", len(newer.seqs))
    figures("ids delivered to both", len(twice))
    figures("n1 drops", {k: v for k, v in n1.metrics().dropped().items() if v})
    assert older.close_code == 4001, older.close_code
    assert twice == [], f"{len(twice)} ids delivered to both sockets: {twice[:20]}"
