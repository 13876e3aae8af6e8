"""The claim fence (``bushub.claims``): a node delivers an agent's messages only to a
local socket holding the newest claim seen, in the broker's order.

The hub tests play another node by publishing its presence events on the in-process
broker, interleaved with messages in a chosen order, as Redis would deliver them.
"""

import contextlib
import json
import time
from collections.abc import Sequence

import pytest
from websockets.exceptions import InvalidStatus

from bushub.broker.memory import MemoryBroker
from bushub.claims import ClaimFence
from buswire import Format, message_channel, presence_channel
from buswire.channels import claim_key
from buswire.presence import EventKind, PresenceEvent, decode_event, encode_event
from buswire.relayframe import pack_relay
from tests.support.messages import task_request
from tests.unit.bushub.conftest import RunningHub, running_hub, small_settings
from tests.unit.bushub.helpers import BRIEF, as_json, close_code, drain_until_closed, recv_bytes

TAKEN_OVER = 4001


# ---- the fence alone ------------------------------------------------------------


async def test_the_newest_claim_seen_holds_the_name() -> None:
    fence = ClaimFence()
    echo = fence.expect("n1.1")
    fence.seen("a", "n2.7")  # another node's claim, before ours
    assert not echo.done()
    assert fence.holds("a", "n2.7") and not fence.holds("a", "n1.1")

    fence.seen("a", "n1.1")
    assert echo.done()
    assert fence.holds("a", "n1.1") and not fence.holds("a", "n2.7")

    fence.seen("a", "n2.8")  # a newer claim: ours no longer holds
    assert not fence.holds("a", "n1.1")
    assert not fence.holds("b", "n2.8")  # per name


async def test_forgotten_names_and_abandoned_waits_leave_nothing() -> None:
    fence = ClaimFence()
    echo = fence.expect("n1.1")
    fence.unexpect("n1.1")
    fence.seen("a", "n1.1")
    assert not echo.done()  # nobody waits any more
    fence.forget("a")
    assert len(fence) == 0
    assert not fence.holds("a", "n1.1")


# ---- a hub node, with another node played on its broker -------------------------


def _claim_from_elsewhere(agent: str, conn: str) -> tuple[str, bytes]:
    event = PresenceEvent(kind=EventKind.CLAIM, agent=agent, conn=conn, node="elsewhere")
    return presence_channel(agent), encode_event(event)


def _message(agent: str, seq: int) -> tuple[str, bytes]:
    frame = as_json(task_request("s", agent, seq=seq))
    return message_channel(agent), pack_relay(Format.JSON, time.time(), frame)


async def test_a_message_after_a_newer_claim_elsewhere_is_not_delivered(
    node: RunningHub,
) -> None:
    async with node.connect("a") as ws:
        await node.wait_holder("a")
        # One batch: the in-process broker hands them over in this order, as Redis
        # hands a node one agent's channels on one connection.
        await node.hub.broker.publish_many(
            [_message("a", 1), _claim_from_elsewhere("a", "n2.1"), _message("a", 2)]
        )
        frames = await drain_until_closed(ws)
        assert frames == [as_json(task_request("s", "a", seq=1))]
        assert await close_code(ws) == TAKEN_OVER
    assert node.metric("bushub_messages_dropped_total", reason="closing") == 1


class _ClaimsLost(MemoryBroker):
    """An in-process broker that never brings this node's claims back, as when its
    subscription to the presence channel is not (yet) in place."""

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        kept = [
            (channel, data)
            for channel, data in items
            if not (channel.startswith("bushub:presence:") and _is_claim(data))
        ]
        await super().publish_many(kept)
        return [1] * len(items)


def _is_claim(data: bytes) -> bool:
    return decode_event(data).kind is EventKind.CLAIM


async def test_a_claim_never_seen_back_refuses_the_socket() -> None:
    async with running_hub(small_settings(), _ClaimsLost()) as node:
        with pytest.raises(InvalidStatus) as refused:
            await node.connect("a")
        assert refused.value.response.status_code == 503
        # The broker is every node's: the next node would answer the same now.
        assert refused.value.response.headers.get("Retry-After") == "1"
        assert node.metric("bushub_connections_refused_total", reason="broker_unreachable") == 1
        assert node.hub.connection_count == 0
        assert len(node.hub.presence.claims) == 0


async def test_after_a_suspension_only_a_confirmed_claim_holds() -> None:
    fence = ClaimFence()
    fence.seen("a", "n1.1")
    fence.seen("b", "n1.2")
    fence.suspend()  # the pub/sub connection broke: claims may have been missed
    assert not fence.holds("a", "n1.1") and not fence.holds("b", "n1.2")

    fence.confirm("a", "n1.1")  # its claim key still names it
    assert fence.holds("a", "n1.1")
    fence.seen("b", "n2.9")  # a claim seen on the new subscription wins over a confirm
    fence.confirm("b", "n1.2")
    assert fence.holds("b", "n2.9") and not fence.holds("b", "n1.2")


class _Breakable(MemoryBroker):
    """An in-process broker whose pub/sub side can be said to break and come back;
    what is published while broken reaches nobody, as with a lost subscription."""

    def __init__(self) -> None:
        super().__init__()
        self._up = True

    @property
    def up(self) -> bool:
        return self._up

    def set_up(self, up: bool) -> None:
        self._up = up
        self._on_state(up)

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        if not self._up:
            return [0] * len(items)
        return await super().publish_many(items)


async def test_after_a_break_a_socket_gets_messages_once_its_claim_is_confirmed() -> None:
    broker = _Breakable()
    async with running_hub(small_settings(), broker) as node, node.connect("a") as ws:
        await node.wait_holder("a")
        broker.set_up(False)
        await broker.publish_many([_message("a", 0)])  # lost with the subscription
        broker.set_up(True)
        await broker.publish_many([_message("a", 1)])  # arrives before the confirmation
        # The reconcile that follows confirms the claim: from then on, delivered.
        for seq in range(2, 100):
            await broker.publish_many([_message("a", seq)])
            with contextlib.suppress(TimeoutError):
                first = await recv_bytes(ws, BRIEF)
                break
        else:
            raise AssertionError("nothing delivered after the break")
        # (A slow machine may deliver one a little after its recv gave up.)
        delivered = json.loads(first)["__data__"]["payload"]["seq"]
        assert 1 <= delivered <= seq
        # Every message before it was counted, none lost silently.
        dropped = node.metric("bushub_messages_dropped_total", reason="unconfirmed")
        assert dropped == delivered - 1


async def test_after_a_break_a_claim_missed_meanwhile_closes_the_socket() -> None:
    broker = _Breakable()
    async with running_hub(small_settings(), broker) as node, node.connect("a") as ws:
        await node.wait_holder("a")
        broker.set_up(False)
        # Another node claims the name; this node never sees the event, only the key.
        channel, event = _claim_from_elsewhere("a", "n2.1")
        await broker.claim_record(claim_key("a"), b"n2.1 n2", 5.0, channel, event)
        await broker.publish_many([_message("a", 1)])
        broker.set_up(True)
        # Until the reconcile has read the key, nothing is delivered.
        await node.hub.broker.publish_many([_message("a", 2)])
        assert await drain_until_closed(ws) == []
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == TAKEN_OVER
