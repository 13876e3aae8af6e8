"""Takeover on one node (docs/protocol.md, Presence): a second connection claiming an agent name
closes the older socket with 4001 before its own handshake completes, and from then
on messages go to the newest socket only."""

import asyncio
import time

from tests.support.messages import task_request
from tests.unit.bushub.conftest import RunningHub
from tests.unit.bushub.helpers import BRIEF, as_json, assert_silent, drain_until_closed, recv_bytes

TAKEN_OVER = 4001


async def test_older_socket_is_closed_before_the_newer_handshake_completes(
    node: RunningHub,
) -> None:
    async with node.connect("a") as old:
        first_holder = await node.wait_holder("a")
        old_frames = asyncio.create_task(drain_until_closed(old))
        new = await node.connect("a")
        connected_at = time.monotonic()
        try:
            assert old.close_frame_at is not None, "older socket not closed at handshake"
            assert old.close_frame_at <= connected_at
            assert await old_frames == []
            assert old.protocol.close_rcvd is not None
            assert old.protocol.close_rcvd.code == TAKEN_OVER
            assert await node.wait_holder("a") != first_holder
            await node.wait_metric("bushub_connections_closed_total", 1, reason="taken_over")
            await node.wait_metric("bushub_connections", 1)
            assert node.metric("bushub_agents") == 1
        finally:
            await new.close()


async def test_messages_go_to_the_newest_socket_only(node: RunningHub) -> None:
    count = 20
    frames = [as_json(task_request("s", "a", seq=i)) for i in range(count)]
    async with node.connect("s") as sender, node.connect("a") as old:
        old_frames = asyncio.create_task(drain_until_closed(old))
        async with node.connect("a") as new:
            for frame in frames:
                await sender.send(frame)
            assert [await recv_bytes(new) for _ in frames] == frames
            await assert_silent(new, BRIEF)
            assert await old_frames == []
    assert node.metric("bushub_messages_delivered_total", format="json") == count
    assert node.metric("bushub_messages_dropped_total", reason="undeliverable") == 0


async def test_third_claim_takes_over_from_the_second(node: RunningHub) -> None:
    async with node.connect("s") as sender, node.connect("a") as first:
        first_closed = asyncio.create_task(drain_until_closed(first))
        async with node.connect("a") as second:
            second_closed = asyncio.create_task(drain_until_closed(second))
            async with node.connect("a") as third:
                await first_closed
                await second_closed
                assert first.protocol.close_rcvd is not None
                assert second.protocol.close_rcvd is not None
                assert first.protocol.close_rcvd.code == TAKEN_OVER
                assert second.protocol.close_rcvd.code == TAKEN_OVER
                frame = as_json(task_request("s", "a"))
                await sender.send(frame)
                assert await recv_bytes(third) == frame
    await node.wait_metric("bushub_connections_closed_total", 2, reason="taken_over")
