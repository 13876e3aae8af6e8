"""Backpressure (docs/protocol.md, Routing): each connection has one bounded outbound queue; a
consumer that falls behind its bound is closed with 4008 and counted, and a slow
connection never delays the others on the node."""

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.client import ClientConnection

from bushub.settings import Settings
from tests.support.messages import task_request
from tests.unit.bushub.conftest import RunningHub, small_settings
from tests.unit.bushub.helpers import (
    BRIEF,
    TIMEOUT,
    as_json,
    close_code,
    drain_until_closed,
    wait_until,
)

SLOW_CONSUMER = 4008
PAD = 16 << 10
# Incompressible, so per-message deflate cannot shrink the backlog away.
_PAD_TEXT = base64.b64encode(os.urandom(PAD * 3 // 4)).decode()
# The flood gives up here: far past every buffer between the hub and the client.
FLOOD_CAP = 64 << 20


@pytest.fixture
def hub_settings() -> Settings:
    # Rate limits off: the flood must reach the slow consumer's queue.
    return small_settings(queue_bytes=256 << 10, rate_messages=0, rate_bytes=0)


@pytest.fixture
async def slow(node: RunningHub) -> AsyncIterator[ClientConnection]:
    """A client of agent ``slow`` that never reads unless the test does.

    Its kernel receive buffer is small, compression is off and ``max_queue=1`` stops
    the client library reading after one message, so the hub's writes back up quickly.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (node.host, node.port))
    ws: ClientConnection = await node.connect_with(
        {"sock": sock, "max_queue": 1, "compression": None}, "slow"
    )
    try:
        yield ws
    finally:
        ws.transport.abort()
        await ws.wait_closed()


async def flood_until_detected(
    node: RunningHub,
    flooder: ClientConnection,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Send to ``slow`` until the hub counts it as a slow consumer; how many were sent.

    Args:
        meanwhile: Awaited after every fourth flood message (other traffic).
    """
    sent = 0
    while node.metric("bushub_messages_dropped_total", reason="slow_consumer") == 0:
        assert sent * PAD < FLOOD_CAP, "the hub never noticed the consumer falling behind"
        await flooder.send(as_json(task_request("flood", "slow", seq=sent, pad=_PAD_TEXT)))
        sent += 1
        if meanwhile is not None and sent % 4 == 0:
            await meanwhile()
        await asyncio.sleep(0)
    return sent


async def test_slow_consumer_closed_4008_while_healthy_pair_keeps_receiving(
    node: RunningHub, slow: ClientConnection
) -> None:
    async with (
        node.connect("flood") as flooder,
        node.connect("ha") as ha,
        node.connect("hb") as hb,
    ):
        expected: list[bytes] = []
        received: list[bytes] = []

        async def read_healthy() -> None:
            while True:
                data = await hb.recv()
                assert isinstance(data, bytes)
                received.append(data)

        async def send_healthy() -> None:
            frame = as_json(task_request("ha", "hb", seq=len(expected)))
            expected.append(frame)
            await ha.send(frame)

        reader = asyncio.create_task(read_healthy())
        try:
            await flood_until_detected(node, flooder, meanwhile=send_healthy)
            for _ in range(20):
                await send_healthy()
            # The healthy pair gets everything, in order, while the slow one still
            # has not read a thing.
            await wait_until(lambda: len(received) >= len(expected), "the healthy pair")
            assert received == expected
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        # Once the slow client reads its backlog it finds the hub's close.
        assert await close_code(slow, 2 * TIMEOUT) == SLOW_CONSUMER
        await node.wait_metric("bushub_connections_closed_total", 1, reason="slow_consumer")


async def test_every_message_to_a_slow_consumer_is_delivered_or_counted(
    node: RunningHub, slow: ClientConnection
) -> None:
    async with node.connect("flood") as flooder:
        sent = await flood_until_detected(node, flooder)
        # More messages for the consumer the hub has already decided to close.
        for seq in range(sent, sent + 10):
            await flooder.send(as_json(task_request("flood", "slow", seq=seq, pad=1)))
        sent += 10
        await node.wait_metric("bushub_messages_received_total", sent, format="json")
        frames = await drain_until_closed(slow, 2 * TIMEOUT)
        await node.hub.publisher.flushed()
        await asyncio.sleep(BRIEF)
    delivered = node.metric("bushub_messages_delivered_total", format="json")
    dropped = node.metric_sum("bushub_messages_dropped_total")
    reasons = node.nonzero("bushub_messages_dropped_total")
    assert delivered == len(frames)
    # Delivery is at most once, and every loss has a counter with a reason.
    assert len(frames) + dropped == sent, (
        f"sent {sent}, client received {len(frames)}, dropped {dropped:.0f} {reasons}: "
        f"{sent - len(frames) - dropped:.0f} messages lost without a count"
    )


async def test_slow_consumer_that_never_reads_is_released(
    node: RunningHub, slow: ClientConnection
) -> None:
    async with node.connect("flood") as flooder:
        await flood_until_detected(node, flooder)
        # The client still does not read. Closing it must not depend on that:
        # a stuck client would otherwise hold its name and socket forever.
        await node.wait_metric(
            "bushub_connections_closed_total", 1, timeout=2 * TIMEOUT, reason="slow_consumer"
        )
        assert await node.holder("slow") is None
        assert node.metric("bushub_connections") == 1
