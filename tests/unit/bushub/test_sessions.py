"""Sessions on one node, driven with relay frames: the in-process broker's streams,
the node's replay, deduplication, hole filling and acknowledgements."""

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from bushub.broker.memory import MemoryBroker
from bushub.broker.sessionscripts import REPLAY_PAGE, Reasserted, SessionLimits
from bushub.claims import ClaimFence
from bushub.closecodes import CloseCode
from bushub.connection import Connection
from bushub.metrics import Metrics
from bushub.outbound import Outbound
from bushub.relay import Relay
from bushub.sessions import ACK_TICK, TRIM_SPACING, Session, Sessions, session_params
from bushub.settings import Settings
from buswire import Format, message_channel, sessionframe
from buswire.relayframe import (
    as_resent,
    pack_relay,
    pack_session_relay,
    pack_stored,
    sender_of,
    unpack_relay,
)
from buswire.sessionframe import ACK_DELAY, ACK_EVERY
from tests.support.messages import encode, task_request
from tests.support.waiting import until
from tests.unit.bushub.parts import KeepingSocket, ValveSocket, connection, written

LIMITS = SessionLimits(window=60.0, messages=4, bytes=1 << 20)


def relay_frame(seq: int, *, sender: bytes | None = None, position: int = 0) -> bytes:
    payload = encode(task_request("b", "a", seq))
    if sender is None:
        return pack_relay(Format.JSON, 1.0, payload)
    return pack_session_relay(Format.JSON, 1.0, payload, sender, position)


class Node:
    """Sessions, a relay and the in-process broker, wired as the hub wires them."""

    def __init__(
        self,
        broker: MemoryBroker | None = None,
        limits: SessionLimits = LIMITS,
        queue_bytes: int = 1 << 20,
    ) -> None:
        self.broker = broker or MemoryBroker()
        self.broker.keep_for_sessions(limits)
        self.metrics = Metrics()
        self.holders: dict[str, Connection] = {}
        self.claims = ClaimFence()
        self.outbound = outbound = Outbound(self.metrics)
        settings = Settings(node_id="unit", resume_window=LIMITS.window, queue_bytes=queue_bytes)
        self.relay = Relay(
            settings, self.metrics, self.holders, self.claims, self.publish, outbound
        )
        self.sessions = Sessions(
            settings, self.broker, self.metrics, outbound.enqueue, self.relay.payload_for
        )
        self.relay.sessions = self.sessions
        self.queue_bytes = queue_bytes
        self.outcomes: list[int] = []
        self.broker.set_handlers(self._on_message, lambda up: None)

    def _on_message(self, channel: str, data: bytes) -> None:
        self.relay.deliver(channel[len(message_channel("")) - 1 : -1], data)

    def publish(self, channel: str, data: bytes) -> None:
        asyncio.get_running_loop().create_task(self._publish(channel, data))

    async def _publish(self, channel: str, data: bytes) -> None:
        [count] = await self.broker.publish_many([(channel, data)])
        self.outcomes.append(count)
        self.sessions.published(data, count)

    async def session_socket(
        self,
        session: str,
        received: int = 0,
        *,
        inline_acks: bool = False,
        socket: KeepingSocket | None = None,
        sent_lost: int = 0,
    ) -> Connection:
        conn = connection(
            "a",
            "b",
            conn_id=f"c-{session}-{received}",
            socket=socket,
            queue_bytes=self.queue_bytes,
        )
        conn.session = Session(session, received, inline_acks=inline_acks, sent_lost=sent_lost)
        self.holders["a"] = conn
        self.claims.seen("a", conn.id)
        await self.broker.subscribe(message_channel("a"))
        await self.sessions.resume(conn)
        self.sessions.started(conn)
        return conn

    async def send_to_a(self, seq: int) -> int:
        """Publish a message for ``a`` the way another node would; its position."""
        [count] = await self.broker.publish_many([(message_channel("a"), relay_frame(seq))])
        return count

    def counted(self, event: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "bushub_session_messages_total", {"event": event}
        )
        return value or 0.0


def numbered(conn: Connection) -> list[tuple[int, int]]:
    """(position, payload seq) of the numbered messages written to ``conn``."""
    out = []
    for frame in map(sessionframe.decode, written(conn)):
        if frame.kind is sessionframe.Kind.MESSAGE:
            out.append((frame.position, json.loads(frame.payload)["__data__"]["payload"]["seq"]))
    return out


def test_session_params_are_checked() -> None:
    assert session_params("a", {}) is None
    assert session_params("a", {"session": "abc_-9", "received": "12"}) == ("abc_-9", 12, 0)
    assert session_params("a", {"session": "abc"}) == ("abc", 0, 0)
    assert session_params("a", {"session": "abc", "sent_lost": "3"}) == ("abc", 0, 3)
    for bad in ({"session": ""}, {"session": "a b"}, {"session": "x" * 65}):
        with pytest.raises(ValueError):
            session_params("a", bad)
    # Digits of other scripts: "\u00b2" made int() raise (a 500), "\u0661" read as 1.
    for digits in ("-1", "²", "\u0661", "\uff11", "1" * 16, ""):
        for name in ("received", "sent_lost"):
            with pytest.raises(ValueError):
                session_params("a", {"session": "abc", name: digits})
    # The sender a session's messages carry (agent, space, id) fits in 255 bytes.
    agent = "\u00e9" * 120 + "abcdef"  # 126 characters, 246 bytes
    with pytest.raises(ValueError):
        session_params(agent, {"session": "x" * 64})
    assert session_params(agent, {"session": "x" * 8}) == ("x" * 8, 0, 0)


async def test_kept_messages_are_replayed_once_in_order_then_live() -> None:
    node = Node()
    first = await given_live(node, 1, 2)
    del node.holders["a"]
    await node.broker.unsubscribe(message_channel("a"))
    await node.sessions.ended(first, held=True)
    assert await node.send_to_a(3) == -2  # kept while away, nobody subscribed
    back = await node.session_socket("S1", received=1)
    assert back.session is not None and back.session.result == "recovered"
    assert numbered(back) == [(2, 2), (3, 3)]
    # A live copy of a replayed position is not written again.
    node.relay.deliver("a", pack_stored(3, relay_frame(3)))
    node.relay.deliver("a", pack_stored(4, relay_frame(4)))
    assert numbered(back) == [(2, 2), (3, 3), (4, 4)]
    assert node.counted("duplicate") == 1
    assert node.counted("replayed") == 2


async def away_with(node: Node, conn: Connection, count: int) -> None:
    """``conn`` gone (its session away), then ``count`` messages kept for it."""
    del node.holders["a"]
    await node.broker.unsubscribe(message_channel("a"))
    await node.sessions.ended(conn, held=True)
    for seq in range(1, count + 1):
        assert await node.send_to_a(seq) == -2


async def given_live(node: Node, *seqs: int) -> Connection:
    """Session ``S1``'s socket, given ``seqs`` live at positions 1, 2...: through the
    channel (the in-process broker delivers on call_soon)."""
    conn = await node.session_socket("S1")
    for seq in seqs:
        await node.send_to_a(seq)
    await asyncio.sleep(0)
    assert numbered(conn) == list(enumerate(seqs, 1))
    return conn


def yielding_reads(node: Node) -> list[int]:
    """Each page read yields to the loop first, as one from Redis does; the positions
    read after, in order."""
    reads: list[int] = []
    read_session = node.broker.read_session

    async def read(agent: str, after: int, most: int | None = None) -> list[tuple[int, bytes]]:
        reads.append(after)
        await asyncio.sleep(0)
        return await read_session(agent, after, most)

    node.broker.read_session = read  # type: ignore[method-assign]
    return reads


async def test_a_replay_is_not_written_to_a_client_that_left_during_its_handshake() -> None:
    """A client that resumes and hangs up at once: each such handshake counted its
    whole first page as dropped (``closing``), though the stream keeps all of it for
    the next resume (a resume loop counted 1.37 M in 30 s)."""
    node = Node()
    await away_with(node, await node.session_socket("S1"), 3)
    left = connection("a", "b", conn_id="c-left")
    left.session = Session("S1", 0)
    node.holders["a"] = left
    node.claims.seen("a", left.id)
    await node.broker.subscribe(message_channel("a"))
    await node.sessions.resume(left)
    left.socket_ended(1000)
    node.sessions.started(left)
    assert written(left) == [] and node.counted("replayed") == 0
    await node.sessions.ended(left, held=True)
    back = await node.session_socket("S1", received=0)
    assert numbered(back) == [(1, 1), (2, 2), (3, 3)]


async def test_a_proxy_that_gave_up_messages_it_sent_resumes_as_a_gap_with_its_replay() -> None:
    """Its send log went over its bounds while away: its peers cannot tell what is
    missing from its messages, so the resume is a gap (a new epoch: they announce it
    anew), counted, and what it missed is replayed all the same."""
    node = Node()
    first = await node.session_socket("S1")
    assert first.session is not None
    epoch = first.session.epoch
    await away_with(node, first, 2)
    back = await node.session_socket("S1", received=0, sent_lost=3)
    assert back.session is not None and back.session.result == "gap"
    assert back.session.epoch != epoch
    assert numbered(back) == [(1, 1), (2, 2)], "what it missed, replayed"
    assert node.counted("sent_lost") == 3
    resumes = node.metrics.registry.get_sample_value("bushub_resumes_total", {"result": "gap"})
    assert resumes == 1
    # Told once: the next resume of the session, telling nothing, recovers.
    await node.sessions.ended(back, held=True)
    again = await node.session_socket("S1", received=2)
    assert again.session is not None and again.session.result == "recovered"
    assert again.session.epoch == back.session.epoch


async def test_a_new_session_saying_it_gave_up_sends_adds_nothing_to_the_count() -> None:
    """A session the hub does not hold starts anew whatever its proxy lost before (the
    proxy reports that itself): a first handshake, honest or not, cannot move the
    count by what it says."""
    node = Node()
    first = await node.session_socket("S9", received=0, sent_lost=10**15)
    assert first.session is not None and first.session.result == "new"
    assert node.counted("sent_lost") == 0


async def test_a_held_session_saying_it_gave_up_past_its_rate_counts_that_much() -> None:
    """The count is the proxy's word: more than its socket's rate lets through in a
    window is counted as that much (one handshake saying 10**15 made the counter too
    large for a float to add a real loss to)."""
    node = Node()
    first = await node.session_socket("S1")
    await away_with(node, first, 1)
    back = await node.session_socket("S1", received=0, sent_lost=10**15)
    assert back.session is not None and back.session.result == "gap"
    most = 2000 * LIMITS.window  # --rate-messages' default, a window's worth
    assert node.counted("sent_lost") == most < 10**15


async def test_a_resume_past_one_page_reads_the_rest_a_page_at_a_time_before_live() -> None:
    node = Node(limits=SessionLimits(window=60.0, messages=10_000, bytes=1 << 26))
    kept = 2 * REPLAY_PAGE + 10
    await away_with(node, await node.session_socket("S1"), kept)
    reads = yielding_reads(node)
    back = await node.session_socket("S1", received=0)
    assert len(numbered(back)) == REPLAY_PAGE, "the resume's page, written at once"
    await node.send_to_a(kept + 1)  # live while the rest is read: held
    await until(lambda: len(numbered(back)) == kept + 1, what="the replay, then live")
    assert numbered(back) == [(p, p) for p in range(1, kept + 2)]
    assert reads == [REPLAY_PAGE, 2 * REPLAY_PAGE], "a page per read, none past the resume's"
    assert node.counted("replayed") == kept
    assert node.counted("duplicate") == 0


async def test_a_page_that_cannot_be_read_closes_the_socket_to_resume_again() -> None:
    """Its proxy knows what it took and the stream keeps the rest: a resume from there
    misses nothing, where going on would have lost the page (counted as lost)."""
    node = Node(limits=SessionLimits(window=60.0, messages=10_000, bytes=1 << 26))
    await away_with(node, await node.session_socket("S1"), REPLAY_PAGE + 5)

    async def unreachable(*_: object) -> list[tuple[int, bytes]]:
        raise ConnectionError("redis went away")

    read_session = node.broker.read_session
    node.broker.read_session = unreachable  # type: ignore[method-assign]
    back = await node.session_socket("S1", received=0)
    await until(lambda: back.close_code is not None, what="the socket closed")
    assert back.close_code == CloseCode.TRY_AGAIN_LATER
    assert len(numbered(back)) == REPLAY_PAGE
    assert node.counted("lost") == 0
    node.broker.read_session = read_session  # type: ignore[method-assign]
    await node.sessions.ended(back, held=True)
    again = await node.session_socket("S1", received=REPLAY_PAGE)
    await until(lambda: len(numbered(again)) == 5, what="the rest, resumed")
    assert numbered(again) == [(p, p) for p in range(REPLAY_PAGE + 1, REPLAY_PAGE + 6)]


async def test_a_slow_readers_replay_waits_between_pages_for_its_queue() -> None:
    """A replay's next page is read once the socket's queue is back within
    --queue-bytes: read as fast as Redis answered, a reader that took nothing held
    its whole backlog (up to --resume-bytes) in the node's memory."""
    node = Node(limits=SessionLimits(window=60.0, messages=10_000, bytes=1 << 26), queue_bytes=4096)
    kept = 3 * REPLAY_PAGE + 10
    await away_with(node, await node.session_socket("S1"), kept)
    reads = yielding_reads(node)
    valve = ValveSocket(budget=10)
    back = await node.session_socket("S1", received=0, socket=valve)
    await asyncio.sleep(0.05)
    assert reads == [], "the resume's page waits in the queue: no page read past it"
    assert len(numbered(back)) == 10
    await node.send_to_a(kept + 1)  # live meanwhile: held behind the replay
    valve.budget = REPLAY_PAGE  # the rest of the first page and some of the second
    node.outbound.flush(back)
    await asyncio.sleep(0.05)
    assert reads == [REPLAY_PAGE], "one page more, then it waits again"
    assert len(numbered(back)) == REPLAY_PAGE + 10
    valve.budget = 10 * kept
    node.outbound.flush(back)
    await until(lambda: len(numbered(back)) == kept + 1, what="the replay, then live")
    assert numbered(back) == [(p, p) for p in range(1, kept + 2)]
    assert reads == [REPLAY_PAGE, 2 * REPLAY_PAGE, 3 * REPLAY_PAGE]
    assert node.counted("replayed") == kept


async def test_live_messages_held_past_the_bound_close_a_slow_reader_to_resume() -> None:
    """What comes live while a slow reader's replay waits is held up to --queue-bytes,
    as its queue is; past it the socket is closed as a slow consumer (4008) and its
    proxy's resume from what it took misses nothing: the stream kept it all."""
    node = Node(limits=SessionLimits(window=60.0, messages=10_000, bytes=1 << 26), queue_bytes=4096)
    kept = 2 * REPLAY_PAGE
    await away_with(node, await node.session_socket("S1"), kept)
    valve = ValveSocket(budget=5)
    back = await node.session_socket("S1", received=0, socket=valve)
    assert back.session is not None
    live = 0
    while back.close_code is None:
        live += 1
        assert live < 100, "held without bound"
        await node.send_to_a(kept + live)
        await asyncio.sleep(0)
    assert back.close_code == CloseCode.SLOW_CONSUMER
    # Each held frame is its message with the relay's and the stream's heads.
    assert 4096 // 200 <= live <= 4096 // len(relay_frame(kept)) + 1
    for more in range(live + 1, live + 6):  # not held for a socket that is closing
        await node.send_to_a(kept + more)
    await asyncio.sleep(0)
    live += 5
    assert back.session.held == [] and back.session.held_bytes == 0
    dropped = node.metrics.registry.get_sample_value(
        "bushub_messages_dropped_total", {"reason": "slow_consumer"}
    )
    assert dropped == 1
    taken = numbered(back)
    assert taken == [(p, p) for p in range(1, 6)]
    del node.holders["a"]
    await node.sessions.ended(back, held=True)
    again = await node.session_socket("S1", received=taken[-1][0])
    await until(lambda: len(numbered(again)) == kept + live - 5, what="the rest, resumed")
    assert numbered(again) == [(p, p) for p in range(6, kept + live + 1)]
    assert node.counted("lost") == 0


async def test_what_a_plain_holder_of_the_name_was_given_is_not_replayed_to_its_session() -> None:
    """A socket without a session takes the name of an away session and is given what
    its stream keeps: the session is ended, and its resume is a gap, not a replay."""
    node = Node()
    first = await node.session_socket("S1")
    await node.send_to_a(1)
    await asyncio.sleep(0)
    assert numbered(first) == [(1, 1)]
    await node.sessions.ended(first, held=True)  # away, kept for the window
    plain = connection("a", "b", conn_id="c-plain")
    node.holders["a"] = plain
    node.claims.seen("a", plain.id)
    for seq in (2, 3):
        assert await node.send_to_a(seq) == 1  # kept (numbered), and delivered live
    await until(lambda: node.broker._kept()._session("a") is None, what="the session ended")
    assert len(written(plain)) == 2
    back = await node.session_socket("S1", received=1)
    assert back.session is not None and back.session.result == "gap"
    assert numbered(back) == [], "nothing the plain socket was given is replayed"


async def test_what_an_away_session_kept_is_counted_lost_when_a_plain_holder_ends_it() -> None:
    """The session took 1 and 2 and acknowledged 1, then went; 3 and 4 were kept for
    it; a socket without a session takes the name and is given 5: the session ends,
    and with it 2 (taken, unacknowledged: the hub cannot tell), 3 and 4, which no
    socket was given: counted lost. 1, acknowledged, was trimmed as the socket ended."""
    node = Node()
    first = await given_live(node, 1, 2)
    node.sessions.proxy_ack(first, 1)
    await away_with(node, first, 2)  # kept at 3 and 4, nobody to give them to
    assert [p for p, _ in node.broker._kept().read("a", 0)] == [2, 3, 4], "1 trimmed at the end"
    plain = connection("a", "b", conn_id="c-plain")
    await node.broker.subscribe(message_channel("a"))
    node.holders["a"] = plain
    node.claims.seen("a", plain.id)
    assert await node.send_to_a(5) == 1
    await until(lambda: node.broker._kept()._session("a") is None, what="the session ended")
    assert len(written(plain)) == 1
    assert node.counted("lost") == 3
    back = await node.session_socket("S1", received=2)
    assert back.session is not None and back.session.result == "gap"


async def test_a_hole_in_live_positions_is_filled_from_the_stream() -> None:
    node = Node()
    conn = await node.session_socket("S1")
    # Kept in the stream, but the live copies of 1 and 2 never reached this node.
    for seq in (1, 2, 3):
        data, _ = node.broker._kept().deliver("a", relay_frame(seq))
        assert data is not None
        if seq == 3:
            node.relay.deliver("a", data)
    await asyncio.sleep(0.01)
    assert numbered(conn) == [(1, 1), (2, 2), (3, 3)]


async def test_a_fill_ended_by_its_client_leaving_counts_nothing_lost() -> None:
    """The client goes between two pages of a hole's fill: what was not read is
    still in the stream for its resume, not lost in transit."""
    node = Node(limits=SessionLimits(window=60.0, messages=10_000, bytes=1 << 26))
    conn = await node.session_socket("S1")
    reads = yielding_reads(node)
    read_session = node.broker.read_session

    async def client_goes(agent: str, after: int, most: int | None = None) -> Any:
        page = await read_session(agent, after, most)
        conn.socket_ended(1006)  # while the first page was read
        return page

    node.broker.read_session = client_goes  # type: ignore[method-assign]
    newest = REPLAY_PAGE + 40
    for seq in range(1, newest + 1):
        data, _ = node.broker._kept().deliver("a", relay_frame(seq))
        assert data is not None
    node.relay.deliver("a", data)  # only the newest live: a hole before it
    await asyncio.sleep(0.01)
    assert reads == [0], "no page read for a client gone"
    assert len(numbered(conn)) == REPLAY_PAGE
    assert node.counted("lost") == 0


async def test_a_senders_message_written_already_is_not_written_again_live_or_from_the_stream() -> (
    None
):
    """Redis relayed a sender's resend again (it had lost its record of the first):
    the socket that was given the first does not get it twice, on the live path nor
    when a hole is filled from the stream, and the position is spent, not a hole."""
    node = Node()
    conn = await node.session_socket("S1")
    sender = sender_of("b", "SB")
    kept = node.broker._kept()

    def keep(seq: int, position: int, *, live: bool, who: bytes = sender) -> None:
        data, _ = kept.deliver("a", relay_frame(seq, sender=who, position=position))
        assert data is not None, "relayed"
        kept._relayed.clear()  # as a Redis that lost its records would
        if live:
            node.relay.deliver("a", data)

    for seq, position in ((1, 7), (1, 7), (3, 8)):
        keep(seq, position, live=True)
    assert numbered(conn) == [(1, 1), (3, 3)]
    # Kept in the stream (4: a resend of 8, 5: new), only 6 live: 4 and 5 fill the hole.
    keep(3, 8, live=False)
    keep(5, 9, live=False)
    keep(6, 10, live=True)
    await asyncio.sleep(0.01)
    assert numbered(conn) == [(1, 1), (3, 3), (5, 5), (6, 6)]
    assert node.counted("resent_taken") == 2
    assert node.counted("lost") == 0
    # The fill reads up to the live message held (6), which is then written itself.
    assert node.counted("duplicate") == 0
    # Another sender's position 7 is its own.
    keep(7, 7, live=True, who=sender_of("c", "SC"))
    assert numbered(conn)[-1] == (7, 7)


async def test_what_a_session_missed_while_its_claim_was_unconfirmed_is_read_once_confirmed() -> (
    None
):
    """Messages dropped while the socket's claim was unconfirmed (a broker break, the
    cluster taking the node for dead) are in the stream: once confirmed, the session
    reads it, though no later message comes to show the hole."""
    node = Node()
    conn = await node.session_socket("S1")
    await node.send_to_a(1)
    await asyncio.sleep(0)
    node.claims.suspend()
    for seq in (2, 3):
        await node.send_to_a(seq)
    await asyncio.sleep(0.01)
    assert numbered(conn) == [(1, 1)], "not written while unconfirmed"

    def holds(c: Connection) -> bool:
        return node.claims.holds(c.agent, c.id)

    node.sessions.claims_confirmed(holds)  # not confirmed yet: it waits
    await asyncio.sleep(0.01)
    assert numbered(conn) == [(1, 1)] and node.sessions.sizes()["missed"] == 1
    node.claims.confirm("a", conn.id)
    node.sessions.claims_confirmed(holds)
    await until(lambda: len(numbered(conn)) == 3, what="the two read from the stream")
    assert numbered(conn) == [(1, 1), (2, 2), (3, 3)]
    assert node.sessions.sizes()["missed"] == 0
    # Delivered from the stream, so no drop (received = delivered + dropped).
    unconfirmed = node.metrics.registry.get_sample_value(
        "bushub_messages_dropped_total", {"reason": "unconfirmed"}
    )
    assert not unconfirmed


async def test_what_a_session_missed_during_its_replay_is_read_once_the_replay_is_done() -> None:
    """A claim confirmed while the session's paged replay is still being read: what it
    missed meanwhile came after the replay's newest, so the replay does not give it,
    and no later message may come to show the hole. Read once the replay is done."""
    node = Node(limits=SessionLimits(window=60.0, messages=10_000, bytes=1 << 26))
    kept = REPLAY_PAGE + 10
    await away_with(node, await node.session_socket("S1"), kept)
    reads = yielding_reads(node)
    back = await node.session_socket("S1", received=0)
    assert back.session is not None and back.session.replaying
    node.claims.suspend()
    await node.send_to_a(kept + 1)  # kept in the stream, not written: unconfirmed
    await asyncio.sleep(0)
    node.claims.confirm("a", back.id)
    node.sessions.claims_confirmed(lambda c: node.claims.holds(c.agent, c.id))
    await until(lambda: len(numbered(back)) == kept + 1, what="the replay, then the missed one")
    assert numbered(back) == [(p, p) for p in range(1, kept + 2)]
    assert node.sessions.sizes()["missed"] == 0
    assert reads[0] == REPLAY_PAGE and reads[-1] == kept, reads


async def test_over_the_bounds_the_oldest_go_and_a_resume_from_before_is_a_gap() -> None:
    node = Node()
    conn = await node.session_socket("S1")
    del node.holders["a"]
    await node.sessions.ended(conn, held=True)
    for seq in range(1, 7):
        await node.send_to_a(seq)
    back = await node.session_socket("S1")
    assert back.session is not None and back.session.result == "gap"
    assert [seq for _, seq in numbered(back)] == [3, 4, 5, 6]  # the newest four
    assert node.counted("lost") == 2  # and the two that went, counted


async def test_a_new_session_gets_nothing_of_the_previous_one() -> None:
    node = Node()
    conn = await node.session_socket("S1")
    del node.holders["a"]
    await node.sessions.ended(conn, held=True)
    await node.send_to_a(1)
    other = await node.session_socket("S2")
    assert other.session is not None and other.session.result == "new"
    assert numbered(other) == []
    node.relay.deliver("a", pack_stored(1, relay_frame(1)))  # the old session's, late
    assert numbered(other) == []


async def test_a_sessions_messages_are_relayed_once_and_acknowledged_in_order() -> None:
    node = Node()
    conn = await node.session_socket("S1")
    assert conn.session is not None
    b = connection("b", "a", conn_id="c-b")
    node.holders["b"] = b
    node.claims.seen("b", b.id)
    for position in (1, 2):
        node.relay.route(conn, sessionframe.message(position, encode(task_request("a", "b", 1))))
    # A refused one (no target, no peer rule for it here: an unknown type) settles too.
    node.relay.route(conn, sessionframe.message(3, b"{not json"))
    node.relay.route(conn, sessionframe.message(2, encode(task_request("a", "b", 1))))
    await asyncio.sleep(ACK_DELAY * 1.5)
    assert node.outcomes.count(-1) == 1, "position 2 sent again is relayed once"
    acks = [
        f.position
        for f in map(sessionframe.decode, written(conn))
        if f.kind is sessionframe.Kind.ACK
    ]
    assert acks and acks[-1] == 3


async def test_the_hub_acknowledges_every_64_positions_at_once_else_after_a_delay() -> None:
    """The proxy's own policy, mirrored: an acknowledgement is a write of its own, so a
    busy socket is not sent one per message, nor one per short tick."""
    node = Node()
    conn = await node.session_socket("S1")
    b = connection("b", "a", conn_id="c-b")
    node.holders["b"] = b
    node.claims.seen("b", b.id)

    def acks() -> list[int]:
        frames = map(sessionframe.decode, written(conn))
        return [f.position for f in frames if f.kind is sessionframe.Kind.ACK]

    async def send(positions: range) -> None:
        for position in positions:
            message = encode(task_request("a", "b", position))
            node.relay.route(conn, sessionframe.message(position, message))
        await asyncio.sleep(ACK_DELAY / 4)  # long enough for every publish outcome

    await send(range(1, 4))
    assert len(node.outcomes) == 3 and acks() == [], "settled, not yet due"
    await asyncio.sleep(ACK_DELAY)
    assert acks() == [3]
    await send(range(4, 4 + ACK_EVERY))
    assert acks() == [3, 3 + ACK_EVERY], "64 settled: at once"
    await send(range(4 + ACK_EVERY, 6 + ACK_EVERY))
    await node.sessions.ended(conn, held=False)
    await asyncio.sleep(ACK_DELAY * 1.5)
    assert acks() == [3, 3 + ACK_EVERY], "nothing written after the socket ended"
    assert node.sessions.sizes() == {
        "sessions": 0,
        "acks_due": 0,
        "trims_due": 0,
        "missed": 0,
        "unreleased": 0,
    }
    # Acknowledgements are no messages delivered (as the proxy's are none received).
    others = [f for f in written(conn) if sessionframe.decode(f).kind != sessionframe.Kind.ACK]
    assert node.metrics.traffic.delivered["json"] == len(others) == len(written(conn)) - 2


async def test_a_drain_acknowledges_what_is_settled_before_it_closes() -> None:
    """Not ACK_DELAY later, when the socket is gone: the proxy would send it again after
    its reconnect (taken once through Redis; twice through a restarted in-process
    broker, which keeps no relay record)."""
    node = Node()
    conn = await node.session_socket("S1")
    b = connection("b", "a", conn_id="c-b")
    node.holders["b"] = b
    node.claims.seen("b", b.id)
    for position in (1, 2, 3):
        node.relay.route(conn, sessionframe.message(position, encode(task_request("a", "b", 1))))
    await until(lambda: len(node.outcomes) == 3, what="the publish outcomes")
    node.sessions.acknowledge_now([conn, b])
    acks = [sessionframe.decode(f) for f in written(conn)]
    assert [f.position for f in acks if f.kind is sessionframe.Kind.ACK] == [3]
    node.sessions.acknowledge_now([conn])
    assert len(written(conn)) == len(acks), "nothing owed: nothing written"


async def test_an_acknowledgement_ahead_of_what_was_written_trims_no_further() -> None:
    node = Node()
    conn = await node.session_socket("S1")
    assert conn.session is not None
    await node.send_to_a(1)
    await node.send_to_a(2)
    await asyncio.sleep(0.01)
    assert [p for p, _ in numbered(conn)] == [1, 2]
    node.sessions.proxy_ack(conn, 50)  # ahead of anything written to it
    await node.send_to_a(3)  # kept before the trim is passed on
    await asyncio.sleep(ACK_DELAY)
    assert [p for p, _ in await node.broker.read_session("a", 0)] == [3]
    assert [p for p, _ in numbered(conn)] == [1, 2, 3]
    assert node.counted("acked_ahead") == 1


class FlakyReleases(MemoryBroker):
    """The in-process broker, its first releases failing as a Redis out of reach does
    (or a Redis Cluster migrating the session's slot)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.released: list[tuple[list[tuple[str, str]], float]] = []

    async def release_sessions(self, items: Sequence[tuple[str, str]], window: float) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis cluster: ClusterError: TTL exhausted.")
        self.released.append((list(items), window))
        await super().release_sessions(items, window)


async def test_a_release_that_failed_is_tried_again_for_what_is_left_of_the_window() -> None:
    """Unreleased, an ended socket's session is held for good: it never expires, and a
    resume long past the window said recovered instead of gap."""
    broker = FlakyReleases(failures=2)
    node = Node(broker)
    conn = await node.session_socket("S1")
    await node.sessions.ended(conn, held=True)
    assert node.sessions.sizes()["unreleased"] == 1
    await asyncio.sleep(0.5 + 1.0 + 0.3)  # two tries again: the first fails
    assert node.sessions.sizes()["unreleased"] == 0
    ((items, window),) = broker.released
    assert items == [("a", conn.id)]
    assert LIMITS.window - 2.0 < window < LIMITS.window - 1.4


class NowaitBroker(MemoryBroker):
    """The in-process broker with the trim the raw Redis connection sends at once."""

    def ack_session_nowait(self, agent: str, session: str, position: int) -> bool:
        asyncio.get_running_loop().create_task(self.ack_sessions([(agent, session, position)]))
        return True


def nowait_node() -> Node:
    """A node whose broker passes trims on at once, as the Redis broker does."""
    node = Node()
    node.broker = NowaitBroker()
    node.broker.keep_for_sessions(LIMITS)
    node.sessions._broker = node.broker
    node.broker.set_handlers(node._on_message, lambda up: None)
    return node


async def test_a_proxys_acknowledgement_trims_at_once_and_closer_ones_later() -> None:
    """Passed on to Redis as it comes (held for a tick, every session's went out in
    one burst); one closer than TRIM_SPACING to its session's last waits: the first
    acknowledgement after the spacing passes it on, or else a tick a little later
    (a proxy acknowledging inline does so with nearly every message: a trim for
    each would cost Redis more than the messages)."""
    node = nowait_node()
    conn = await node.session_socket("S1")
    for seq in range(1, 6):
        await node.send_to_a(seq)
    await asyncio.sleep(0.01)

    async def kept() -> list[int]:
        await asyncio.sleep(0)  # the trim's task
        return [p for p, _ in await node.broker.read_session("a", 0)]

    node.sessions.proxy_ack(conn, 1)
    assert await kept() == [2, 3, 4, 5], "at once, no tick waited for"
    node.sessions.proxy_ack(conn, 2)
    node.sessions.proxy_ack(conn, 3)
    assert await kept() == [2, 3, 4, 5], "within the spacing of the last: held"
    assert node.sessions.sizes()["trims_due"] == 1
    assert conn.session is not None
    conn.session.trimmed_at -= TRIM_SPACING  # the spacing has passed, and no tick yet
    node.sessions.proxy_ack(conn, 4)
    assert await kept() == [5], "the first after the spacing: at once, with what was held"
    assert node.sessions.sizes()["trims_due"] == 0
    node.sessions.proxy_ack(conn, 5)  # and no more come: the tick passes it on
    assert await kept() == [5]
    await asyncio.sleep(TRIM_SPACING + ACK_TICK * 2)
    assert await kept() == []
    assert node.sessions.sizes()["trims_due"] == 0


async def test_the_tick_wakes_when_something_falls_due_not_every_tick() -> None:
    """A proxy acknowledging with every message keeps a trim waiting for its spacing:
    the node's tick runs when it falls due (and when an acknowledgement to the proxy
    does), not every ACK_TICK to find nothing (twenty wake-ups a second per node)."""
    node = nowait_node()
    conn = await node.session_socket("S1")
    ticks = 0
    on_tick = node.sessions._on_tick

    def counted() -> None:
        nonlocal ticks
        ticks += 1
        on_tick()

    node.sessions._on_tick = counted  # type: ignore[method-assign]
    window = TRIM_SPACING * 1.5
    started = asyncio.get_running_loop().time()
    seq = 0
    while asyncio.get_running_loop().time() - started < window:
        seq += 1
        await node.send_to_a(seq)
        await asyncio.sleep(ACK_TICK / 2)
        node.sessions.proxy_ack(conn, seq)
    await asyncio.sleep(TRIM_SPACING + ACK_TICK * 2)
    # One trim at once, one after the spacing (with an acknowledgement), the last by
    # the tick; at most a few wake-ups around them, against window / ACK_TICK.
    assert ticks <= 4, ticks
    assert [p for p, _ in await node.broker.read_session("a", 0)] == []
    assert node.sessions.sizes()["trims_due"] == 0


async def settled(node: Node, count: int) -> None:
    """Until ``count`` publish outcomes have come back (each settles its position)."""
    await until(lambda: len(node.outcomes) >= count, step=0.001, what="the publish outcomes")


async def test_what_a_proxy_taking_inline_acks_is_owed_rides_on_its_next_message() -> None:
    """Settled positions are acknowledged on the next message written to the socket,
    not by a frame of their own; with nothing to write they go in a frame when due.
    A socket that did not ask gets plain messages and acknowledgement frames."""
    node = Node()
    inline = await node.session_socket("S1", inline_acks=True)
    b = connection("b", "a", conn_id="c-b")
    node.holders["b"] = b
    node.claims.seen("b", b.id)
    for position in (1, 2):
        node.relay.route(inline, sessionframe.message(position, encode(task_request("a", "b", 1))))
    await settled(node, 2)  # the acknowledgement not yet due
    await node.send_to_a(7)
    await asyncio.sleep(0.01)
    frames = list(map(sessionframe.decode, written(inline)))
    assert [(f.kind, f.position, f.acked) for f in frames] == [(sessionframe.Kind.MESSAGE, 1, 2)]
    assert written(inline)[0][0] == 4
    await asyncio.sleep(ACK_DELAY * 1.5)
    assert len(written(inline)) == 1, "nothing owed: no acknowledgement frame"
    assert node.sessions.sizes()["acks_due"] == 0, "the tick dropped the socket"
    await node.send_to_a(8)  # nothing settled since: a plain message
    node.relay.route(inline, sessionframe.message(3, encode(task_request("a", "b", 1))))
    await asyncio.sleep(ACK_DELAY * 1.5)
    frames = list(map(sessionframe.decode, written(inline)))
    assert [(f.kind, f.position, f.acked) for f in frames[1:]] == [
        (sessionframe.Kind.MESSAGE, 2, 0),
        (sessionframe.Kind.ACK, 3, 0),
    ]

    plain = Node()
    conn = await plain.session_socket("S2")
    plain.holders["b"] = b
    plain.claims.seen("b", b.id)
    plain.relay.route(conn, sessionframe.message(1, encode(task_request("a", "b", 1))))
    await settled(plain, 1)
    await plain.send_to_a(7)
    await asyncio.sleep(ACK_DELAY * 1.5)
    assert [data[0] for data in written(conn)] == [1, 3]


async def test_a_proxys_message_with_an_acknowledgement_is_relayed_and_trims() -> None:
    node = Node()
    conn = await node.session_socket("S1", inline_acks=True)
    b = connection("b", "a", conn_id="c-b")
    node.holders["b"] = b
    node.claims.seen("b", b.id)
    for seq in (1, 2, 3):
        await node.send_to_a(seq)
    await asyncio.sleep(0.01)
    message = encode(task_request("a", "b", 1))
    node.relay.route(conn, sessionframe.message_acked(1, 2, message))
    await asyncio.sleep(TRIM_SPACING + ACK_TICK * 2)
    assert node.outcomes == [0], "relayed (b has no socket here)"
    assert [p for p, _ in await node.broker.read_session("a", 0)] == [3]
    # Out of range: dropped as malformed, nothing acknowledged or relayed.
    node.relay.route(conn, sessionframe.message_acked(2, 0, message))
    await asyncio.sleep(0.01)
    assert node.outcomes == [0]
    dropped = node.metrics.registry.get_sample_value(
        "bushub_messages_dropped_total", {"reason": "malformed"}
    )
    assert dropped == 1


async def test_a_position_past_two_to_the_53_is_dropped_and_wedges_nothing() -> None:
    """The relay frame carries a sender's position as a float64: 2**53 + 1 was relayed
    as 2**53, so every later message of the session read as relayed already (-1, not
    delivered), and its outcome never settled the position routed, so every later one
    waited behind it for an acknowledgement, its settling cost growing with each."""
    node = Node()
    conn = await node.session_socket("S1")
    b = connection("b", "a", conn_id="c-b")
    node.holders["b"] = b
    node.claims.seen("b", b.id)
    message = encode(task_request("a", "b", 1))
    node.relay.route(conn, sessionframe.message(sessionframe.MAX_POSITION + 1, message))
    for position in (1, 2, 3):
        node.relay.route(conn, sessionframe.message(position, message))
    await asyncio.sleep(ACK_DELAY * 1.5)
    assert len(node.outcomes) == 3  # the three relayed (b has no socket here: 0 each)
    acks = [
        f.position
        for f in map(sessionframe.decode, written(conn))
        if f.kind is sessionframe.Kind.ACK
    ]
    assert acks == [3]
    assert conn.session is not None and conn.session.outstanding == []
    dropped = node.metrics.registry.get_sample_value(
        "bushub_messages_dropped_total", {"reason": "malformed"}
    )
    assert dropped == 1


def test_kept_frames_carry_their_position() -> None:
    data = pack_stored(7, relay_frame(1))
    assert unpack_relay(data).position == 7
    assert unpack_relay(relay_frame(1)).position == 0


async def test_after_a_broker_break_what_the_stream_kept_is_delivered() -> None:
    node = Node()
    conn = await node.session_socket("S1")
    # Kept while this node's subscription was broken: never delivered live.
    for seq in (1, 2):
        data, _ = node.broker._kept().deliver("a", relay_frame(seq))
        assert data is not None
    assert numbered(conn) == []
    node.sessions.broker_back()
    await asyncio.sleep(0.01)
    assert numbered(conn) == [(1, 1), (2, 2)]


async def test_a_copy_sent_again_unnumbered_is_dropped_if_delivered_kept_before() -> None:
    """After Redis lost a session's stream, copies of what was published just before
    the break come unnumbered; one this node delivered (kept, at a position) is
    recognised by the relay frame inside and not written twice."""
    node = Node()
    conn = await node.session_socket("S1")
    first, second = relay_frame(1), relay_frame(2)
    node.relay.deliver("a", pack_stored(1, first))
    node.relay.deliver("a", as_resent(first))
    node.relay.deliver("a", as_resent(second))
    frames = list(map(sessionframe.decode, written(conn)))
    kinds = [(frame.kind, frame.position) for frame in frames if b"Registry" not in frame.payload]
    assert kinds == [(sessionframe.Kind.MESSAGE, 1), (sessionframe.Kind.UNNUMBERED, 0)]
    assert json.loads(frames[-1].payload)["__data__"]["payload"]["seq"] == 2
    duplicate = node.metrics.registry.get_sample_value(
        "bushub_resent_total", {"outcome": "duplicate"}
    )
    assert duplicate == 1


async def test_only_a_message_redis_should_have_kept_counts_as_unkept() -> None:
    """An unnumbered frame on a session socket is expected for a bridged frame sent
    transient and for a copy sent again after a break; any other one says Redis did
    not know the session (counted, and the session put back)."""
    node = Node()
    conn = await node.session_socket("S1")
    payload = encode(task_request("b", "a", 1))
    node.relay.deliver("a", pack_relay(Format.JSON, 1.0, payload, transient=True))
    node.relay.deliver("a", as_resent(relay_frame(2)))
    assert node.counted("unkept") == 0
    node.relay.deliver("a", relay_frame(3))
    node.relay.deliver("a", relay_frame(4))
    assert node.counted("unkept") == 2
    await asyncio.sleep(0.01)  # the put-back (the in-process broker lost nothing)
    kinds = [sessionframe.decode(f).kind for f in written(conn) if b"Registry" not in f]
    assert kinds == [sessionframe.Kind.UNNUMBERED] * 4, "each delivered as it came"


async def test_transient_frames_are_not_kept_for_an_away_session() -> None:
    node = Node()
    conn = await node.session_socket("S1")
    del node.holders["a"]
    await node.broker.unsubscribe(message_channel("a"))
    await node.sessions.ended(conn, held=True)
    payload = encode(task_request("b", "a", 1))
    transient = pack_relay(Format.JSON, 1.0, payload, transient=True)
    [count] = await node.broker.publish_many([(message_channel("a"), transient)])
    assert count == 0, "published as is: nobody there, not kept"
    assert await node.send_to_a(2) == -2
    back = await node.session_socket("S1")
    assert [seq for _, seq in numbered(back)] == [2]


def test_the_transient_bit_leaves_the_format_readable() -> None:
    payload = encode(task_request("b", "a", 1))
    for frame in (
        pack_relay(Format.MSGPACK, 2.0, payload, transient=True),
        pack_session_relay(Format.MSGPACK, 2.0, payload, b"a S1", 3, transient=True),
    ):
        relay = unpack_relay(frame)
        assert relay.fmt is Format.MSGPACK and relay.payload == payload


async def resumed_unstarted(node: Node, session: str) -> Connection:
    """A socket of ``session`` resumed from position 0, its replay not yet written
    (``started`` not yet called): live messages meanwhile are held."""
    conn = connection("a", "b", conn_id=f"c-{session}-back")
    conn.session = Session(session, 0)
    node.holders["a"] = conn
    node.claims.seen("a", conn.id)
    await node.broker.subscribe(message_channel("a"))
    await node.sessions.resume(conn)
    return conn


@pytest.mark.parametrize("burst", [REPLAY_PAGE + 44, 280])
async def test_a_replay_the_bounds_overtake_ends_and_counts_what_went(burst: int) -> None:
    """A burst for the agent between the resume and its pages trims what the replay
    was to read: the replay read the same page for good (every kept position up to
    the resume's newest gone), or skipped the trimmed ones uncounted."""
    bound = REPLAY_PAGE + 44
    node = Node(limits=SessionLimits(window=60.0, messages=bound, bytes=1 << 26))
    await away_with(node, await node.session_socket("S1"), bound)
    reads = yielding_reads(node)
    conn = await resumed_unstarted(node, "S1")  # its page: 1..256, newest 300
    for seq in range(bound + 1, bound + burst + 1):
        await node.send_to_a(seq)  # kept (the oldest trimmed), and held live
    await asyncio.sleep(0.01)
    node.sessions.started(conn)
    session = conn.session
    assert session is not None
    await until(lambda: not session.replaying, what="the replay done")
    trimmed = range(REPLAY_PAGE + 1, burst + 1)  # gone before the pages were read
    assert [p for p, _ in numbered(conn)] == [
        p for p in range(1, bound + burst + 1) if p not in trimmed
    ]
    assert node.counted("lost") == len(trimmed)
    assert len(reads) == 1, reads


async def test_a_session_put_back_during_a_replay_numbers_after_what_is_to_come() -> None:
    """Redis lost the session between two pages (a restart, a failover): put back
    numbering after the socket's newest written, new messages took positions the
    replay had still to give, and were dropped as duplicates."""
    node = Node(limits=SessionLimits(window=60.0, messages=10_000, bytes=1 << 26))
    kept = 2 * REPLAY_PAGE + 88
    await away_with(node, await node.session_socket("S1"), kept)
    asked: list[int] = []

    async def reassert(agent: str, session: str, epoch: str, conn: str, delivered: int) -> Any:
        asked.append(delivered)
        return Reasserted.HELD

    node.broker.reassert_session = reassert  # type: ignore[method-assign]
    read_session = node.broker.read_session

    async def read(agent: str, after: int, most: int | None = None) -> list[tuple[int, bytes]]:
        if after == REPLAY_PAGE:
            node.sessions.broker_back()  # the broker came back: sessions re-asserted
            await until(lambda: bool(asked), what="the re-assert")
        return await read_session(agent, after, most)

    node.broker.read_session = read  # type: ignore[method-assign]
    conn = await resumed_unstarted(node, "S1")
    node.sessions.started(conn)
    await until(lambda: len(numbered(conn)) == kept, what="the replay")
    assert asked == [kept], "numbered after what the replay was to give"
    assert conn.session is not None and conn.session.newest_known() == kept


async def test_a_hole_is_filled_up_to_the_live_messages_held_not_past_them() -> None:
    """Filling a hole, a node read the whole stream: from a Redis that had lost the
    stream and been put back numbering after the held messages, it wrote what came
    since before them, and dropped them as duplicates."""
    node = Node()
    conn = await given_live(node, 1, 2)
    kept = node.broker._kept()
    for seq in (3, 4):  # kept, but their live copies never reached this node
        assert kept.deliver("a", relay_frame(seq))[0] is not None
    # Redis loses the stream; put back, it numbers after 6: what it keeps then.
    since = [(p, kept.deliver("a", relay_frame(p))[0]) for p in (5, 6, 7, 8)][2:]

    async def lost_then_put_back(
        agent: str, after: int, most: int | None = None
    ) -> list[tuple[int, bytes]]:
        return [(p, data) for p, data in since if p > after and data is not None]

    node.broker.read_session = lost_then_put_back  # type: ignore[method-assign]
    node.relay.deliver("a", pack_stored(5, relay_frame(5)))  # a hole: held, filled
    node.relay.deliver("a", pack_stored(6, relay_frame(6)))
    await until(lambda: conn.session is not None and not conn.session.replaying, what="fill")
    assert numbered(conn) == [(1, 1), (2, 2), (5, 5), (6, 6)]
    assert node.counted("lost") == 2
    assert node.counted("duplicate") == 0
