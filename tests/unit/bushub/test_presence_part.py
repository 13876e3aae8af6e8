"""Presence on its own, driven by events and fake timers: the in-process broker,
no socket, no clock that moves by itself."""

import json
from typing import Any

import pytest

from bushub.broker import MemoryBroker
from bushub.brokerhealth import BrokerHealth
from bushub.closecodes import CloseCode
from bushub.metrics import Metrics
from bushub.outbound import Outbound
from bushub.peers import runner_name
from bushub.presence import Presence
from bushub.subscriptions import Subscriptions
from buswire import presence_key
from buswire.presence import (
    EventKind,
    PresenceEvent,
    PresenceRecord,
    encode_event,
    encode_record,
)
from tests.unit.bushub.conftest import small_settings
from tests.unit.bushub.parts import FakeTimers, connection, written


class Wired:
    """Presence with its events kept instead of published, and timers that wait."""

    def __init__(self) -> None:
        self.settings = small_settings(node_id="n1", peer_grace=5.0)
        self.broker = MemoryBroker()
        self.metrics = Metrics()
        self.events: list[tuple[str, bytes]] = []
        self.timers = FakeTimers()
        self.presence = Presence(
            self.settings,
            self.broker,
            Subscriptions(self.broker),
            lambda channel, data: self.events.append((channel, data)),
            Outbound(self.metrics),
            self.metrics,
            self.timers,
            BrokerHealth(),
        )
        # Claims go through the broker itself (key and event in one step): its
        # presence channels lead back here, as a node's subscriber would.
        self.broker.set_handlers(self._from_broker, lambda up: None)

    def _from_broker(self, channel: str, data: bytes) -> None:
        agent = channel[channel.index("{") + 1 : -1]
        self.presence.on_event(agent, data)

    def event(self, kind: EventKind, agent: str, conn_id: str, node: str = "n2") -> None:
        data = encode_event(PresenceEvent(kind=kind, agent=agent, conn=conn_id, node=node))
        self.presence.on_event(agent, data)


def announced_runners(frames: list[bytes]) -> list[str]:
    runners = []
    for frame in frames:
        data: Any = json.loads(frame)["__data__"]
        runners.append(data["runner"])
    return runners


async def test_a_watcher_hears_of_its_peer_once_per_holder_connection() -> None:
    wired = Wired()
    watcher = connection("a", "p")
    wired.presence.hold(watcher)
    await wired.presence.announce(watcher)
    assert written(watcher) == []  # p is nowhere yet
    wired.event(EventKind.UP, "p", "p-conn-1")
    wired.event(EventKind.UP, "p", "p-conn-1")  # a repeat says nothing new
    wired.event(EventKind.UP, "p", "p-conn-2")  # p restarted: announced anew
    runners = announced_runners(written(watcher))
    # Both dialects while the watcher's dialect is unknown.
    assert runners == [runner_name("p", "p-conn-1")] * 2 + [runner_name("p", "p-conn-2")] * 2


async def test_a_peer_gone_past_the_grace_closes_its_watcher_with_4002() -> None:
    wired = Wired()
    watcher = connection("a", "p")
    wired.presence.hold(watcher)
    await wired.presence.announce(watcher)
    wired.event(EventKind.UP, "p", "p-conn-1")
    wired.event(EventKind.DOWN, "p", "p-conn-1")
    [timer] = wired.timers.pending()
    assert timer.delay == wired.settings.peer_grace
    assert watcher.close_code is None
    timer.fire()
    assert watcher.close_code is CloseCode.PEER_LOST


async def test_a_peer_back_within_the_grace_cancels_the_close() -> None:
    wired = Wired()
    keeper = connection("k", "p", close_on_peer_lost=False)
    watcher = connection("a", "p")
    for conn in (keeper, watcher):
        wired.presence.hold(conn)
        await wired.presence.announce(conn)
    wired.event(EventKind.UP, "p", "p-conn-1")
    wired.event(EventKind.DOWN, "p", "p-conn-1")
    wired.event(EventKind.UP, "p", "p-conn-2")
    assert wired.timers.pending() == []
    assert watcher.close_code is None and keeper.close_code is None


async def test_a_newer_claim_seen_after_ours_takes_the_name_over() -> None:
    wired = Wired()
    ours = connection("w", conn_id="n1.ours")
    # Nobody held w: the claim waits only for its own event to come back.
    assert await wired.presence.claim(ours)
    assert wired.presence.claims.holds("w", "n1.ours")
    wired.presence.hold(ours)
    wired.event(EventKind.CLAIM, "w", "n2.newer")
    assert ours.close_code is CloseCode.TAKEN_OVER
    assert not wired.presence.claims.holds("w", "n1.ours")


async def test_a_claim_the_broker_never_brings_back_is_refused() -> None:
    wired = Wired()
    wired.broker.set_handlers(lambda channel, data: None, lambda up: None)
    with pytest.raises(ConnectionError):
        await wired.presence.claim(connection("w"))


async def test_an_undecodable_event_is_counted_and_changes_nothing() -> None:
    wired = Wired()
    wired.presence.on_event("p", b"\xff not an event")
    dropped = wired.metrics.registry.get_sample_value(
        "bushub_messages_dropped_total", {"reason": "bad_presence"}
    )
    assert dropped == 1


async def test_reconcile_closes_a_holder_whose_record_another_connection_owns() -> None:
    wired = Wired()
    holder = connection("w", conn_id="n1.old")
    wired.presence.hold(holder)
    await wired.presence.announce(holder)
    newer = PresenceRecord(
        agent="w", conn="n2.new", node="n2", since=0.0, format="json", dialect="auto", peer=None
    )
    await wired.broker.put_record(presence_key("w"), encode_record(newer), 10.0)
    await wired.presence.reconcile()
    assert holder.close_code is CloseCode.TAKEN_OVER
    assert wired.presence.let_go(holder)
    assert wired.presence.per_agent_sizes()["holders"] == 0
