"""One socket's flood against a node: a read is parsed a slice per turn of the event
loop (a read of tiny frames, tens of thousands of them, held every other socket for
its whole length: a node stalled for seconds), and pings from a client that reads
nothing go unanswered rather than pile up in the node's memory."""

import gc
from typing import Any

import pytest
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from bushub.settings import Settings
from bushub.wsprotocol import FEED_SLICE, JOIN_FRAGMENTS, HubWebSocketProtocol
from tests.support.messages import task_request
from tests.unit.bushub.conftest import RunningHub, small_settings
from tests.unit.bushub.helpers import (
    BINARY,
    CONTINUATION,
    PING,
    PONG,
    as_json,
    client_frame,
    raw_socket,
    recv_non_registry,
    server_frame,
)


@pytest.fixture
def hub_settings() -> Settings:
    # No rate: every frame of the flood is parsed and routed (the rate drops, but only
    # after the parse this is about).
    return small_settings(rate_messages=0, rate_bytes=0)


async def test_a_large_read_is_parsed_a_slice_per_loop_turn(
    node: RunningHub, monkeypatch: Any
) -> None:
    parsed: list[int] = []
    parse = WebSocketsSansIOProtocol.data_received

    def recording(self: WebSocketsSansIOProtocol, data: bytes) -> None:
        parsed.append(len(data))
        parse(self, data)

    monkeypatch.setattr(WebSocketsSansIOProtocol, "data_received", recording)
    async with node.connect("sink", peer="flood") as sink:
        _, writer = await raw_socket(node.host, node.port, "/ws/flood?peer=sink")
        await node.wait_holder("flood")
        tiny = client_frame(BINARY, b"{}") * 40_000  # 320 KB: no envelope, each dropped
        large = as_json(task_request("flood", "sink", 1, pad=40_000))
        last = as_json(task_request("flood", "sink", 2))
        parsed.clear()
        writer.write(tiny + client_frame(BINARY, large) + client_frame(BINARY, last))
        await writer.drain()
        # Everything was routed, in order, the large message whole across slices.
        assert await recv_non_registry(sink) == large
        assert await recv_non_registry(sink) == last
        assert sum(parsed) >= len(tiny) + len(large) + len(last)
        assert max(parsed) <= FEED_SLICE, sorted(parsed)[-5:]
        assert node.metric_sum("bushub_messages_dropped_total") == 40_000
        writer.close()


def server_protocol(agent: str) -> HubWebSocketProtocol:
    """The node's protocol of the socket holding ``agent``."""
    found = [
        o
        for o in gc.get_objects()
        if isinstance(o, HubWebSocketProtocol)
        and not o.disconnected
        and o.scope.get("path") == f"/ws/{agent}"
    ]
    assert len(found) == 1, found
    return found[0]


async def test_pings_from_a_client_that_reads_nothing_are_not_answered_without_bound(
    node: RunningHub,
) -> None:
    async with node.connect("listener", peer="pinger") as listener:
        _, writer = await raw_socket(node.host, node.port, "/ws/pinger?peer=listener", rcvbuf=4096)
        await node.wait_holder("pinger")
        protocol = server_protocol("pinger")
        ping = client_frame(PING, b"p" * 125)
        for _ in range(50):
            writer.write(ping * 2_000)  # 13 MB of pongs in all, none read
            await writer.drain()
        after = as_json(task_request("pinger", "listener", 1))
        writer.write(client_frame(BINARY, after))
        await writer.drain()
        assert await recv_non_registry(listener) == after  # every ping before it parsed
        # The node's buffer holds what the client would read next: no more than the
        # transport's high-water mark and one read's pongs past it.
        assert protocol.transport.get_write_buffer_size() < 1 << 20
        writer.transport.abort()


async def test_a_message_in_many_fragments_is_held_in_few_pieces(node: RunningHub) -> None:
    # uvicorn kept one object per fragment, empty ones too, which the message's size
    # bound does not see: a probe's million two-byte fragments held 57 MB a socket.
    async with node.connect("sink", peer="frag") as sink:
        reader, writer = await raw_socket(node.host, node.port, "/ws/frag?peer=sink")
        await node.wait_holder("frag")
        protocol = server_protocol("frag")
        message = as_json(task_request("frag", "sink", 1))
        writer.write(client_frame(BINARY, message[:1], fin=False))
        for n in range(1, len(message) - 1):
            writer.write(client_frame(CONTINUATION, message[n : n + 1], fin=False))
            writer.write(client_frame(CONTINUATION, b"", fin=False) * 50)
        writer.write(client_frame(PING, b"done"))  # answered once all before it is parsed
        await writer.drain()
        while await server_frame(reader) != (PONG, b"done"):
            pass
        assert len(protocol.frames) <= JOIN_FRAGMENTS
        writer.write(client_frame(CONTINUATION, message[-1:]))
        await writer.drain()
        assert await recv_non_registry(sink) == message
        writer.close()
