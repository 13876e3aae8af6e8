"""The in-process broker's presence records and channels: a record is held by one
connection, refreshed and deleted only by it, and expires after its TTL."""

import asyncio

from bushub.broker import MemoryBroker
from bushub.broker.sessionscripts import SessionLimits
from buswire import Format, message_channel
from buswire.presence import PresenceRecord, encode_record, record_conn
from buswire.relayframe import pack_session_relay, sender_of
from tests.unit.bushub.helpers import TIMEOUT

KEY = "bushub:agent:{a}"
TTL = TIMEOUT  # long enough not to expire within a test step
SHORT_TTL = TIMEOUT / 40


def record(conn: str, agent: str = "a", since: float = 1.0) -> bytes:
    return encode_record(
        PresenceRecord(
            agent=agent, conn=conn, node="n1", since=since, format="json", dialect="auto"
        )
    )


async def test_put_then_get_and_absent_keys() -> None:
    broker = MemoryBroker()
    await broker.put_record(KEY, record("c1"), TTL)
    assert await broker.get_records([KEY, "bushub:agent:{nobody}"]) == [record("c1"), None]
    # put replaces whoever held the key.
    await broker.put_record(KEY, record("c2"), TTL)
    [value] = await broker.get_records([KEY])
    assert value is not None and record_conn(value) == "c2"


async def test_refresh_by_holder_or_of_absent_key_succeeds() -> None:
    broker = MemoryBroker()
    await broker.put_record(KEY, record("c1"), TTL)
    other = "bushub:agent:{b}"
    kept = await broker.refresh_records(
        [(KEY, "c1", record("c1", since=2.0)), (other, "c9", record("c9", agent="b"))], TTL
    )
    assert kept == [True, True]
    assert await broker.get_records([KEY, other]) == [record("c1", since=2.0), record("c9", "b")]


async def test_refresh_refuses_when_another_connection_holds_the_key() -> None:
    broker = MemoryBroker()
    await broker.put_record(KEY, record("c2"), TTL)
    assert await broker.refresh_records([(KEY, "c1", record("c1"))], TTL) == [False]
    assert await broker.get_records([KEY]) == [record("c2")]


async def test_delete_only_by_the_holder() -> None:
    broker = MemoryBroker()
    await broker.put_record(KEY, record("c1"), TTL)
    await broker.delete_record(KEY, "c2")
    assert await broker.get_records([KEY]) == [record("c1")]
    # A prefix of the holder's id is not the holder.
    await broker.delete_record(KEY, "c")
    assert await broker.get_records([KEY]) == [record("c1")]
    await broker.delete_record(KEY, "c1")
    assert await broker.get_records([KEY]) == [None]


async def test_records_expire_after_their_ttl() -> None:
    broker = MemoryBroker()
    await broker.put_record(KEY, record("c1"), SHORT_TTL)
    assert await broker.get_records([KEY]) == [record("c1")]
    assert await broker.scan_records("bushub:agent:*", 10) == [record("c1")]
    await asyncio.sleep(SHORT_TTL * 2)
    assert await broker.get_records([KEY]) == [None]
    assert await broker.scan_records("bushub:agent:*", 10) == []
    # An expired record no longer holds the key against anyone.
    await broker.put_record(KEY, record("c1"), SHORT_TTL)
    await asyncio.sleep(SHORT_TTL * 2)
    assert await broker.refresh_records([(KEY, "c2", record("c2"))], TTL) == [True]


async def test_refresh_extends_the_lifetime() -> None:
    broker = MemoryBroker()
    await broker.put_record(KEY, record("c1"), SHORT_TTL)
    assert await broker.refresh_records([(KEY, "c1", record("c1"))], TTL) == [True]
    await asyncio.sleep(SHORT_TTL * 2)
    assert await broker.get_records([KEY]) == [record("c1")]


async def test_publish_reaches_subscribed_channels_after_the_call_returns() -> None:
    broker = MemoryBroker()
    seen: list[tuple[str, bytes]] = []
    broker.set_handlers(lambda channel, data: seen.append((channel, data)), lambda up: None)
    await broker.start()
    await broker.subscribe("c:1")
    counts = await broker.publish_many([("c:1", b"x"), ("c:2", b"y"), ("c:1", b"z")])
    assert counts == [1, 0, 1]
    assert seen == []  # never inside the publish: the hub must not be re-entered
    await asyncio.sleep(0)
    assert seen == [("c:1", b"x"), ("c:1", b"z")]
    await broker.unsubscribe("c:1")
    assert await broker.publish_many([("c:1", b"w")]) == [0]
    await asyncio.sleep(0)
    assert len(seen) == 2
    await broker.close()


async def test_relay_records_of_agents_nothing_reached_for_the_window_are_dropped() -> None:
    """What the in-process broker remembers of senders per agent lasts a window past
    the last message relayed to the agent, as Redis' record does: it is dropped
    then (looked for when a pass asks about any agent), not kept for good."""
    broker = MemoryBroker()
    broker.keep_for_sessions(SessionLimits(SHORT_TTL, 100, 1 << 20))
    frame = pack_session_relay(Format.JSON, 1.0, b"{}", sender_of("c", "S1"), 1)
    assert await broker.publish_many([(message_channel("gone-quiet"), frame)]) == [0]
    assert await broker.relayed_senders_gone("gone-quiet", 10) == {b"c S1": b"1"}
    await asyncio.sleep(SHORT_TTL * 1.5)
    memory = broker._kept()
    memory._swept_at = 0.0  # the last sweep was long enough ago
    assert await broker.relayed_senders_gone("anyone", 10) == {}
    assert "gone-quiet" not in memory._relayed


async def test_sessions_away_past_the_window_are_dropped_though_never_named_again() -> None:
    """An expired session was dropped only when its name was next looked at, which
    for a name used once is never: each kept, for good, what it was sent while away."""
    broker = MemoryBroker()
    broker.keep_for_sessions(SessionLimits(SHORT_TTL, 100, 1 << 20))
    memory = broker._kept()
    for n in range(50):
        agent = f"once-{n}"
        await broker.resume_session(agent, f"S{n}", 0, "e", f"conn-{n}")
        await broker.release_sessions([(agent, f"conn-{n}")], SHORT_TTL)
        frame = pack_session_relay(Format.JSON, 1.0, b"{}", sender_of("c", "S"), n + 1)
        await broker.publish_many([(message_channel(agent), frame)])  # kept while away
    assert len(memory) == 50
    await asyncio.sleep(SHORT_TTL * 1.5)
    memory._sessions_swept_at = 0.0  # the last sweep was long enough ago
    await broker.resume_session("later", "S-later", 0, "e", "conn-later")
    await broker.release_sessions([("later", "conn-later")], SHORT_TTL)
    assert len(memory) == 1, "only the session released just now"
