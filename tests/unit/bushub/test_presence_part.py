"""Presence on its own, driven by events and fake timers: the in-process broker,
no socket, no clock that moves by itself."""

import asyncio
import json
from typing import Any

import pytest

from bushub.broker import MemoryBroker
from bushub.broker.nodes import BeatStatus
from bushub.broker.sessionscripts import SessionLimits
from bushub.brokerhealth import BrokerHealth
from bushub.closecodes import CloseCode
from bushub.heartbeat import Heartbeat
from bushub.membership import Membership
from bushub.metrics import Metrics
from bushub.outbound import Outbound
from bushub.peers import runner_name
from bushub.presence import Presence
from bushub.sessions import Session
from bushub.subscriptions import Subscriptions
from buswire import presence_key
from buswire.channels import node_channel
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

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.settings = small_settings(node_id="n1", peer_grace=5.0)
        self.broker = broker or MemoryBroker()
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

    def event(
        self, kind: EventKind, agent: str, conn_id: str, node: str = "n2", runner: str = ""
    ) -> None:
        event = PresenceEvent(kind=kind, agent=agent, conn=conn_id, node=node, runner=runner)
        self.presence.on_event(agent, encode_event(event))


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


async def test_a_peer_held_by_a_session_is_lost_only_once_its_session_is() -> None:
    # A reconnecting proxy's socket is announced under its session: gone from its
    # node, it is on its way back (to any node) for the resume window, not lost.
    wired = Wired()
    watcher = connection("a", "p")
    wired.presence.hold(watcher)
    await wired.presence.announce(watcher)
    wired.event(EventKind.UP, "p", "p-conn-1", runner="s0123456789abcdef.e1")
    wired.event(EventKind.DOWN, "p", "p-conn-1")
    [timer] = wired.timers.pending()
    assert timer.delay == wired.settings.resume_window > wired.settings.peer_grace
    # Back on another connection of the same session: nothing to tell, nothing closed.
    wired.event(EventKind.UP, "p", "p-conn-2", runner="s0123456789abcdef.e1")
    assert wired.timers.pending() == [] and watcher.close_code is None
    # Gone again and never back: lost once the window has passed.
    wired.event(EventKind.DOWN, "p", "p-conn-2")
    [timer] = wired.timers.pending()
    timer.fire()
    assert watcher.close_code is CloseCode.PEER_LOST


@pytest.mark.parametrize("peer_session", ["none", "away"])
async def test_a_session_told_of_its_peer_before_takes_it_for_lost_where_it_is_absent(
    peer_session: str,
) -> None:
    """The proxy was told of p on a socket whose node is gone (drained, killed); p
    left while it reconnected. On the node it resumes on p is nowhere: p's lost timer
    starts (the peer grace; the resume window if a session of p is kept, p being on
    its way back), where before the proxy waited in silence for good."""
    broker = MemoryBroker()
    wired = Wired(broker)
    broker.keep_for_sessions(SessionLimits(window=60.0, messages=100, bytes=1 << 20))
    if peer_session == "away":
        await broker.resume_session("p", "SP", 0, "e1", "p-conn-1")
        await broker.release_sessions([("p", "p-conn-1")], 60.0)
    watcher = connection("a", "p")
    watcher.session = Session("S1", 3, peer_seen=True)
    wired.presence.hold(watcher)
    await wired.presence.announce(watcher)
    [timer] = wired.timers.pending()
    grace = wired.settings.peer_grace
    assert timer.delay == (grace if peer_session == "none" else wired.settings.resume_window)
    timer.fire()
    assert watcher.close_code is CloseCode.PEER_LOST


async def test_a_session_never_told_of_its_peer_waits_for_it() -> None:
    """Started before its peer: absent, p is waited for (stock proxies' behaviour),
    and p coming up cancels the timer of a session that had been told of it."""
    wired = Wired()
    waiting = connection("a", "p")
    waiting.session = Session("S1", 0)
    wired.presence.hold(waiting)
    await wired.presence.announce(waiting)
    assert wired.timers.pending() == []
    seen = connection("b", "p", conn_id="n1.b")
    seen.session = Session("S2", 5, peer_seen=True)
    wired.presence.hold(seen)
    await wired.presence.announce(seen)
    assert len(wired.timers.pending()) == 1
    wired.event(EventKind.UP, "p", "p-conn-9")
    assert wired.timers.pending() == []
    assert waiting.close_code is None and seen.close_code is None


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


@pytest.mark.parametrize("where", ["elsewhere", "here"])
async def test_a_holder_that_lets_go_while_its_node_is_asked_about_is_not_waited_for(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The presence record names the old holder (on another node, or on this one);
    its release comes while the claim asks whether that holder's node is alive: the
    claim does not then wait the takeover timeout for a release it heard already."""
    wired = Wired()
    node = "n2" if where == "elsewhere" else "n1"
    if where == "here":
        local = connection("w", conn_id="n1.old")
        wired.presence.hold(local)
    old = PresenceRecord(
        agent="w", conn=f"{node}.old", node=node, since=0.0, format="json", dialect="auto"
    )
    await wired.broker.put_record(presence_key("w"), encode_record(old), None)
    asked: list[str] = []

    async def answers(asked_about: str) -> bool:
        asked.append(asked_about)
        if where == "here":
            assert wired.presence.let_go(local)
        wired.event(EventKind.DOWN, "w", f"{node}.old", node=node)
        return True

    wired.presence.membership.answers = answers  # type: ignore[method-assign]
    caplog.set_level("WARNING", logger="bushub.presence")
    assert await wired.presence.claim(connection("w", conn_id="n1.new"))
    assert asked == [node]
    assert "did not confirm" not in caplog.text


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


async def test_a_reconcile_after_a_break_confirms_the_holders_and_then_says_so() -> None:
    wired = Wired()
    told: list[bool] = []
    wired.presence.on_confirmed = lambda: told.append(wired.presence.claims.holds("w", "n1.c"))
    holder = connection("w", conn_id="n1.c")
    wired.presence.hold(holder)
    await wired.presence.announce(holder)
    wired.presence.broker_state_changed(False)  # a break: claims suspended
    wired.presence.broker_state_changed(True)
    assert not wired.presence.claims.holds("w", "n1.c")
    await wired.presence.reconcile()
    assert told == [True], "told once, with the holder confirmed by then"


# ---- the heartbeat: one per node, nothing per agent -------------------------------


class Counting(MemoryBroker):
    """The in-process broker, counting the per-agent record work it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.record_calls = 0

    async def refresh_records(self, items: Any, ttl: float | None) -> list[bool]:
        self.record_calls += 1
        return await super().refresh_records(items, ttl)

    async def get_records(self, keys: Any) -> list[bytes | None]:
        self.record_calls += 1
        return await super().get_records(keys)


def heartbeat_of(wired: Wired) -> Heartbeat:
    return Heartbeat(wired.settings, wired.broker, wired.presence, BrokerHealth())


async def _worker_on_n2(wired: Wired, agent: str, conn_id: str) -> None:
    """An agent held on another node "n2", as its node would record it."""
    record = PresenceRecord(
        agent=agent, conn=conn_id, node="n2", since=0.0, format="json", dialect="auto"
    )
    await wired.broker.nodes.beat("n2", wired.settings.presence_ttl)
    await wired.broker.nodes.enlist("n2", [f"{conn_id} {agent}"])
    await wired.broker.put_record(presence_key(agent), encode_record(record), None)


async def test_at_rest_a_pass_does_no_per_agent_work() -> None:
    broker = Counting()
    wired = Wired(broker)
    beat = heartbeat_of(wired)
    for name in ("a", "b", "c"):
        conn = connection(name, "p", conn_id=f"n1.{name}")
        assert await wired.presence.claim(conn)
        wired.presence.hold(conn)
        await wired.presence.announce(conn)
    await beat.join()
    await beat._pass()
    before = broker.record_calls
    for _ in range(5):
        await beat._pass()
    assert broker.record_calls == before


async def test_a_peer_on_a_node_whose_heartbeat_lapsed_is_lost_and_cleaned_up() -> None:
    wired = Wired()
    beat = heartbeat_of(wired)
    await beat.join()
    await _worker_on_n2(wired, "p", "n2.p")
    watcher = connection("a", "p", conn_id="n1.a")
    wired.presence.hold(watcher)
    await wired.presence.announce(watcher)
    assert announced_runners(written(watcher)) == [runner_name("p", "n2.p")] * 2
    await beat._pass()
    assert wired.timers.pending() == []  # n2 is alive
    await _beat_alone(beat, wired.settings.presence_ttl + 0.1)  # n2 stops beating
    [timer] = wired.timers.pending()
    assert timer.delay == wired.settings.peer_grace
    # Cleaned up after: its record is gone.
    assert await _record_gone(wired, "p")
    timer.fire()
    assert watcher.close_code is CloseCode.PEER_LOST


async def test_a_node_back_after_its_cleanup_is_taken_back_quietly() -> None:
    wired = Wired()
    beat = heartbeat_of(wired)
    await _worker_on_n2(wired, "p", "n2.p")
    watcher = connection("a", "p", conn_id="n1.a")
    wired.presence.hold(watcher)
    await wired.presence.announce(watcher)
    await beat.join()
    await _beat_alone(beat, wired.settings.presence_ttl + 0.1)  # n2 stalls past its TTL
    [timer] = wired.timers.pending()
    assert await _record_gone(wired, "p")
    # n2 beats again, finds itself unknown, re-asserts and announces its holder: the
    # same connection, so the loss is cancelled and nothing is announced anew.
    assert (await wired.broker.nodes.beat("n2", 1.0)).status is BeatStatus.ABSENT
    await _worker_on_n2(wired, "p", "n2.p")
    wired.event(EventKind.UP, "p", "n2.p")
    assert timer.cancelled
    await beat._pass()
    assert wired.timers.pending() == []
    assert announced_runners(written(watcher)) == [runner_name("p", "n2.p")] * 2


async def _beat_alone(beat: Heartbeat, seconds: float) -> None:
    """This node beats every third of ``seconds`` while others are silent."""
    for _ in range(4):
        await asyncio.sleep(seconds / 3)
        await beat._pass()


async def test_a_node_that_was_out_itself_judges_no_other_node() -> None:
    wired = Wired()
    beat = heartbeat_of(wired)
    await beat.join()
    await _worker_on_n2(wired, "p", "n2.p")
    watcher = connection("a", "p", conn_id="n1.a")
    wired.presence.hold(watcher)
    await wired.presence.announce(watcher)
    # Both silent past the TTL (as through a Redis outage): n1's next beat finds
    # itself lapsed and leaves n2 be; n2 beats meanwhile and nothing is lost.
    await asyncio.sleep(wired.settings.presence_ttl + 0.1)
    await beat._pass()
    assert wired.presence.membership.dead == frozenset()
    await wired.broker.nodes.beat("n2", wired.settings.presence_ttl)
    await beat._pass()
    assert wired.timers.pending() == []
    assert await wired.broker.get_records([presence_key("p")]) != [None]


async def _record_gone(wired: Wired, agent: str) -> bool:
    """Wait (bounded) for the cleanup task to delete ``agent``'s record."""
    for _ in range(100):
        if await wired.broker.get_records([presence_key(agent)]) == [None]:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_a_node_unknown_to_the_registry_announces_its_holders_again() -> None:
    wired = Wired()
    beat = heartbeat_of(wired)
    holder = connection("w", conn_id="n1.w")
    assert await wired.presence.claim(holder)
    wired.presence.hold(holder)
    await wired.presence.announce(holder)
    await beat.join()
    wired.events.clear()
    # The registry forgot n1 (a Redis that lost its data): say it all again.
    await wired.broker.nodes.leave("n1")
    await beat._pass()
    ups = [json.loads(data) for _, data in wired.events]
    assert [(e["kind"], e["agent"], e["conn"]) for e in ups] == [("up", "w", "n1.w")]
    wired.events.clear()
    await beat._pass()  # known now: nothing per agent
    assert wired.events == []


async def test_a_node_restarted_under_its_name_withdraws_what_it_left() -> None:
    wired = Wired()
    # An earlier process of n1 held w and was killed; n1 starts again at once, so
    # its heartbeat never lapsed and no other node would clean up after it.
    old = PresenceRecord(
        agent="w", conn="n1.old", node="n1", since=0.0, format="json", dialect="auto"
    )
    await wired.broker.nodes.enlist("n1", ["n1.old w"])
    await wired.broker.put_record(presence_key("w"), encode_record(old), None)
    await heartbeat_of(wired).join()
    assert await wired.broker.get_records([presence_key("w")]) == [None]
    downs = [json.loads(data) for _, data in wired.events]
    assert [(e["kind"], e["agent"], e["conn"]) for e in downs] == [("down", "w", "n1.old")]


@pytest.mark.parametrize("back", [True, False])
async def test_a_peer_on_a_node_last_seen_dead_is_announced_if_redis_hears_that_node(
    back: bool,
) -> None:
    wired = Wired()
    await _worker_on_n2(wired, "p", "n2.p")
    wired.presence.membership.dead = frozenset({"n2"})  # as the last beat here saw it
    if back:  # n2 is running again: its own channel has its subscriber
        await wired.broker.subscribe(node_channel("n2"))
    watcher = connection("a", "p", conn_id="n1.a")
    wired.presence.hold(watcher)
    await wired.presence.announce(watcher)
    announced = announced_runners(written(watcher))
    assert announced == ([runner_name("p", "n2.p")] * 2 if back else [])
    assert wired.presence.membership.is_live("n2") is back


async def test_handshakes_asking_about_one_node_at_once_share_one_probe() -> None:
    """A storm: every handshake of a dead node's agents asks whether Redis still hears
    that node; asked together, one probe answers them all, and a later question
    probes again (the node may be back)."""
    broker = MemoryBroker()
    probes: list[str] = []
    broker.set_handlers(lambda channel, data: probes.append(channel), lambda up: None)
    membership = Membership(
        small_settings(node_id="n1"), broker, BrokerHealth(), lambda agent, conn: None
    )
    assert await asyncio.gather(*(membership.answers("n9") for _ in range(50))) == [False] * 50
    await broker.subscribe(node_channel("n9"))  # n9 is back
    asked = [asyncio.ensure_future(membership.answers("n9")) for _ in range(50)]
    asked[0].cancel()  # one handshake given up: the others still get their answer
    results = await asyncio.gather(*asked, return_exceptions=True)
    assert results[1:] == [True] * 49
    await asyncio.sleep(0)
    assert probes == [node_channel("n9")], "one probe for the 50 asking together"
    assert await membership.answers("n9") is True
    await asyncio.sleep(0)
    assert probes == [node_channel("n9")] * 2
