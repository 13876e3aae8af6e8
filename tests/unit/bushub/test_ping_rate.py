"""Pings take from a socket's message rate: a client that pings as fast as it can and
reads every pong has its reading held once past the rate, until the rate allows a
message again. Before, every ping was parsed and answered as fast as it came (a
node's CPU spent on one socket's pongs, with no limit and no metric)."""

import asyncio

import pytest

from bushub.settings import Settings
from tests.support.messages import task_request
from tests.unit.bushub.conftest import RunningHub, small_settings
from tests.unit.bushub.helpers import (
    BINARY,
    PING,
    PONG,
    TIMEOUT,
    as_json,
    client_frame,
    raw_socket,
    recv_non_registry,
    server_frame,
)

RATE = 1000  # messages a second: a burst of as many


async def pongs(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """The payloads of the next ``count`` pongs (the node's announcements skipped)."""
    payloads = []
    while len(payloads) < count:
        opcode, payload = await server_frame(reader)
        if opcode == PONG:
            payloads.append(payload)
    return payloads


@pytest.fixture
def hub_settings() -> Settings:
    return small_settings(rate_messages=RATE, rate_bytes=0)


async def test_a_flood_of_pings_is_held_to_the_sockets_rate(node: RunningHub) -> None:
    pings = 3 * RATE
    async with node.connect("listener", peer="pinger") as listener:
        reader, writer = await raw_socket(node.host, node.port, "/ws/pinger?peer=listener")
        await node.wait_holder("pinger")
        after = as_json(task_request("pinger", "listener", 1))
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(client_frame(PING, b"") * pings + client_frame(BINARY, after))
        await writer.drain()
        # The message after them waits until the rate has paid for the pings past the
        # burst, and is then relayed, not dropped as over the rate.
        assert await recv_non_registry(listener, timeout=TIMEOUT + pings / RATE) == after
        assert loop.time() - started >= (pings - RATE) / RATE * 0.9
        assert node.metric("bushub_pings_throttled_total") > 0
        assert node.metric("bushub_messages_dropped_total", reason="rate_limited") == 0
        # Every ping was answered.
        assert await pongs(reader, pings) == [b""] * pings
        writer.close()


async def test_a_client_that_pings_now_and_then_is_never_held(node: RunningHub) -> None:
    async with node.connect("listener", peer="pinger") as listener:
        reader, writer = await raw_socket(node.host, node.port, "/ws/pinger?peer=listener")
        await node.wait_holder("pinger")
        for seq in range(5):
            message = as_json(task_request("pinger", "listener", seq))
            writer.write(client_frame(PING, b"k") + client_frame(BINARY, message))
            await writer.drain()
            assert await recv_non_registry(listener) == message
            assert await pongs(reader, 1) == [b"k"]
        assert node.metric("bushub_pings_throttled_total") == 0
        writer.close()
