"""ReconnectingLink with sessions, against a small fake hub on a real loopback socket.

The fake hub answers each handshake with a scripted ``bushub-resume`` header (or none,
as an older hub or a stock server proxy does), records every frame it receives per
connection, and sends, acknowledges or drops the connection when a test says so.
"""

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from busclient.reconnecting import (
    Disconnect,
    Framing,
    OutboundBuffer,
    ReconnectingLink,
    ReconnectPolicy,
)
from busclient.session import ACK_DELAY, ACK_EVERY
from buswire import sessionframe
from buswire.sessionframe import Kind
from tests.support import waiting
from tests.support.waiting import TIMEOUT

FAST = ReconnectPolicy(initial_delay=0.02, max_delay=0.05, jitter=0.0, max_elapsed=5.0)


async def until(predicate: Callable[[], bool]) -> None:
    """Wait for ``predicate`` to hold; fail the test after the suites' TIMEOUT."""
    await waiting.until(predicate, TIMEOUT, step=0.005, what="the condition")


@dataclass
class FakeHub:
    """A hub that speaks (or, with a None header, does not speak) sessions."""

    headers: list[str | None]  # the bushub-resume value per handshake; the last repeats
    queries: list[dict[str, str]] = field(default_factory=list)
    connections: list[ServerConnection] = field(default_factory=list)
    received: list[list[bytes | str]] = field(default_factory=list)  # per connection
    server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws/a?peer=b"

    @property
    def current(self) -> ServerConnection:
        return self.connections[-1]

    def frames(self, connection: int = -1) -> list[sessionframe.SessionFrame]:
        """What one connection received, decoded (session sockets only)."""
        received = self.received[connection]
        assert all(isinstance(data, bytes) for data in received), "a text frame on a session"
        return [sessionframe.decode(data) for data in received if isinstance(data, bytes)]

    def messages(self, connection: int = -1) -> list[tuple[int, bytes]]:
        return [(f.position, f.payload) for f in self.frames(connection) if f.kind is Kind.MESSAGE]

    def acks(self, connection: int = -1) -> list[int]:
        return [f.position for f in self.frames(connection) if f.kind is Kind.ACK]

    async def send(self, data: bytes) -> None:
        await self.current.send(data)

    def drop(self) -> None:
        """End the connection with no close frame, as a killed node does."""
        self.current.transport.abort()

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        index = len(self.queries)
        self.queries.append(dict(parse_qsl(urlsplit(request.path).query)))
        value = self.headers[min(index, len(self.headers) - 1)]
        if value is not None:
            response.headers[sessionframe.RESUME_HEADER] = value

    async def _handler(self, ws: ServerConnection) -> None:
        frames: list[bytes | str] = []
        self.received.append(frames)
        self.connections.append(ws)
        try:
            async for data in ws:
                frames.append(data)
        except ConnectionClosed:
            pass


@pytest.fixture
async def make_hub() -> AsyncIterator[Callable[..., Any]]:
    servers: list[Server] = []

    async def start(*headers: str | None) -> FakeHub:
        hub = FakeHub(list(headers))
        hub.server = await serve(
            hub._handler, "127.0.0.1", 0, process_response=hub._process_response
        )
        servers.append(hub.server)
        return hub

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


class Recorder:
    """The hooks of a proxy, recording what reaches them."""

    def __init__(self) -> None:
        self.frames: list[bytes | str] = []
        self.resumes: list[tuple[str, str]] = []
        self.lost: list[bool] = []
        self.connects = 0
        self.gave_up: list[Disconnect] = []
        self.link: ReconnectingLink | None = None

    async def link_connected(self, websocket: ClientConnection, first: bool, attempts: int) -> None:
        self.connects += 1

    async def link_resumed(self, result: str, epoch: str) -> None:
        assert self.link is not None
        self.resumes.append((result, epoch))
        self.lost.append(self.link.stats.last_resume_lost)

    async def link_frame(self, data: bytes | str) -> None:
        self.frames.append(data)

    async def link_reconnecting(self, disconnect: Disconnect, attempt: int, delay: float) -> None:
        pass

    async def link_gave_up(
        self, websocket: ClientConnection | None, disconnect: Disconnect, reason: str
    ) -> None:
        self.gave_up.append(disconnect)


@pytest.fixture
async def make_link() -> AsyncIterator[Callable[..., Any]]:
    running: list[tuple[ReconnectingLink, asyncio.Task[None]]] = []

    def start(hub: FakeHub, **kwargs: Any) -> tuple[ReconnectingLink, Recorder]:
        hooks = Recorder()
        kwargs.setdefault("session", True)
        kwargs.setdefault("policy", FAST)
        link = ReconnectingLink(hub.url, hooks, rng=random.Random(0), **kwargs)
        hooks.link = link
        link.start()
        running.append((link, asyncio.create_task(link.run())))
        return link, hooks

    yield start
    for link, task in running:
        await link.close()
        await asyncio.wait_for(task, TIMEOUT)


async def test_the_handshake_names_the_session_and_what_was_received(
    make_hub: Any, make_link: Any
) -> None:
    hub = await make_hub("new e1", "recovered e1")
    link, hooks = make_link(hub)
    await until(lambda: link.connected)
    session_id = link.stats.session_id
    assert hub.queries[0] == {
        "peer": "b",
        "session": session_id,
        "received": "0",
        "acks": "inline",
    }
    assert hooks.resumes == [("new", "e1")] and hooks.lost == [False]
    await hub.send(sessionframe.message(1, b"x"))
    await hub.send(sessionframe.message(2, b"y"))
    await until(lambda: len(hooks.frames) == 2)
    hub.drop()
    await until(lambda: len(hub.queries) == 2 and link.connected)
    assert hub.queries[1]["received"] == "2"
    assert hooks.resumes[1] == ("recovered", "e1") and link.stats.resumes == 1


async def test_frames_go_out_framed_with_positions(make_hub: Any, make_link: Any) -> None:
    hub = await make_hub("new e1")
    link, _ = make_link(hub)
    await link.send(b"held")  # before the socket opens: logged, sent at position 1
    await until(lambda: link.connected)
    await link.send(b"a")
    await link.send(b"b")
    await until(lambda: len(hub.received[0]) == 3)
    assert hub.messages(0) == [(1, b"held"), (2, b"a"), (3, b"b")]
    assert all(isinstance(data, bytes) for data in hub.received[0])
    assert link.stats.unacked == 3


async def test_unacknowledged_messages_are_resent_with_their_positions(
    make_hub: Any, make_link: Any
) -> None:
    hub = await make_hub("new e1", "recovered e1")
    link, _ = make_link(hub)
    await until(lambda: link.connected)
    for payload in (b"a", b"b", b"c"):
        await link.send(payload)
    await until(lambda: len(hub.received[0]) == 3)
    await hub.send(sessionframe.ack(1))
    await until(lambda: link.stats.unacked == 2)
    hub.drop()  # b and c may or may not have been relayed: the hub did not say
    await until(lambda: len(hub.connections) == 2 and link.connected)
    await link.send(b"d")
    await until(lambda: len(hub.received[1]) == 3)
    assert hub.messages(1) == [(2, b"b"), (3, b"c"), (4, b"d")]  # a was acknowledged
    assert link.stats.resent == 2
    await hub.send(sessionframe.ack(4))
    await until(lambda: link.stats.unacked == 0)


async def test_a_position_taken_already_is_not_handed_on_twice(
    make_hub: Any, make_link: Any
) -> None:
    hub = await make_hub("new e1", "recovered e1")
    link, hooks = make_link(hub)
    await until(lambda: link.connected)
    await hub.send(sessionframe.message(1, b"one"))
    await hub.send(sessionframe.message(2, b"two"))
    await hub.send(sessionframe.message(2, b"two"))
    await hub.send(sessionframe.unnumbered(b"announce"))
    await until(lambda: len(hooks.frames) == 3)
    hub.drop()
    await until(lambda: len(hub.connections) == 2 and link.connected)
    # The replay overlaps what was taken before the drop.
    await hub.send(sessionframe.message(2, b"two"))
    await hub.send(sessionframe.message(3, b"three"))
    await until(lambda: len(hooks.frames) == 4)
    assert hooks.frames == [b"one", b"two", b"announce", b"three"]
    assert link.stats.duplicates == 2


async def test_what_was_taken_is_acknowledged(make_hub: Any, make_link: Any) -> None:
    hub = await make_hub("new e1")
    link, hooks = make_link(hub)
    await until(lambda: link.connected)
    await hub.send(sessionframe.message(1, b"x"))
    await until(lambda: hub.acks(0) == [1])  # the timer: nothing more came
    for position in range(2, ACK_EVERY + 6):
        await hub.send(sessionframe.message(position, b"x"))
    await until(lambda: len(hooks.frames) == ACK_EVERY + 5)
    await until(lambda: hub.acks(0)[-1:] == [ACK_EVERY + 5])
    assert ACK_EVERY + 1 in hub.acks(0)  # 64 after the first ack, at once


async def test_to_a_hub_that_takes_them_acknowledgements_ride_on_messages(
    make_hub: Any, make_link: Any
) -> None:
    """What was taken goes with the next message sent, and no frame of its own follows
    (the receive timer finds it acknowledged); taken and not followed by a send, it is
    acknowledged by a frame when due, as to any hub."""
    hub = await make_hub("new e1 120 acks=inline")
    link, hooks = make_link(hub)
    await until(lambda: link.connected)
    await hub.send(sessionframe.message(1, b"x"))
    await hub.send(sessionframe.message(2, b"y"))
    await until(lambda: len(hooks.frames) == 2)
    await link.send(b"reply")
    await until(lambda: len(hub.received[0]) == 1)
    [frame] = hub.frames(0)
    assert (frame.kind, frame.position, frame.acked, frame.payload) == (
        Kind.MESSAGE,
        1,
        2,
        b"reply",
    )
    await link.send(b"more")  # nothing new taken: no acknowledgement on it
    await until(lambda: len(hub.received[0]) == 2)
    assert hub.frames(0)[1].acked == 0 and hub.received[0][1][0] == 1
    await asyncio.sleep(ACK_DELAY * 1.5)
    assert hub.acks(0) == [], "the acknowledgement was on the message"
    await hub.send(sessionframe.message(3, b"z"))
    await until(lambda: hub.acks(0) == [3])  # nothing sent: a frame of its own


async def test_to_an_older_hub_acknowledgements_are_frames_of_their_own(
    make_hub: Any, make_link: Any
) -> None:
    """A hub that did not say ``acks=inline`` would drop a message carrying one as
    malformed: it gets plain messages and acknowledgement frames."""
    hub = await make_hub("new e1 120")
    link, hooks = make_link(hub)
    await until(lambda: link.connected)
    await hub.send(sessionframe.message(1, b"x"))
    await until(lambda: len(hooks.frames) == 1)
    await link.send(b"reply")
    await until(lambda: hub.acks(0) == [1])
    assert all(data[0] in (1, 3) for data in hub.received[0])
    assert hub.messages(0) == [(1, b"reply")]


async def test_an_acknowledgement_riding_on_a_message_from_the_hub_empties_the_log(
    make_hub: Any, make_link: Any
) -> None:
    hub = await make_hub("new e1 120 acks=inline")
    link, hooks = make_link(hub)
    await until(lambda: link.connected)
    for payload in (b"a", b"b", b"c"):
        await link.send(payload)
    await until(lambda: len(hub.received[0]) == 3)
    assert link.stats.unacked == 3
    await hub.send(sessionframe.message_acked(1, 2, b"answer"))
    await until(lambda: link.stats.unacked == 1)
    assert hooks.frames == [b"answer"]


async def test_a_gap_fires_the_hook_and_starts_numbering_again(
    make_hub: Any, make_link: Any
) -> None:
    hub = await make_hub("new e1", "gap e2")
    link, hooks = make_link(hub)
    await until(lambda: link.connected)
    await hub.send(sessionframe.message(7, b"x"))
    await until(lambda: len(hooks.frames) == 1)
    hub.drop()
    await until(lambda: len(hub.connections) == 2 and link.connected)
    assert hooks.resumes == [("new", "e1"), ("gap", "e2")]
    assert hooks.lost == [False, True] and link.stats.gaps == 1
    await hub.send(sessionframe.message(1, b"y"))  # below 7, yet new in the new epoch
    await until(lambda: len(hooks.frames) == 2)
    assert link.stats.duplicates == 0


async def test_new_after_having_received_counts_as_a_gap(make_hub: Any, make_link: Any) -> None:
    hub = await make_hub("new e1", "new e2")
    link, hooks = make_link(hub)
    await until(lambda: link.connected)
    await hub.send(sessionframe.message(1, b"x"))
    await until(lambda: len(hooks.frames) == 1)
    hub.drop()
    await until(lambda: len(hub.connections) == 2 and link.connected)
    assert hooks.lost == [False, True] and link.stats.gaps == 1


async def test_a_malformed_frame_is_dropped_and_the_socket_goes_on(
    make_hub: Any, make_link: Any
) -> None:
    hub = await make_hub("new e1")
    link, hooks = make_link(hub)
    await until(lambda: link.connected)
    await hub.send(b"\x09junk")
    await hub.send(b"\x01\x00")
    await hub.current.send("text")
    await hub.send(sessionframe.message(1, b"ok"))
    await until(lambda: hooks.frames == [b"ok"])
    assert link.stats.connects == 1


async def test_a_full_log_waits_for_an_ack(make_hub: Any, make_link: Any) -> None:
    hub = await make_hub("new e1")
    link, _ = make_link(hub, buffer=OutboundBuffer(max_messages=2))
    await until(lambda: link.connected)
    await link.send(b"a")
    await link.send(b"b")
    blocked = asyncio.create_task(link.send(b"c"))
    with pytest.raises(TimeoutError):  # a full log and no ack: the send waits
        await asyncio.wait_for(asyncio.shield(blocked), 0.2)
    await hub.send(sessionframe.ack(1))
    await asyncio.wait_for(blocked, TIMEOUT)
    await until(lambda: len(hub.received[0]) == 3)
    assert hub.messages(0) == [(1, b"a"), (2, b"b"), (3, b"c")]
    assert link.stats.overflowed == 0 and link.stats.unacked == 2


async def test_a_full_log_without_acks_drops_the_oldest_after_open_timeout(
    make_hub: Any, make_link: Any
) -> None:
    hub = await make_hub("new e1", "recovered e1")
    link, _ = make_link(hub, buffer=OutboundBuffer(max_messages=2), open_timeout=0.3)
    await until(lambda: link.connected)
    await link.send(b"a")
    await link.send(b"b")
    await asyncio.wait_for(link.send(b"c"), TIMEOUT)
    assert link.stats.overflowed == 1 and link.stats.unacked == 2
    hub.drop()
    await until(lambda: len(hub.connections) == 2 and len(hub.received[1]) == 2)
    assert hub.messages(1) == [(2, b"b"), (3, b"c")]


async def test_while_away_a_full_log_drops_the_oldest(make_hub: Any, make_link: Any) -> None:
    hub = await make_hub("new e1", "recovered e1")
    policy = ReconnectPolicy(initial_delay=0.3, max_delay=0.3, jitter=0.0)
    link, _ = make_link(hub, buffer=OutboundBuffer(max_messages=3))
    link.policy = policy
    await until(lambda: link.connected)
    hub.drop()
    await until(lambda: not link.connected)
    for payload in (b"a", b"b", b"c", b"d"):
        await link.send(payload)  # no waiting while away
    assert link.stats.overflowed == 1
    await until(lambda: len(hub.connections) == 2 and len(hub.received[1]) == 3)
    assert hub.messages(1) == [(2, b"b"), (3, b"c"), (4, b"d")]


async def test_a_server_without_sessions_gets_plain_frames(make_hub: Any, make_link: Any) -> None:
    hub = await make_hub(None)
    link, hooks = make_link(hub)
    await link.send(b"early")  # held before the socket opens, sent unframed
    await until(lambda: link.connected)
    assert link.framing is Framing.PLAIN and hooks.resumes == []
    await link.send(b"live")
    await hub.send(b"\x01not a session frame")
    await until(lambda: len(hub.received[0]) == 2 and len(hooks.frames) == 1)
    assert hub.received[0] == [b"early", b"live"]
    assert hooks.frames == [b"\x01not a session frame"]
    assert link.stats.unacked == 0 and link.stats.flushed == 1 and link.stats.sent == 1


async def test_without_the_session_option_the_url_is_unchanged(
    make_hub: Any, make_link: Any
) -> None:
    hub = await make_hub("new e1")  # even a session hub gets plain frames
    link, hooks = make_link(hub, session=False)
    await until(lambda: link.connected)
    assert hub.queries == [{"peer": "b"}]
    assert link.framing is Framing.PLAIN and hooks.resumes == []
    assert link.stats.session_id is None
    await link.send(b"plain")
    await until(lambda: hub.received[0] == [b"plain"])


async def test_the_largest_message_a_hub_writes_by_default_is_taken(
    make_hub: Any, make_link: Any
) -> None:
    """A message of --max-message-bytes' default (1 MiB) with a session head on it:
    past websockets' default limit, it failed the connection, and the resume gave it
    again, for good."""
    hub = await make_hub("new e1")
    link, hooks = make_link(hub)
    await until(lambda: link.connected)
    # As large as the largest head (an acknowledgement riding on it) would make it.
    largest = bytes((1 << 20) + sessionframe.ACKED_HEAD - sessionframe.MESSAGE_HEAD)
    await hub.send(sessionframe.message(1, largest))
    await until(lambda: len(hooks.frames) == 1)
    assert hooks.frames == [largest] and link.connected


async def test_a_frame_over_the_links_limit_is_final_not_a_dropped_connection(
    make_hub: Any, make_link: Any
) -> None:
    """Taken for a dropped connection (1006), it was asked for again on every resume."""
    hub = await make_hub("new e1")
    link, hooks = make_link(hub, connect_kwargs={"max_size": 1000})
    await until(lambda: link.connected)
    await hub.send(sessionframe.message(1, bytes(2000)))
    await until(lambda: hooks.gave_up != [])
    assert hooks.gave_up[0].code == 1009 and len(hub.queries) == 1


@pytest.mark.parametrize(
    ("url", "environment"),
    [
        ("http://127.0.0.1:1/ws/a?peer=b", {}),  # not a ws:// or wss:// URL
        ("ws://127.0.0.1:1/ws/a?peer=b", {"http_proxy": "ftp://127.0.0.1:9", "no_proxy": ""}),
    ],
)
async def test_a_url_or_proxy_that_cannot_work_gives_up_through_the_hooks(
    url: str, environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """websockets' InvalidURI and InvalidProxy are not handshake errors: they escaped
    ``run`` (the agent's task died with them), and no hook heard of it."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    hooks = Recorder()
    link = ReconnectingLink(url, hooks, policy=FAST, rng=random.Random(0), session=True)
    hooks.link = link
    await asyncio.wait_for(link.run(), TIMEOUT)
    assert len(hooks.gave_up) == 1 and hooks.gave_up[0].fatal
    assert link.stats.gave_up is not None and not link.running


class ShiftedClock:
    """``time.monotonic`` moved on by ``shift`` seconds: a long time away, at once."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.shift


async def test_what_was_held_past_the_window_is_sent_not_dropped(
    make_hub: Any, make_link: Any
) -> None:
    """Never written, it cannot have been relayed, so it cannot be relayed twice: it
    was dropped with what was written longer ago than the hub remembers relays, and
    reported as lost (with sessions off the same message went through)."""
    hub = await make_hub("new e1 2 acks=inline")
    clock = ShiftedClock()
    link, hooks = make_link(hub, clock=clock)
    await link.send(b"held")  # before the first socket: held
    clock.shift = 10.0  # past the hub's window of 2 s before it is written
    await until(lambda: link.connected and len(hub.received[0]) == 1)
    assert hub.messages(0) == [(1, b"held")]
    assert hooks.lost == [False] and link.stats.session is not None
    assert link.stats.session.log.expired == 0


async def test_what_was_written_longer_ago_than_the_window_is_not_sent_again(
    make_hub: Any, make_link: Any
) -> None:
    """The hub may have relayed it and no longer remembers: a resend could relay it
    twice, so it is given up, and the next handshake tells the hub (its answer a gap,
    its peers told anew); the one after that does not tell it again."""
    hub = await make_hub(
        "new e1 2 acks=inline", "gap e2 2 acks=inline", "recovered e2 2 acks=inline"
    )
    clock = ShiftedClock()
    link, hooks = make_link(hub, clock=clock)
    await until(lambda: link.connected)
    await link.send(b"written")
    await until(lambda: len(hub.received[0]) == 1)
    clock.shift = 10.0
    hub.drop()
    await until(lambda: len(hooks.resumes) == 2)
    assert hub.queries[1]["sent_lost"] == "1" and "sent_lost" not in hub.queries[0]
    await link.send(b"after")
    await until(lambda: len(hub.received) == 2 and len(hub.received[1]) == 1)
    assert hub.messages(1) == [(2, b"after")], "not sent again"
    assert hooks.lost == [False, True]
    assert link.stats.session is not None and link.stats.session.log.expired == 1
    hub.drop()
    await until(lambda: len(hooks.resumes) == 3)
    assert "sent_lost" not in hub.queries[2], "told once"


async def test_sends_given_up_over_the_logs_bound_are_told_to_the_hub_once(
    make_hub: Any, make_link: Any
) -> None:
    """Over the send log's bound (no acknowledgement for open_timeout), the oldest
    sends are given up: the next handshake says how many, so the hub answers with a
    gap and the peers announce the agent anew; before, only a log line said so."""
    hub = await make_hub("new e1 60 acks=inline", "gap e2 60 acks=inline", "recovered e2 60")
    link, hooks = make_link(hub, buffer=OutboundBuffer(max_messages=2), open_timeout=0.05)
    await until(lambda: link.connected)
    for payload in (b"1", b"2", b"3", b"4"):
        await link.send(payload)  # never acknowledged: 3 and 4 each give up the oldest
    assert link.stats.overflowed == 2
    hub.drop()
    await until(lambda: len(hooks.resumes) == 2)
    assert hub.queries[1]["sent_lost"] == "2" and hooks.lost == [False, True]
    await until(lambda: len(hub.received) == 2 and len(hub.received[1]) == 2)
    assert hub.messages(1) == [(3, b"3"), (4, b"4")], "what the log kept, sent again"
    hub.drop()
    await until(lambda: len(hooks.resumes) == 3)
    assert "sent_lost" not in hub.queries[2]


async def test_a_session_outage_is_given_up_no_sooner_than_the_hubs_window(
    make_hub: Any, make_link: Any
) -> None:
    """The hub keeps an away session for its window: a proxy that gave up sooner
    (the default max_elapsed, 60 s, against a default window of 120 s) dropped a
    session, and what it held to send, that a later resume would have recovered."""
    hub = await make_hub("new e1 1.5 acks=inline")
    policy = ReconnectPolicy(initial_delay=0.02, max_delay=0.05, jitter=0.0, max_elapsed=0.2)
    link, hooks = make_link(hub, policy=policy)
    await until(lambda: link.connected)
    assert hub.server is not None
    hub.server.close()  # no more handshakes: every attempt fails
    hub.drop()
    started = time.monotonic()
    await asyncio.sleep(0.8)
    assert hooks.gave_up == [], "still trying within the window"
    await until(lambda: hooks.gave_up != [])
    assert 1.4 <= time.monotonic() - started <= 1.5 + TIMEOUT / 2


async def test_sends_given_up_before_the_first_handshake_are_reported_too(
    make_hub: Any, make_link: Any
) -> None:
    """Held over the log's bound before any socket opened: the first handshake tells
    the hub, and though its answer is ``new``, the proxy reports the loss."""
    hub = await make_hub("new e1 60 acks=inline")
    link, hooks = make_link(hub, buffer=OutboundBuffer(max_messages=2))
    for payload in (b"1", b"2", b"3"):
        await link.send(payload)  # before the first socket: the oldest given up
    await until(lambda: link.connected and len(hub.received[0]) == 2)
    assert hub.queries[0]["sent_lost"] == "1"
    assert hooks.resumes == [("new", "e1")] and hooks.lost == [True]
    assert hub.messages(0) == [(2, b"2"), (3, b"3")]
