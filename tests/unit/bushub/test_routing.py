"""Routing on one node (docs/protocol.md, Routing): target, else the connection's peer, in order."""

import asyncio
import json

from websockets.asyncio.client import ClientConnection

from tests.support.messages import TASK_REQUEST, task_request
from tests.unit.bushub.conftest import RunningHub
from tests.unit.bushub.helpers import (
    BRIEF,
    as_json,
    assert_silent,
    frame_message,
    recv_bytes,
    recv_non_registry,
)


async def test_targeted_frame_reaches_target_byte_identical(node: RunningHub) -> None:
    # Spacing, key order, escapes and "1.50" would all change if the hub re-encoded.
    frame = (
        b'{ "__data__" : {"target":"b",  "payload": {"x": 1.50, "s": "\\u00e9t\\u00e9"},'
        b' "source": "a"}, "__type__": "' + TASK_REQUEST.encode() + b'" }'
    )
    async with node.connect("a") as a, node.connect("b") as b:
        await a.send(frame)
        assert await recv_bytes(b) == frame


async def test_untargeted_frame_goes_to_the_connections_peer(node: RunningHub) -> None:
    frame = as_json(frame_message("a", b"\x00\x01" * 320))
    async with node.connect("b") as b, node.connect("c") as c, node.connect("a", peer="b") as a:
        await a.send(frame)
        assert await recv_bytes(b) == frame
        await assert_silent(c, BRIEF)


async def test_untargeted_without_peer_is_dropped_no_route(node: RunningHub) -> None:
    async with node.connect("a") as a, node.connect("b") as b:
        await a.send(as_json(frame_message("a", b"\x00" * 64)))
        await node.wait_metric("bushub_messages_dropped_total", 1, reason="no_route")
        await assert_silent(b, BRIEF)
        # The connection keeps routing what it can.
        targeted = as_json(task_request("a", "b"))
        await a.send(targeted)
        assert await recv_bytes(b) == targeted


async def test_per_pair_order_over_1000_messages(node: RunningHub) -> None:
    count = 1000
    async with (
        node.connect("b") as b,
        node.connect("a1") as a1,
        node.connect("a2", peer="b") as a2,
    ):
        sent = {
            "a1": [as_json(task_request("a1", "b", seq=i)) for i in range(count)],
            "a2": [as_json(frame_message("a2", i.to_bytes(4, "big"))) for i in range(count)],
        }

        async def send_all(ws: ClientConnection, frames: list[bytes]) -> None:
            for frame in frames:
                await ws.send(frame)

        await asyncio.gather(send_all(a1, sent["a1"]), send_all(a2, sent["a2"]))
        received: dict[str, list[bytes]] = {"a1": [], "a2": []}
        for _ in range(2 * count):
            data = await recv_bytes(b)
            received[json.loads(data)["__data__"]["source"]].append(data)
        assert received == sent


async def test_text_frame_with_json_is_routed_as_binary(node: RunningHub) -> None:
    text = as_json(task_request("a", "b")).decode()
    async with node.connect("a") as a, node.connect("b") as b:
        await a.send(text)
        assert await recv_bytes(b) == text.encode()


async def test_target_with_no_connection_anywhere_is_undeliverable(node: RunningHub) -> None:
    async with node.connect("a") as a:
        await a.send(as_json(task_request("a", "nobody")))
        await node.wait_metric("bushub_messages_dropped_total", 1, reason="undeliverable")
        # Only the unreachable message was counted, and the sender is still served.
        assert node.metric("bushub_messages_dropped_total", reason="no_route") == 0
        await a.send(as_json(task_request("a", "a", seq=1)))
        assert json.loads(await recv_non_registry(a))["__data__"]["task_id"] == "t1"
