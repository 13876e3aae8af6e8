"""Presence and discovery on one node (docs/protocol.md, Presence): the hub announces a peer with
a registry message per dialect, under a runner named after the peer's connection,
and closes a watcher whose peer stays gone past the grace period."""

import asyncio
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from tests.unit.bushub.conftest import RunningHub
from tests.unit.bushub.helpers import (
    PIPECAT_ENTRY,
    PIPECAT_REGISTRY,
    QUIET,
    SUBAGENTS_ENTRY,
    SUBAGENTS_REGISTRY,
    TIMEOUT,
    assert_silent,
    close_code,
    recv_json,
    still_served,
)

PEER_LOST = 4002
REGISTRY_SHAPE = {
    SUBAGENTS_REGISTRY: ("agents", SUBAGENTS_ENTRY),
    PIPECAT_REGISTRY: ("workers", PIPECAT_ENTRY),
}


def announced(tree: dict[str, Any]) -> tuple[str, str, str]:
    """(registry type, runner, announced name) of a hub registry message."""
    type_name = tree["__type__"]
    field, entry_type = REGISTRY_SHAPE[type_name]
    data = tree["__data__"]
    [entry] = data[field]
    assert entry["__type__"] == entry_type
    assert "target" not in data  # the library omits None fields
    return type_name, data["runner"], entry["__data__"]["name"]


async def recv_registry(ws: ClientConnection) -> tuple[str, str, str]:
    return announced(await recv_json(ws))


def runner_of(peer: str, conn_id: str) -> str:
    return f"bushub:{peer}:{conn_id}"


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        ("auto", [SUBAGENTS_REGISTRY, PIPECAT_REGISTRY]),
        ("subagents", [SUBAGENTS_REGISTRY]),
        ("pipecat", [PIPECAT_REGISTRY]),
    ],
)
async def test_peer_is_announced_once_per_dialect_when_it_appears(
    node: RunningHub, dialect: str, expected: list[str]
) -> None:
    async with node.connect("a", peer="p", dialect=dialect) as a:
        # Several reconcile passes go by with the peer absent: nothing to announce.
        await assert_silent(a)
        async with node.connect("p"):
            holder = await node.wait_holder("p")
            got = [await recv_registry(a) for _ in expected]
            assert sorted(got) == sorted((t, runner_of("p", holder), "p") for t in expected)
            # Reconcile passes re-read the same holder: no second announcement.
            await assert_silent(a)


async def test_peer_present_at_connect_is_announced_at_once(node: RunningHub) -> None:
    async with node.connect("p"):
        holder = await node.wait_holder("p")
        async with node.connect("a", peer="p", dialect="subagents") as a:
            assert await recv_registry(a) == (SUBAGENTS_REGISTRY, runner_of("p", holder), "p")


async def test_new_connection_of_peer_is_announced_under_a_new_runner(node: RunningHub) -> None:
    async with node.connect("a", peer="p", dialect="subagents", on_peer_lost="keep") as a:
        async with node.connect("p"):
            first = await node.wait_holder("p")
            assert (await recv_registry(a))[1] == runner_of("p", first)
        async with node.connect("p"):
            second = await node.wait_holder("p")
            assert second != first
            assert (await recv_registry(a))[1] == runner_of("p", second)
            await assert_silent(a)


async def test_reconnect_of_watcher_sees_the_same_runner(node: RunningHub) -> None:
    async with node.connect("p"):
        holder = await node.wait_holder("p")
        async with node.connect("a", peer="p", dialect="subagents") as a:
            first = await recv_registry(a)
        async with node.connect("a", peer="p", dialect="subagents") as a:
            again = await recv_registry(a)
            await assert_silent(a)
        assert first == again == (SUBAGENTS_REGISTRY, runner_of("p", holder), "p")


async def test_peer_gone_past_grace_closes_watcher_with_4002(node: RunningHub) -> None:
    grace = node.settings.peer_grace
    async with node.connect("a", peer="p", dialect="subagents") as a:
        async with node.connect("p"):
            await recv_registry(a)
        gone_at = time.monotonic()
        assert await close_code(a, grace + TIMEOUT) == PEER_LOST
        assert a.close_frame_at is not None
        # Not before the grace period: a restarting peer gets that long to return.
        assert a.close_frame_at - gone_at >= grace * 0.9
    await node.wait_metric("bushub_connections_closed_total", 1, reason="peer_lost")


async def test_peer_gone_with_on_peer_lost_keep_leaves_watcher_open(node: RunningHub) -> None:
    async with node.connect("a", peer="p", dialect="subagents", on_peer_lost="keep") as a:
        async with node.connect("p"):
            await recv_registry(a)
        await asyncio.sleep(node.settings.peer_grace + QUIET)
        await still_served(a, "a")
    assert node.metric("bushub_connections_closed_total", reason="peer_lost") == 0


async def test_peer_back_within_grace_keeps_watcher_and_announces_it(node: RunningHub) -> None:
    async with node.connect("a", peer="p", dialect="subagents") as a:
        async with node.connect("p"):
            await recv_registry(a)
        async with node.connect("p"):
            holder = await node.wait_holder("p")
            assert await recv_registry(a) == (SUBAGENTS_REGISTRY, runner_of("p", holder), "p")
            # Well past the grace period measured from the peer's first exit.
            await asyncio.sleep(node.settings.peer_grace + QUIET)
            await still_served(a, "a")
    assert node.metric("bushub_connections_closed_total", reason="peer_lost") == 0
