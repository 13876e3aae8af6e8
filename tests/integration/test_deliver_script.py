"""The sessions' delivery script (``DELIVER``) on a real redis-server, called as a
node calls it: what it keeps, numbers, trims and refuses, and where it remembers a
sender's newest position."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bushub.broker.sessionscripts import (
    DELIVER,
    DELIVER_SHA,
    TRIM,
    Delivery,
    SessionLimits,
    trim_minid,
)
from buswire import Format
from buswire.channels import message_channel, relayed_key, session_key, stream_key
from buswire.relayframe import as_resent, pack_relay, pack_session_relay, sender_of
from tests.integration.realredis import running_redis
from tests.reliability.harness import FaultRedis

AGENT = "b"
SENDER = sender_of("a", "S-a")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FaultRedis]:
    yield from running_redis(tmp_path)


@pytest.fixture
def client(server: FaultRedis) -> Iterator[redis.Redis]:
    conn = redis.Redis(port=server.port)
    yield conn
    conn.close()


def deliver(
    client: redis.Redis, frame: bytes, limits: SessionLimits | None = None, life: int = 120_000
) -> int:
    """One delivery of ``frame`` to AGENT, as a node's publish connection sends it
    (``life``: the relayed record's, asked for with this message; negative: not)."""
    limits = limits or SessionLimits(120.0, 1000, 1 << 20)
    keys = (session_key(AGENT), stream_key(AGENT), relayed_key(AGENT))
    args = ("PUBLISH", message_channel(AGENT), limits.messages, limits.bytes)
    return int(client.eval(DELIVER, 3, *keys, *args, life, frame))


def trim(client: redis.Redis, position: int, session: str = "S-b") -> None:
    """An acknowledgement of every position up to ``position``, as a node passes it on."""
    keys = (session_key(AGENT), stream_key(AGENT))
    client.eval(TRIM, 2, *keys, session, trim_minid(position))


def hold(client: redis.Redis) -> None:
    """A session holds AGENT's name (as ``RESUME`` leaves a new one)."""
    client.hset(session_key(AGENT), mapping={"id": "S-b", "epoch": "e", "seq": 0, "kept": 0})


def from_session(position: int, payload: bytes = b'{"n":1}', **kw: bool) -> bytes:
    return pack_session_relay(Format.JSON, 1.0, payload, SENDER, position, **kw)


def kept(client: redis.Redis) -> list[tuple[int, bytes]]:
    entries = client.xrange(stream_key(AGENT))
    return [(int(eid.split(b"-")[1]), fields[b"d"]) for eid, fields in entries]


def session(client: redis.Redis) -> dict[str, str]:
    raw = client.hgetall(session_key(AGENT))
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}


def test_a_session_keeps_each_message_once_numbered_in_order(client: redis.Redis) -> None:
    hold(client)
    frames = [from_session(p, b'{"n":%d}' % p) for p in (1, 2, 3)]
    assert [deliver(client, f) for f in frames] == [-2, -2, -2]  # kept, nobody subscribed
    assert deliver(client, frames[1]) == -1, "a resend of a relayed position is taken"
    assert deliver(client, pack_relay(Format.JSON, 1.0, b"{}")) == -2  # a stock sender's
    assert [p for p, _ in kept(client)] == [1, 2, 3, 4]
    assert [d for _, d in kept(client)][:3] == frames
    state = session(client)
    assert state["seq"] == "4"
    assert int(state["kept"]) == sum(len(d) for _, d in kept(client))
    assert client.hget(relayed_key(AGENT), SENDER) == b"3", "the sender's newest"
    assert 0 < client.pttl(relayed_key(AGENT)) <= 120_000, "remembered for the window"


def test_a_stream_made_for_an_away_session_expires_after_it(client: redis.Redis) -> None:
    """Released before anything was kept for it (nothing to expire then), a session
    that is sent a message while away: its stream was made without an expiry and
    outlived the session for good, one per agent name. It outlives the session by as
    long again, for a resume then to count what it kept (``RESUME``)."""
    hold(client)
    client.pexpire(session_key(AGENT), 3_000)  # away: released for a 3 s window
    assert deliver(client, from_session(1)) == -2
    session_left = client.pttl(session_key(AGENT))
    assert 2 * session_left - 5 <= client.pttl(stream_key(AGENT)) <= 2 * session_left + 5
    assert deliver(client, from_session(2)) == -2
    assert 0 < client.pttl(stream_key(AGENT)) <= 6_000
    # A session a socket holds keeps its stream for as long as it is held.
    client.delete(stream_key(AGENT))
    client.persist(session_key(AGENT))
    assert deliver(client, from_session(3)) == -2
    assert client.pttl(stream_key(AGENT)) == -1


def test_a_senders_positions_kept_before_the_session_still_count(client: redis.Redis) -> None:
    """Sent while no session held the name, then resent once a session holds it:
    still relayed once."""
    assert deliver(client, from_session(1)) == 0  # published, nobody subscribed
    assert deliver(client, from_session(2)) == 0
    assert client.pttl(relayed_key(AGENT)) > 0
    hold(client)
    assert deliver(client, from_session(2)) == -1
    assert deliver(client, from_session(3)) == -2
    assert deliver(client, from_session(3)) == -1
    assert [p for p, _ in kept(client)] == [1]


def test_over_the_bounds_the_oldest_go_and_the_last_lost_is_remembered(
    client: redis.Redis,
) -> None:
    hold(client)
    limits = SessionLimits(120.0, 3, 1 << 20)
    for p in range(1, 7):
        deliver(client, from_session(p, b"x" * 50), limits)
    assert [p for p, _ in kept(client)] == [4, 5, 6]
    state = session(client)
    assert state["lost"] == "3"
    assert int(state["kept"]) == sum(len(d) for _, d in kept(client))
    by_bytes = SessionLimits(120.0, 1000, 2 * len(from_session(7, b"y" * 50)))
    deliver(client, from_session(7, b"y" * 50), by_bytes)
    assert [p for p, _ in kept(client)] == [6, 7]
    assert session(client)["lost"] == "5"
    assert int(session(client)["kept"]) == sum(len(d) for _, d in kept(client))


def test_transient_frames_are_not_kept_but_count_as_relayed(client: redis.Redis) -> None:
    hold(client)
    assert deliver(client, from_session(1, transient=True)) == 0  # published, not kept
    assert deliver(client, from_session(1)) == -1
    assert kept(client) == []
    assert session(client)["seq"] == "0"


def test_a_copy_sent_again_after_a_break_is_kept_only_if_its_original_never_was(
    client: redis.Redis,
) -> None:
    """A stock sender's copy is refused (the session's stream and resume cover the
    break); a session's copy of a position its shard relayed is refused as any
    resend; a session's copy of one it never relayed (its original lost with a
    primary that failed over before the write reached the replica) is kept: before,
    it was refused too, and lost without a trace."""
    hold(client)
    assert deliver(client, as_resent(pack_relay(Format.JSON, 1.0, b'{"n":1}'))) == -3
    assert deliver(client, from_session(1)) == -2  # kept (nobody subscribed)
    assert deliver(client, as_resent(from_session(1))) == -1
    assert deliver(client, as_resent(from_session(2))) == -2  # never relayed: kept
    assert deliver(client, from_session(2)) == -1
    assert [p for p, _ in kept(client)] == [1, 2]


def test_a_trim_frees_room_that_the_byte_bound_counts_again(client: redis.Redis) -> None:
    """An acknowledgement's ``TRIM`` only trims, and leaves ``kept`` as it was (an
    upper bound): over the byte bound the script counts what the stream holds before
    dropping anything, so nothing is dropped for room a trim freed."""
    hold(client)
    size = len(from_session(1, b"x" * 50))
    limits = SessionLimits(120.0, 1000, 4 * size)
    for p in range(1, 5):
        deliver(client, from_session(p, b"x" * 50), limits)
    trim(client, 3, session="S-a")  # another session's: nothing trimmed
    assert [p for p, _ in kept(client)] == [1, 2, 3, 4]
    trim(client, 3)
    assert int(session(client)["kept"]) == 4 * size, "not lowered by the trim"
    for p in range(5, 8):
        deliver(client, from_session(p, b"x" * 50), limits)
    assert [p for p, _ in kept(client)] == [4, 5, 6, 7], "the four fit: nothing dropped"
    state = session(client)
    assert "lost" not in state or state["lost"] == "0"
    assert int(state["kept"]) == 4 * size, "counted again"
    deliver(client, from_session(8, b"x" * 50), limits)
    assert [p for p, _ in kept(client)] == [5, 6, 7, 8]
    assert session(client)["lost"] == "4"


def test_an_away_session_at_its_bound_is_not_counted_again_per_message(
    client: redis.Redis,
) -> None:
    """Nothing trimmed since ``kept`` was last exact (the stream starts where it did):
    the script drops the oldest without reading the whole stream."""
    hold(client)
    size = len(from_session(1, b"x" * 50))
    limits = SessionLimits(120.0, 1000, 20 * size)
    for p in range(1, 22):
        deliver(client, from_session(p, b"x" * 50), limits)
    assert [p for p, _ in kept(client)] == list(range(2, 22))
    before = _xrange_calls(client)
    deliver(client, from_session(22, b"x" * 50), limits)
    # The oldest entry, and the next once it is dropped: no third, whole-stream read.
    assert _xrange_calls(client) - before == 2
    assert [p for p, _ in kept(client)] == list(range(3, 23))
    assert session(client)["lost"] == "2"
    assert int(session(client)["kept"]) == 20 * size


def _xrange_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_xrange", {}).get("calls", 0))


def test_over_the_count_bound_alone_the_stream_is_not_summed(client: redis.Redis) -> None:
    """A trim since the byte count was exact, then the count bound passed: the upper
    bound is within the byte bound, so only the oldest goes, without a whole read."""
    hold(client)
    limits = SessionLimits(120.0, 3, 1 << 20)
    for p in range(1, 4):
        deliver(client, from_session(p), limits)
    trim(client, 1)
    deliver(client, from_session(4), limits)
    before = _xrange_calls(client)
    deliver(client, from_session(5), limits)
    assert _xrange_calls(client) - before == 2
    assert [p for p, _ in kept(client)] == [3, 4, 5]
    assert session(client)["lost"] == "2"


def test_the_relayed_record_expires_only_when_asked_or_for_a_new_sender(
    client: redis.Redis,
) -> None:
    """The record's expiry, set with every message, cost Redis a call in nine: it is
    set when the node asks (any sender's message, a resend's too) and for a sender the
    record does not know, whose field may have made the record (no expiry then)."""
    hold(client)
    record = relayed_key(AGENT)
    assert deliver(client, from_session(1), life=-240_000) == -2
    assert 230_000 < client.pttl(record) <= 240_000, "made by a new sender: set"
    client.pexpire(record, 50_000)
    assert deliver(client, from_session(2), life=-240_000) == -2
    assert client.pttl(record) <= 50_000, "a known sender, not asked: left"
    other = pack_session_relay(Format.JSON, 1.0, b"{}", sender_of("c", "S-c"), 1)
    assert deliver(client, other, life=-240_000) == -2
    assert client.pttl(record) > 230_000, "a sender it did not know: set"
    for frame in (from_session(2), pack_relay(Format.JSON, 1.0, b"{}"), from_session(3)):
        client.pexpire(record, 50_000)
        deliver(client, frame, life=240_000)
        assert client.pttl(record) > 230_000, "asked: set, with a resend or a stock frame"
    # Emptied (every sender forgotten) and made again by a sender it knew before.
    client.delete(record)
    assert deliver(client, from_session(4), life=-240_000) == -2
    assert client.pttl(record) > 230_000


def test_a_shorter_window_never_cuts_the_records_life(client: redis.Redis) -> None:
    """Nodes with different ``--resume-window`` (a setting being rolled out): the
    record lives for the longest life any of them asked for, not the last one's."""
    hold(client)
    record = relayed_key(AGENT)
    assert deliver(client, from_session(1), life=240_000) == -2
    for frame, life in (
        (from_session(2), 60_000),  # asked by a node with a quarter of the window
        (from_session(2), 60_000),  # a resend, asked
        (pack_relay(Format.JSON, 1.0, b"{}"), 60_000),  # a stock sender's, asked
        (pack_session_relay(Format.JSON, 1.0, b"{}", sender_of("c", "S-c"), 1), -60_000),
    ):
        deliver(client, frame, life=life)
        assert client.pttl(record) > 230_000, "a shorter life asked for: the longer kept"
    client.pexpire(record, 30_000)
    deliver(client, from_session(3), life=60_000)
    assert 50_000 < client.pttl(record) <= 60_000, "a longer one than left: set"


def test_a_node_asks_for_the_records_expiry_every_quarter_window(
    client: redis.Redis,
) -> None:
    """The commands ``Delivery`` builds, run as a node's publish connection sends them
    (by digest and by text, and redis-py's arguments): twice the window asked for with
    the first message to an agent, not again within a quarter window, and again after
    it."""
    limits = SessionLimits(0.8, 1000, 1 << 20)  # asked every 0.2 s, for 1.6 s
    delivery = Delivery(limits, b"PUBLISH")
    channel = message_channel(AGENT).encode()
    raw = client.connection_pool.get_connection()
    client.script_load(DELIVER)
    record = relayed_key(AGENT)

    def send(frame: bytes, *, by_sha: bool = True) -> int:
        header = delivery.header(channel, len(frame), by_sha=by_sha)
        assert header is not None
        raw.send_packed_command([header + frame + b"\r\n"])
        return int(raw.read_response())

    try:
        hold(client)
        started = time.monotonic()
        assert send(from_session(1)) == -2
        assert 1_500 < client.pttl(record) <= 1_600
        client.pexpire(record, 1_000)  # shorter than an ask sets: an ask shows
        assert send(from_session(2)) == -2
        assert send(from_session(3)) == -2
        assert time.monotonic() - started < 0.2, "the machine stalled: nothing shown"
        assert client.pttl(record) <= 1_000, "within a quarter window: not asked again"
        time.sleep(0.25)
        assert send(from_session(4)) == -2
        assert client.pttl(record) > 1_000, "a quarter window on: asked again"
        # By text (after a NOSCRIPT), on a schedule of its own: its first asks.
        client.pexpire(record, 1_000)
        assert send(from_session(5), by_sha=False) == -2
        assert client.pttl(record) > 1_000
        assert [p for p, _ in kept(client)] == [1, 2, 3, 4, 5]
    finally:
        client.connection_pool.release(raw)
    # redis-py's path (TLS and unix-socket URLs) asks by the same clock.
    args = delivery.args(message_channel(AGENT), from_session(6))
    assert args[7] == 1_600, "its first asks"
    assert client.evalsha(DELIVER_SHA.decode(), 3, *args) == -2
    assert delivery.args(message_channel(AGENT), from_session(7))[7] == -1_600
    # Sent again by text after NOSCRIPT: its first try may have been the one asking.
    assert delivery.args(message_channel(AGENT), from_session(7), ask=True)[7] == 1_600
    time.sleep(0.25)
    assert delivery.args(message_channel(AGENT), from_session(7))[7] == 1_600
