"""A session socket over its rate is held back, not dropped (docs/protocol.md,
Sessions): the hub acknowledges what it refuses, and the proxy forgets what the hub
acknowledges, so a message dropped for the rate would be lost for good. The hub reads
nothing more from the socket until the budget has refilled, then relays it."""

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from bushub.settings import Settings
from bushub.wsprotocol import HELD_HANG_UP_AFTER
from buswire import sessionframe
from tests.support.messages import encode, task_request
from tests.unit.bushub.conftest import RunningHub, running_hub, small_settings
from tests.unit.bushub.helpers import recv_non_registry, wait_until

RATE = 40  # messages/s, a burst of 40: the rest are held back for about 2 s
SENT = 120
SERVED = {"direct": {}, "fallback": {"ws": "websockets-sansio"}}


class Acks:
    """The newest position the hub acknowledged to a session socket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.position = 0
        self._task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: ClientConnection) -> None:
        async for data in ws:
            assert isinstance(data, bytes)
            frame = sessionframe.decode(data)
            if frame.kind is sessionframe.Kind.ACK or frame.acked:
                self.position = max(self.position, frame.acked or frame.position)


def message(position: int, seq: int, padding: str = "") -> bytes:
    tree: Any = task_request("a", "b", seq=seq)
    tree["__data__"]["payload"]["padding"] = padding
    return sessionframe.message(position, encode(tree))


async def seqs_received(b: ClientConnection, count: int) -> list[int]:
    got = [json.loads(await recv_non_registry(b, timeout=10.0)) for _ in range(count)]
    return [int(m["__data__"]["payload"]["seq"]) for m in got]


async def send_all(ws: ClientConnection, frames: list[bytes]) -> None:
    for frame in frames:
        await ws.send(frame)


async def opened(node: RunningHub) -> None:
    await node.wait_metric("bushub_connections", 2)


async def relayed_whole(path: str, settings: Settings, frames: list[bytes]) -> tuple[float, float]:
    """Session socket ``a`` sends ``frames`` (positions 1..n, payload seq = position)
    to stock socket ``b``: all arrive in order and are acknowledged. The node's
    counts of messages dropped ``rate_limited`` and held back (``throttled``)."""
    count = len(frames)
    async with (
        running_hub(settings, **SERVED[path]) as node,
        node.connect("b", peer="a") as b,
        node.connect("a", peer="b", session="S1") as a,
    ):
        await opened(node)
        acks = Acks(a)
        sending = asyncio.create_task(send_all(a, frames))
        assert await seqs_received(b, count) == list(range(1, count + 1))
        await sending
        await wait_until(lambda: acks.position == count, "every position acknowledged")
        return (
            node.metric("bushub_messages_dropped_total", reason="rate_limited"),
            node.metric("bushub_session_messages_total", event="throttled"),
        )


@pytest.mark.parametrize("path", SERVED)
async def test_a_session_over_its_message_rate_is_held_back_and_loses_nothing(path: str) -> None:
    settings = small_settings(rate_messages=RATE, rate_bytes=0)
    frames = [message(p, p) for p in range(1, SENT + 1)]
    rate_limited, throttled = await relayed_whole(path, settings, frames)
    # Three times the burst at once: held back (how often depends on how fast the
    # client wrote), and none dropped.
    assert rate_limited == 0 and throttled > 0


async def test_a_stock_socket_over_its_rate_still_drops_the_excess() -> None:
    settings = small_settings(rate_messages=RATE, rate_bytes=0)
    async with (
        running_hub(settings) as node,
        node.connect("b", peer="a"),
        node.connect("a", peer="b") as a,
    ):
        await opened(node)
        for seq in range(SENT):
            await a.send(encode(task_request("a", "b", seq=seq)))
        await wait_until(
            lambda: node.metric("bushub_messages_dropped_total", reason="rate_limited") > 0,
            "the excess dropped",
        )
        assert node.metric("bushub_session_messages_total", event="throttled") == 0


@pytest.mark.parametrize("path", SERVED)
async def test_a_session_over_its_byte_rate_is_held_back_and_loses_nothing(path: str) -> None:
    # A burst of 100 KB (one second's worth): twelve messages of 20 KB are more than
    # twice that, so some wait for the refill, and none is dropped.
    settings = small_settings(rate_messages=0, rate_bytes=100_000)
    frames = [message(p, p, padding="x" * 20_000) for p in range(1, 13)]
    rate_limited, throttled = await relayed_whole(path, settings, frames)
    assert rate_limited == 0 and throttled > 0


@pytest.mark.parametrize("path", SERVED)
async def test_a_flood_of_session_control_frames_is_held_back_too(path: str) -> None:
    # Acknowledgements and frames that are neither a message nor an acknowledgement
    # cost the node as messages do: over the rate, the socket is read no further
    # until the budget has refilled. Each is still taken (the refused ones counted),
    # and the socket's messages go on after them.
    settings = small_settings(rate_messages=RATE, rate_bytes=0)
    async with (
        running_hub(settings, **SERVED[path]) as node,
        node.connect("b", peer="a") as b,
        node.connect("a", peer="b", session="S1") as a,
    ):
        await opened(node)
        controls = [sessionframe.ack(1) if i % 2 else b"\x7fnot a frame" for i in range(SENT)]
        await send_all(a, [*controls, message(1, 1)])
        assert await seqs_received(b, 1) == [1]
        assert node.metric("bushub_messages_dropped_total", reason="malformed") == SENT // 2
        assert node.metric("bushub_session_messages_total", event="throttled") > 0


@pytest.mark.parametrize("path", SERVED)
async def test_a_session_frame_in_a_text_frame_is_refused(path: str) -> None:
    # Frames on a session socket are binary (docs/protocol.md): one sent as text was
    # read as the binary one and relayed, acknowledged, with nothing to say so.
    async with (
        running_hub(small_settings(), **SERVED[path]) as node,
        node.connect("b", peer="a") as b,
        node.connect("a", peer="b", session="S1") as a,
    ):
        await opened(node)
        acks = Acks(a)
        await a.send(message(1, 1).decode())  # ASCII bytes: the same frame, as text
        await a.send(message(1, 2))
        assert await seqs_received(b, 1) == [2]
        assert node.metric("bushub_messages_dropped_total", reason="malformed") == 1
        await wait_until(lambda: acks.position == 1, "the binary one acknowledged")


@pytest.mark.parametrize("path", SERVED)
async def test_oversize_session_frames_cost_the_byte_rate_too(path: str) -> None:
    # Each is dropped oversize, having cost the socket as much as the largest message
    # allowed (64 KiB here): at 128 KiB/s, ten of them hold reading back for about 3 s.
    # Before, they skipped the rate check and were read as fast as they came.
    settings = small_settings(rate_messages=0, rate_bytes=128 << 10)
    async with (
        running_hub(settings, **SERVED[path]) as node,
        node.connect("b", peer="a") as b,
        node.connect("a", peer="b", session="S1") as a,
    ):
        await opened(node)
        oversize = [message(i, i, padding="x" * (80 << 10)) for i in range(1, 11)]
        await send_all(a, [*oversize, message(11, 11)])
        assert await seqs_received(b, 1) == [11]
        assert node.metric("bushub_messages_dropped_total", reason="oversize") == 10
        assert node.metric("bushub_session_messages_total", event="throttled") > 0


async def test_a_client_that_hangs_up_behind_a_long_backlog_is_let_go() -> None:
    # 400 frames at 20/s are 20 s of reading held back; the client's close waits
    # behind them in the socket. Once reading has been held HELD_HANG_UP_AFTER, the
    # hub looks for the hang-up (once a second) and lets the socket go: its name is
    # free again well before the backlog would have been read.
    settings = small_settings(rate_messages=20, rate_bytes=0)
    async with running_hub(settings) as node, node.connect("a", peer="b", session="S1") as a:
        await node.wait_metric("bushub_connections", 1)
        await send_all(a, [sessionframe.ack(0) for _ in range(400)])
        a.transport.abort()
        # Let go within the wait and a few checks; the backlog would take 20 s.
        await node.wait_metric("bushub_connections", 0, timeout=HELD_HANG_UP_AFTER + 5)
