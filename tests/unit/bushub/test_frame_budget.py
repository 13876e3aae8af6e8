"""Frames that are not messages (pings, pongs, fragments) and frames dropped over the
rate or the size limit take from a socket's budget of extra frames, four per message
of its rate: a burst within it is taken as before, and past it the socket's reading
is held until the budget allows a frame again. Before, such frames were parsed and
answered or dropped as fast as they came: one socket's flood took a core, and every
other socket on the node waited 50-200 times longer (an independent probe)."""

import asyncio
import contextlib

import pytest

from bushub.limits import EXTRA_FRAMES_PER_MESSAGE
from bushub.settings import Settings
from bushub.wsprotocol import FEED_SLICE, HELD_HANG_UP_AFTER
from tests.support.messages import task_request
from tests.unit.bushub.conftest import RunningHub, small_settings
from tests.unit.bushub.helpers import (
    BINARY,
    CONTINUATION,
    PING,
    PONG,
    TIMEOUT,
    as_json,
    client_frame,
    raw_socket,
    recv_non_registry,
    server_frame,
)

RATE = 250  # messages a second, and a burst of as many
EXTRA = RATE * EXTRA_FRAMES_PER_MESSAGE  # extra frames a second, and a burst of as many
MAX_BYTES = 8 << 10
BYTE_RATE = 32 << 10


@pytest.fixture
def hub_settings() -> Settings:
    return small_settings(rate_messages=RATE, rate_bytes=BYTE_RATE, max_message_bytes=MAX_BYTES)


async def pongs(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """The payloads of the next ``count`` pongs (the node's announcements skipped)."""
    payloads = []
    while len(payloads) < count:
        opcode, payload = await server_frame(reader)
        if opcode == PONG:
            payloads.append(payload)
    return payloads


async def pinger(node: RunningHub) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await raw_socket(node.host, node.port, "/ws/pinger?peer=listener")
    await node.wait_holder("pinger")
    return reader, writer


async def test_a_flood_of_pings_is_held_to_the_budget(node: RunningHub) -> None:
    pings = 3 * EXTRA
    async with node.connect("listener", peer="pinger") as listener:
        reader, writer = await pinger(node)
        after = as_json(task_request("pinger", "listener", 1))
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(client_frame(PING, b"") * pings + client_frame(BINARY, after))
        await writer.drain()
        # The message after them waits until the budget has paid for the pings past
        # its burst, and is then relayed, not dropped as over the rate.
        assert await recv_non_registry(listener, timeout=TIMEOUT + pings / EXTRA) == after
        assert loop.time() - started >= (pings - EXTRA) / EXTRA * 0.9
        assert node.metric("bushub_frames_throttled_total", kind="control") > 0
        assert node.metric("bushub_messages_dropped_total", reason="rate_limited") == 0
        # Every ping was answered.
        assert await pongs(reader, pings) == [b""] * pings
        writer.close()


async def test_a_client_that_pings_now_and_then_is_never_held(node: RunningHub) -> None:
    async with node.connect("listener", peer="pinger") as listener:
        reader, writer = await pinger(node)
        for seq in range(5):
            message = as_json(task_request("pinger", "listener", seq))
            writer.write(client_frame(PING, b"k") + client_frame(BINARY, message))
            await writer.drain()
            assert await recv_non_registry(listener) == message
            assert await pongs(reader, 1) == [b"k"]
        assert node.metric_sum("bushub_frames_throttled_total") == 0
        writer.close()


async def test_a_message_in_a_flood_of_fragments_is_held_to_the_budget(node: RunningHub) -> None:
    fragments = 3 * EXTRA
    async with node.connect("listener", peer="pinger") as listener:
        _, writer = await pinger(node)
        message = as_json(task_request("pinger", "listener", 1))
        flood = client_frame(BINARY, message[:1], fin=False)
        flood += client_frame(CONTINUATION, b"", fin=False) * (fragments - 1)
        flood += client_frame(CONTINUATION, message[1:])
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(flood)
        await writer.drain()
        assert await recv_non_registry(listener, timeout=TIMEOUT + fragments / EXTRA) == message
        assert loop.time() - started >= (fragments - EXTRA) / EXTRA * 0.9
        assert node.metric("bushub_frames_throttled_total", kind="fragment") > 0
        writer.close()


async def wait_received(node: RunningHub, count: int, timeout: float) -> float:
    """The seconds until the node has received ``count`` frames in all."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while node.metric_sum("bushub_messages_received_total") < count:
        assert loop.time() - started < timeout, "the frames were not all read"
        await asyncio.sleep(0.01)
    return loop.time() - started


async def test_a_flood_past_the_rate_is_dropped_and_held_to_the_budget(node: RunningHub) -> None:
    # Within the rate and the budget, as before: the first second's messages relayed,
    # the burst's excess dropped. Past both, reading waits for the budget.
    frames = 3 * (RATE + EXTRA)
    async with node.connect("listener", peer="pinger") as listener:
        _, writer = await pinger(node)
        before = node.metric_sum("bushub_messages_received_total")
        message = as_json(task_request("pinger", "listener", 0))
        writer.write(client_frame(BINARY, message) * frames)
        await writer.drain()
        taken = await wait_received(node, before + frames, TIMEOUT + frames / EXTRA)
        # What is read in that time: the two bursts, and the two rates since.
        assert taken >= (frames - RATE - EXTRA) / (RATE + EXTRA) * 0.9
        dropped = node.metric("bushub_messages_dropped_total", reason="rate_limited")
        assert EXTRA <= dropped < frames - RATE
        assert node.metric("bushub_frames_throttled_total", kind="refused") > 0
        await asyncio.sleep(1.0)  # the rate refills: a message goes through again
        after = as_json(task_request("pinger", "listener", 1))
        writer.write(client_frame(BINARY, after))
        while (got := await recv_non_registry(listener)) != after:
            assert got == message  # one of the flood's, relayed
        writer.close()


async def test_a_flood_of_oversize_frames_is_held_to_the_byte_rate(node: RunningHub) -> None:
    # Before, a frame over --max-message-bytes was dropped before it cost the socket
    # any bytes: a probe's socket sent 767 MiB/s of them past a rate of 8 MiB/s.
    frames = 10
    async with node.connect("listener", peer="pinger"):
        _, writer = await pinger(node)
        before = node.metric_sum("bushub_messages_received_total")
        writer.write(client_frame(BINARY, b"x" * (MAX_BYTES + 1)) * frames)
        await writer.drain()
        taken = await wait_received(node, before + frames, TIMEOUT + frames * MAX_BYTES / BYTE_RATE)
        # Each costs the bytes of the largest message; one second's bytes in a burst.
        assert taken >= ((frames - 1) * MAX_BYTES - BYTE_RATE) / BYTE_RATE * 0.9
        assert node.metric("bushub_messages_dropped_total", reason="oversize") == frames
        assert node.metric("bushub_frames_throttled_total", kind="refused") > 0
        writer.close()


async def test_what_was_read_before_a_close_is_relayed_though_reading_was_held(
    node: RunningHub,
) -> None:
    # Messages read behind a flood, then the client's close: the socket ended while
    # its reading was held, and what it held went with it, counted nowhere.
    async with node.connect("listener", peer="pinger") as listener:
        _, writer = await pinger(node)
        messages = [as_json(task_request("pinger", "listener", seq)) for seq in range(3)]
        close = client_frame(0x8, (1000).to_bytes(2, "big"))
        flood = client_frame(PING, b"") * (3 * EXTRA)
        writer.write(flood + b"".join(client_frame(BINARY, m) for m in messages) + close)
        await writer.drain()
        wait = TIMEOUT + 3 * EXTRA / EXTRA
        assert [await recv_non_registry(listener, timeout=wait) for _ in messages] == messages
        writer.close()


async def test_a_client_gone_while_a_long_debt_holds_its_reading_is_let_go(
    node: RunningHub,
) -> None:
    # Thirty seconds of pings past the budget, then the client resets: the hold was
    # one long sleep, and the socket (its name, its presence) stayed for all of it.
    async with node.connect("listener", peer="pinger"):
        _, writer = await pinger(node)
        await node.wait_metric("bushub_connections", 2)
        writer.write(client_frame(PING, b"") * (30 * EXTRA))
        await writer.drain()
        await asyncio.sleep(0.5)  # the first slice read, its debt held
        writer.transport.abort()
        await node.wait_metric("bushub_connections", 1, timeout=HELD_HANG_UP_AFTER + 4)


async def test_the_rest_of_a_read_waits_while_the_budget_holds_reading(node: RunningHub) -> None:
    # A read is parsed a slice per loop turn; the slices went on while reading was
    # held, so a read's thousands of pings were answered at once, whatever the budget.
    pings = 12 * EXTRA
    async with node.connect("listener", peer="pinger"):
        reader, writer = await pinger(node)
        writer.write(client_frame(PING, b"") * pings)
        await writer.drain()
        answered = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                while True:
                    opcode, _ = await server_frame(reader)
                    answered += opcode == PONG
        # The burst and one slice (2,730 empty pings), not the whole read.
        assert 0 < answered <= EXTRA + FEED_SLICE // 6 + 100, answered
        writer.transport.abort()
