"""A socket is reachable once its client is told it is open.

A node claims a socket's name, accepts it, then records and announces it. A message
sent to the name as soon as the client's handshake has returned must reach that
socket, however slowly the node goes through those steps: its message channel is
subscribed before the claim is published (so it is in force when the claim comes
back) and the name is held from the claim on, with what arrives before the accept
waiting in the socket's queue. Here a node is made slow at each step in turn, on the
in-process broker and on a real Redis; the sender's message is routed and published
while the step waits. And the subscription so taken is let go with the socket, also
when a newer socket of the name on the same node took over.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from bushub.connection import Connection
from bushub.hub import Hub
from tests.integration.procs import TIMEOUT, RedisServer
from tests.support.messages import TASK_REQUEST, decode, encode, task_request
from tests.support.waiting import until
from tests.unit.bushub.conftest import RunningHub, running_hub, small_settings

pytestmark = pytest.mark.integration

BROKERS = ["in-process", "redis"]
# Where the node is held up: after the claim won and before the accept (the client's
# handshake waits), or after the accept and before the socket is recorded and
# announced (the client's handshake has returned).
STEPS = ["claim", "attach"]


@asynccontextmanager
async def _node(broker: str, tmp_path: Path) -> AsyncIterator[RunningHub]:
    if broker == "in-process":
        async with running_hub(small_settings()) as node:
            yield node
        return
    redis = RedisServer(tmp_path / "redis.log")
    redis.start()
    try:
        async with running_hub(small_settings(redis_url=redis.url)) as node:
            yield node
    finally:
        redis.stop()


def _hold_up(monkeypatch: pytest.MonkeyPatch, hub: Hub, step: str, gate: asyncio.Event) -> None:
    """Make ``hub`` wait for ``gate`` after the claim, or before the attach."""
    if step == "claim":
        claim = hub.claim

        async def slow_claim(conn: Connection) -> bool:
            claimed = await claim(conn)
            await gate.wait()
            return claimed

        monkeypatch.setattr(hub, "claim", slow_claim)
    else:
        attach = hub.attach

        async def slow_attach(conn: Connection) -> None:
            await gate.wait()
            await attach(conn)

        monkeypatch.setattr(hub, "attach", slow_attach)


async def _routed(hub: Hub, agent: str, count: int) -> None:
    """Until ``count`` messages from ``agent``'s socket have been routed and published."""

    def done() -> bool:
        conn = hub.presence.holders.get(agent)
        return conn is not None and conn.messages_in >= count and hub.publisher.pending == 0

    assert await until(done, TIMEOUT), f"{agent}'s messages were not published"


async def _next_request(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            tree: dict[str, Any] = decode(await ws.recv())
            if tree["__type__"] == TASK_REQUEST:
                return tree


async def _open(node: RunningHub, agent: str) -> ClientConnection:
    url = f"ws://{node.host}:{node.port}/ws/{agent}?format=json&dialect=subagents"
    return await connect(url, open_timeout=TIMEOUT, ping_interval=None)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("broker", BROKERS)
async def test_a_message_sent_once_the_handshake_returned_reaches_the_socket(
    broker: str, step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _node(broker, tmp_path) as node:
        sender = await _open(node, "sender")
        gate = asyncio.Event()
        _hold_up(monkeypatch, node.hub, step, gate)
        opening: asyncio.Task[ClientConnection] = asyncio.create_task(_open(node, "late"))
        try:
            if step == "claim":
                # Claimed, not yet accepted: the message waits in the socket's queue.
                assert await until(lambda: "late" in node.hub.presence.holders, TIMEOUT)
            else:
                await asyncio.wait_for(asyncio.shield(opening), TIMEOUT)
            await sender.send(encode(task_request("sender", "late", 1)))
            await _routed(node.hub, "sender", 1)
            gate.set()
            late = await asyncio.wait_for(opening, TIMEOUT)
            request = await _next_request(late)
            assert request["__data__"]["payload"] == {"seq": 1}
            # And what follows comes after it, on the same socket.
            await sender.send(encode(task_request("sender", "late", 2)))
            assert (await _next_request(late))["__data__"]["payload"] == {"seq": 2}
            assert node.hub.metrics.messages_dropped.labels("undeliverable")._value.get() == 0
            await late.close()
        finally:
            gate.set()
            opening.cancel()
            await sender.close()


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_name_taken_over_on_its_own_node_leaves_no_subscription_behind(
    broker: str, tmp_path: Path
) -> None:
    async with _node(broker, tmp_path) as node:
        hub = node.hub
        before = len(hub.subscriptions)
        first = await _open(node, "twice")
        second = await _open(node, "twice")  # the same name again: the first is closed
        await first.wait_closed()
        assert first.close_code == 4001  # taken over
        await second.close()
        # Each socket's ending lets go of what it wanted once its claim is withdrawn.
        assert await until(lambda: len(hub.subscriptions) == before, TIMEOUT), (
            f"the node still wants the name's channels: {dict(hub.subscriptions._wants)}"
        )
