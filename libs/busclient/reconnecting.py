"""The dialect-free half of the reconnecting client proxies.

The stock client proxies (``WebSocketProxyClientAgent``, ``WebSocketProxyClient``) dial
once: any close ends them, and messages their local agent sends while no socket is open
are dropped without a trace. Behind a load balancer in front of hub nodes that drain
(1012 on SIGTERM), shed load (1013) or die (a dropped TCP connection), a client has to
come back through the same URL. This module holds what does not depend on the library:

- `ReconnectPolicy` (``busclient.reconnectpolicy``, re-exported here): which ends are
  worth a retry, which are a definite refusal, the jittered exponential backoff and
  the give-up limits. Pure logic.
- `OutboundBuffer` (``busclient.outboundbuffer``, re-exported here): the bounded,
  ordered hold for messages sent while disconnected. Pure logic.
- `ReconnectingLink`: one supervisor coroutine that owns the socket: connect, flush the
  buffer, receive, and on an end ask the policy whether and when to dial again. Exactly
  one socket and one receive loop exist at any time, because only this coroutine opens
  sockets and it receives inline. With ``session=True`` it speaks the hub's Sessions
  protocol (docs/protocol.md) on every socket whose handshake answers ``bushub-resume``,
  keeping its state in a `busclient.session.ClientSession`.

The dialect modules (``busclient.reconnecting_subagents``,
``busclient.reconnecting_pipecat``) subclass the stock proxies on top of this. This
module imports neither library: only ``websockets``, which both libraries' proxies
already need, and ``buswire.sessionframe``, the session framing the hub shares.

Delivery with a session-speaking hub is exactly once and in order in both directions,
as the protocol says: every frame carries a position, each side acknowledges what it
took, this side keeps what it sent until acknowledged and sends it all again with the
same positions after a reconnect, and drops positions it has taken already. The
exceptions are counted and logged: the send log's bounds (``overflowed``, oldest
first), ``max_age`` (``expired``) and a hub that could not replay (``gaps``, the
``link_resumed`` hook).

With any other server (an older hub, a stock ``WebSocketProxyServerAgent``: no
``bushub-resume`` header) a socket runs plain, and delivery stays at most once: a
message written into a socket that then drops without the server having read it is
lost, and so is a message the server sends while this side is away. What the buffer
adds is that nothing the local agent sends *while the proxy knows it is
disconnected* is lost, up to the buffer's bounds. A send that fails on a socket that
closed under it is kept and sent again after reconnecting, so that message alone may
arrive twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidProxy,
    InvalidStatus,
    InvalidURI,
)
from websockets.protocol import State

from busclient.outboundbuffer import OutboundBuffer
from busclient.reconnectpolicy import (
    GIVE_UP_CLOSE_CODES,
    RETRY_CLOSE_CODES,
    RETRY_HTTP_STATUSES,
    Decision,
    Disconnect,
    ReconnectPolicy,
    merge_codes,
)
from busclient.session import ClientSession
from buswire import sessionframe
from buswire.errors import DecodeError

log = logging.getLogger(__name__)

# A message of the hub's default --max-message-bytes, and a session frame's head.
_MAX_FRAME = (1 << 20) + sessionframe.ACKED_HEAD


@dataclass
class ReconnectStats:
    """Counters of one proxy's connection history."""

    connects: int = 0  # sockets opened (the first one and every reconnect)
    reconnects: int = 0  # sockets opened after an outage
    attempts: int = 0  # handshakes tried, successful or not
    sent: int = 0  # messages written to a socket directly
    flushed: int = 0  # buffered messages written after a reconnect
    dropped_stopped: int = 0  # messages sent after the proxy stopped or gave up
    resent: int = 0  # send-log messages written on a session socket's (re)connect
    last_disconnect: Disconnect | None = None
    gave_up: str | None = None  # why, once the proxy gave up
    last_resume_lost: bool = False  # the last session handshake lost the hub's messages
    buffer: OutboundBuffer = field(default_factory=OutboundBuffer)
    session: ClientSession | None = None  # with session=True

    @property
    def buffered(self) -> int:
        """Messages waiting for a socket now (without sessions)."""
        return len(self.buffer)

    @property
    def unacked(self) -> int:
        """Messages in the session's send log: sent or held, not acknowledged yet."""
        return len(self.session.log) if self.session is not None else 0

    @property
    def overflowed(self) -> int:
        """Messages dropped because the buffer (or the send log) was full."""
        logged = self.session.log.overflowed if self.session is not None else 0
        return self.buffer.overflowed + logged

    @property
    def expired(self) -> int:
        """Messages dropped because they waited longer than the buffer's max_age."""
        logged = self.session.log.expired if self.session is not None else 0
        return self.buffer.expired + logged

    @property
    def session_id(self) -> str | None:
        """The session's id, with session=True."""
        return self.session.id if self.session is not None else None

    @property
    def resumes(self) -> int:
        """Session handshakes that recovered (the hub replayed what this side missed)."""
        return self.session.receiver.recovered if self.session is not None else 0

    @property
    def gaps(self) -> int:
        """Session handshakes that lost messages from the hub (``gap``, or a forgotten session)."""
        return self.session.receiver.gaps if self.session is not None else 0

    @property
    def duplicates(self) -> int:
        """Messages from the hub dropped because their position was taken already."""
        return self.session.receiver.duplicates if self.session is not None else 0


class LinkHooks(Protocol):
    """What a dialect proxy does on the link's events."""

    async def link_connected(self, websocket: ClientConnection, first: bool, attempts: int) -> None:
        """A socket opened: the first since activation, or a reconnect after ``attempts``."""

    async def link_frame(self, data: bytes | str) -> None:
        """One frame arrived."""

    async def link_resumed(self, result: str, epoch: str) -> None:
        """A session socket's handshake answered ``result`` (new, recovered, gap) and
        ``epoch``; called after `link_connected`, before the send log is sent again.
        ``stats.last_resume_lost`` says whether messages from the hub were lost."""

    async def link_reconnecting(self, disconnect: Disconnect, attempt: int, delay: float) -> None:
        """The link will dial again in ``delay`` seconds (attempt ``attempt`` of an outage)."""

    async def link_gave_up(
        self, websocket: ClientConnection | None, disconnect: Disconnect, reason: str
    ) -> None:
        """The link stopped for good; ``websocket`` is the socket that ended, if any."""


def describe_close(websocket: ClientConnection, *, local: bool) -> Disconnect:
    """How an open socket ended: the code of the close frame received, else 1006;
    1009 when this side failed it for a frame over its ``max_size`` (final: the hub,
    asked again, sends the same frame; a session's resume would replay it for good)."""
    protocol = websocket.protocol
    received = protocol.close_rcvd
    if received is not None:
        return Disconnect(code=int(received.code), reason=received.reason, local=local)
    sent = protocol.close_sent
    if sent is not None and sent.code == 1009:
        return Disconnect(code=1009, reason=f"a frame over max_size: {sent.reason}", local=True)
    return Disconnect(code=1006, reason="no close frame", local=local)


# A Retry-After past this is taken as this (a misconfigured or hostile server must not
# park a proxy for hours; ``max_delay`` caps it further).
_MOST_RETRY_AFTER = 3600.0


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header's delay in seconds; None when absent or not a number
    of seconds (the HTTP-date form is not taken: clocks differ)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not 0.0 <= seconds < float("inf"):
        return None
    return min(seconds, _MOST_RETRY_AFTER)


def describe_failure(exc: BaseException) -> Disconnect:
    """How a handshake failed."""
    if isinstance(exc, InvalidStatus):
        response = exc.response
        return Disconnect(
            status=response.status_code,
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )
    if isinstance(exc, InvalidURI | InvalidProxy | ValueError):
        return Disconnect(error=f"{type(exc).__name__}: {exc}", fatal=True)
    return Disconnect(error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


class Framing(Enum):
    """How the open socket's frames are written and read."""

    PLAIN = "plain"  # no session: frames are the serializer's bytes as they are
    SESSION = "session"  # the hub answered bushub-resume: positions and acks


class ReconnectingLink:
    """The socket of one reconnecting proxy, owned by the single `run` coroutine.

    Args:
        url: The WebSocket URL, dialled again on every reconnect (with ``session``,
            its query also names the session and the last position received).
        hooks: The proxy that receives frames and turns link events into its own.
        headers: Handshake headers (e.g. ``Authorization``), sent on every attempt.
        policy: Retry, backoff and give-up rules.
        buffer: Where messages wait while disconnected; with ``session``, its bounds
            (and max_age) bound the session's send log instead.
        open_timeout: Seconds one handshake may take; with ``session``, also how long
            a send waits for an acknowledgement to make room in a full send log
            before dropping the oldest.
        session: Speak the Sessions protocol with a hub that answers it.
        connect_kwargs: Further arguments for ``websockets.asyncio.client.connect``.
        rng: Source of jitter (a seeded one makes tests repeatable).
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        url: str,
        hooks: LinkHooks,
        *,
        headers: Mapping[str, str] | None = None,
        policy: ReconnectPolicy | None = None,
        buffer: OutboundBuffer | None = None,
        open_timeout: float = 10.0,
        session: bool = False,
        connect_kwargs: Mapping[str, Any] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._hooks = hooks
        self._headers = dict(headers or {})
        self.policy = policy or ReconnectPolicy()
        self.stats = ReconnectStats(buffer=buffer if buffer is not None else OutboundBuffer())
        self._buffer = self.stats.buffer
        if session:
            self.stats.session = ClientSession(
                self._buffer.max_messages, self._buffer.max_bytes, self._buffer.max_age
            )
        self._session = self.stats.session
        self._open_timeout = open_timeout
        # The hub's resume window, as the last session handshake named it.
        self._window: float | None = None
        # The largest frame a hub writes by default is a message of its default
        # --max-message-bytes (websockets' own default limit, 1 MiB) with a session
        # frame's head on it: at the stock limit that message failed the connection,
        # and the resume gave it again, for good.
        self._connect_kwargs = {"max_size": _MAX_FRAME, **(connect_kwargs or {})}
        self._rng = rng or random.Random()
        self._clock = clock
        self._ws: ClientConnection | None = None
        self._framing = Framing.PLAIN
        # The open session socket's hub takes acknowledgements riding on messages.
        self._inline_acks = False
        self._live = False  # a socket is open and the buffer has been flushed into it
        self._running = False  # accepting messages: started and neither closed nor given up
        self._supervising = False  # run() is executing
        self._closing = False
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        # Set when acknowledgements make room in the send log, or the socket ends: a
        # send waiting for room (holding the send lock) must not outlive its socket.
        self._room = asyncio.Event()

    @property
    def websocket(self) -> ClientConnection | None:
        """The socket currently open, if any."""
        return self._ws

    @property
    def connected(self) -> bool:
        """A socket is open and everything buffered has been sent into it."""
        ws = self._ws
        return self._live and ws is not None and ws.state is State.OPEN

    @property
    def framing(self) -> Framing:
        """How the open socket is spoken (PLAIN while none is open)."""
        return self._framing

    @property
    def running(self) -> bool:
        """`run` is connected or trying to be; messages sent now are delivered or held."""
        return self._running and not self._closing

    def start(self) -> None:
        """Accept messages from now on (they are held until `run` opens a socket).

        Call it right before scheduling `run`, so that nothing sent in between is
        mistaken for a message sent after the link stopped.
        """
        self._running = True
        self._closing = False
        self.stats.gave_up = None

    def retry_now(self) -> None:
        """Cut a backoff wait short (the next attempt is made at once)."""
        self._wake.set()

    def saw_peer(self) -> None:
        """The hub told this proxy of its peer: the session's later handshakes say so
        (``peer_seen=1``), so that a node it resumes on where the peer is gone takes
        the peer for lost, as the node that saw it go would have."""
        if self._session is not None:
            self._session.peer_seen = True

    async def send(self, data: bytes) -> None:
        """Write ``data`` to the socket, or hold it until the next one opens.

        Calls are serialised, so messages leave in the order they were sent, buffered
        or not. On a session socket a full send log makes this wait for the hub's
        acknowledgements (backpressure), for ``open_timeout`` at most.
        """
        async with self._send_lock:
            if not self.running:
                self.stats.dropped_stopped += 1
                return
            ws = self._ws
            if self._live and ws is not None and ws.state is State.OPEN:
                if self._framing is Framing.SESSION:
                    await self._send_logged(ws, data)
                    return
                try:
                    await ws.send(data)
                except ConnectionClosed:
                    self._live = False
                else:
                    self.stats.sent += 1
                    return
            self._hold(data)

    def _hold(self, data: bytes) -> None:
        """Keep ``data`` for the next socket, dropping the oldest when full."""
        if self._session is not None:
            _, dropped = self._session.log.append(data, self._clock())
        else:
            dropped = self._buffer.push(data, self._clock())
        if dropped:
            # With a session the next handshake tells the hub (sent_lost): a gap.
            log.warning(
                "%s: outbound buffer full, dropped %d oldest (%d in all)",
                self.url,
                dropped,
                self.stats.overflowed,
            )

    async def _send_logged(self, ws: ClientConnection, data: bytes) -> None:
        """Log ``data`` at the next position and write it framed; wait for room first."""
        assert self._session is not None
        send_log = self._session.log
        while self._live and not send_log.fits(len(data)):
            self._room.clear()
            try:
                # Not asyncio.wait_for: on Python 3.11 it loses a cancellation that
                # comes in the turn the event is set (see run's backoff).
                async with asyncio.timeout(self._open_timeout):
                    await self._room.wait()
            except TimeoutError:
                # No acknowledgement for open_timeout: the hub is stuck or gone
                # without the socket noticing yet. Drop the oldest rather than hang.
                break
        now = self._clock()
        position, dropped = send_log.append(data, now)
        if dropped:
            log.warning(
                "%s: send log full and unacknowledged, dropped %d oldest (%d in all)",
                self.url,
                dropped,
                self.stats.overflowed,
            )
        if not self._live or ws.state is not State.OPEN:
            return  # logged: sent again on the next session socket
        send_log.written(send_log.newest(), now)  # before: a failed send may have gone
        # What was taken and not yet acknowledged rides on the message: no frame of
        # its own.
        acked = self._session.receiver.ride() if self._inline_acks else 0
        if acked:
            frame = sessionframe.message_acked(position, acked, data)
        else:
            frame = sessionframe.message(position, data)
        try:
            await ws.send(frame)
        except ConnectionClosed:
            self._live = False
        else:
            self.stats.sent += 1

    async def close(self) -> None:
        """Stop for good: no more reconnects; close the open socket (code 1000)."""
        self._closing = True
        self._wake.set()
        self._room.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        self._drop_held()

    def _drop_held(self) -> None:
        dropped = self._buffer.clear()
        if self._session is not None:
            dropped += self._session.log.clear()
        self.stats.dropped_stopped += dropped

    async def run(self) -> None:
        """Connect, flush, receive; on an end, reconnect or give up as the policy says.

        Returns when the link gives up or `close` is called. Never raises for a
        connection problem: those reach the hooks.
        """
        if self._supervising:
            raise RuntimeError("ReconnectingLink.run is already running")
        if self._closing:
            return
        self._supervising = True
        self.start()
        attempt = 0  # failed attempts in the current outage
        outage_since: float | None = None
        first = True
        try:
            while not self._closing:
                ended: ClientConnection | None = None
                self.stats.attempts += 1
                self._give_up_stale()
                url = self._session.url(self.url) if self._session is not None else self.url
                try:
                    ws = await connect(
                        url,
                        additional_headers=self._headers,
                        open_timeout=self._open_timeout,
                        **self._connect_kwargs,
                    )
                except (
                    OSError,
                    TimeoutError,
                    EOFError,
                    InvalidHandshake,
                    InvalidURI,  # not an InvalidHandshake (nor InvalidProxy)
                    InvalidProxy,  # a *_proxy variable of the environment
                    ValueError,
                ) as exc:
                    disconnect = describe_failure(exc)
                else:
                    if self._closing:
                        await ws.close()
                        break
                    opened_at = self._clock()
                    self._ws = ws
                    resume = self._resume_header(ws)
                    self._framing = Framing.PLAIN if resume is None else Framing.SESSION
                    self._inline_acks = resume is not None and sessionframe.takes_inline_acks(
                        resume
                    )
                    self.stats.connects += 1
                    if not first:
                        self.stats.reconnects += 1
                    await self._hooks.link_connected(ws, first, attempt)
                    first = False
                    try:
                        if resume is not None:
                            await self._resumed(resume)
                        await self._flush(ws)
                        await self._receive(ws)
                    finally:
                        self._live = False
                        self._framing = Framing.PLAIN
                        self._inline_acks = False
                        self._room.set()
                    self._ws = None
                    ended = ws
                    disconnect = describe_close(ws, local=self._closing)
                    if self._clock() - opened_at >= self.policy.stable_after:
                        attempt, outage_since = 0, None
                if self._closing:
                    break
                now = self._clock()
                if outage_since is None:
                    outage_since = now
                attempt += 1
                decision = self._outage_policy().decide(
                    disconnect, attempt, now - outage_since, self._rng
                )
                self.stats.last_disconnect = disconnect
                if not decision.retry:
                    self.stats.gave_up = decision.reason
                    self._running = False
                    self._live = False
                    self._drop_held()
                    await self._hooks.link_gave_up(ended, disconnect, decision.reason)
                    return
                await self._hooks.link_reconnecting(disconnect, attempt, decision.delay)
                self._wake.clear()
                # Not asyncio.wait_for: on Python 3.11, cancelled in the turn that
                # woke it (retry_now), it returns as if woken and the cancellation
                # is lost: the link would dial again instead of ending.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(decision.delay):
                        await self._wake.wait()
        finally:
            self._supervising = False
            self._running = False
            self._live = False
            current, self._ws = self._ws, None
            if current is not None and current.state is not State.CLOSED:
                # Cancelled mid-connection: do not leave the socket behind.
                current.transport.abort()

    def _resume_header(self, ws: ClientConnection) -> str | None:
        """The handshake's ``bushub-resume`` value; None without sessions on either side."""
        if self._session is None or ws.response is None:
            return None
        return ws.response.headers.get(sessionframe.RESUME_HEADER)

    def _outage_policy(self) -> ReconnectPolicy:
        """The policy, its ``max_elapsed`` no shorter than the hub's resume window once
        a session handshake named one: given up sooner, the proxy dropped a session
        (and what it held to send) that the hub still kept for it."""
        policy, window = self.policy, self._window
        if window is None or policy.max_elapsed is None or policy.max_elapsed >= window:
            return policy
        return replace(policy, max_elapsed=window)

    def _give_up_stale(self) -> None:
        """Before a handshake, give up on what cannot be sent again: what was written
        longer ago than the hub's window (as the last handshake named it) and what is
        older than ``max_age``; the handshake then tells the hub (``sent_lost``)."""
        if self._session is None:
            return
        now = self._clock()
        send_log = self._session.log
        send_log.expire(now)
        if self._window is not None:
            self._dropped_stale(send_log.drop_sent_before(now - self._window), self._window)

    def _dropped_stale(self, stale: int, window: float) -> None:
        if stale:
            log.warning(
                "%s: %d unacknowledged message(s) written longer ago than the %.0fs window "
                "given up",
                self.url,
                stale,
                window,
            )

    async def _resumed(self, header: str) -> None:
        """Account for the handshake's result and tell the hooks."""
        assert self._session is not None
        told = self._session.told()
        result, epoch = sessionframe.parse_resume_header(header)
        # Sends given up before the first handshake are lost too, its answer ``new``.
        lost = self._session.receiver.resumed(result) or told > 0
        window = self._window = sessionframe.resume_window(header)
        if window is not None:
            # A window shorter than the last handshake's: the hub is told of these
            # by the next handshake.
            stale = self._session.log.drop_sent_before(self._clock() - window)
            self._dropped_stale(stale, window)
            if stale:
                if not lost:
                    self._session.receiver.gaps += 1
                lost = True
        self.stats.last_resume_lost = lost
        if lost:
            # The epoch is the hub's text: quoted (%r) in the log.
            log.warning("%s: session %s (epoch %r): messages lost", self.url, result, epoch)
        await self._hooks.link_resumed(result, epoch)

    async def _flush(self, ws: ClientConnection) -> None:
        """Send everything held, in order, then let sends go straight to the socket."""
        async with self._send_lock:
            if self._framing is Framing.SESSION:
                done = await self._resend(ws)
            elif self._session is not None:
                done = await self._flush_log_plain(ws)
            else:
                done = await self._flush_buffer(ws)
            self._live = done and ws.state is State.OPEN

    async def _flush_buffer(self, ws: ClientConnection) -> bool:
        while True:
            data = self._buffer.peek(self._clock())
            if data is None:
                return True
            if ws.state is not State.OPEN:
                return False
            try:
                await ws.send(data)
            except ConnectionClosed:
                return False  # kept at the head, for the next socket
            self._buffer.pop()
            self.stats.flushed += 1

    async def _resend(self, ws: ClientConnection) -> bool:
        """Send the whole send log again, oldest first, at the positions it had."""
        assert self._session is not None
        send_log = self._session.log
        send_log.expire(self._clock())
        for entry in send_log.entries():
            if ws.state is not State.OPEN:
                return False
            send_log.written(entry, self._clock())
            try:
                await ws.send(sessionframe.message(entry.position, entry.payload))
            except ConnectionClosed:
                return False  # still logged, for the next socket
            self.stats.resent += 1
        return True

    async def _flush_log_plain(self, ws: ClientConnection) -> bool:
        """A server without sessions: the send log leaves as the buffer would, unframed."""
        assert self._session is not None
        send_log = self._session.log
        send_log.expire(self._clock())
        for entry in send_log.entries():
            if ws.state is not State.OPEN:
                return False
            try:
                await ws.send(entry.payload)
            except ConnectionClosed:
                return False
            send_log.pop_oldest()  # no acknowledgements come: written is all there is
            self.stats.flushed += 1
        return True

    async def _receive(self, ws: ClientConnection) -> None:
        """The one receive loop: every frame to the hooks until the socket ends.

        ``async for`` ends quietly on a 1000/1001 close; any other close raises. Either
        way the close is described afterwards from the socket itself.
        """
        with contextlib.suppress(ConnectionClosed):
            if self._framing is Framing.SESSION:
                await self._receive_session(ws)
                return
            async for data in ws:
                await self._hand_on(data)

    async def _hand_on(self, data: bytes | str) -> None:
        try:
            await self._hooks.link_frame(data)
        except Exception:
            log.exception("%s: failed to handle an inbound frame", self.url)

    async def _receive_session(self, ws: ClientConnection) -> None:
        """Receive session frames, acknowledging what was taken when it falls due.

        The acknowledgement timer is the receive's timeout, so the one loop owns it
        (``recv`` is safe to cancel: no frame is lost).
        """
        assert self._session is not None
        receiver = self._session.receiver
        while True:
            deadline = receiver.ack_deadline
            if deadline is None:
                data = await ws.recv()
            else:
                try:
                    async with asyncio.timeout(max(0.0, deadline - self._clock())):
                        data = await ws.recv()
                except TimeoutError:
                    # Unless a message sent meanwhile carried it (inline).
                    if receiver.received > receiver.acked:
                        await self._acknowledge(ws)
                    continue
            await self._take(ws, data)

    async def _take(self, ws: ClientConnection, data: bytes | str) -> None:
        assert self._session is not None
        if isinstance(data, str):
            log.warning("%s: text frame on a session socket, dropped", self.url)
            return
        try:
            frame = sessionframe.decode(data)
        except DecodeError as exc:
            log.warning("%s: malformed session frame dropped (%s)", self.url, exc.detail)
            return
        if frame.kind is sessionframe.Kind.ACK:
            if self._session.log.ack(frame.position):
                self._room.set()
            return
        if frame.acked and self._session.log.ack(frame.acked):
            self._room.set()  # an acknowledgement riding on a message
        now = self._clock()
        if frame.kind is sessionframe.Kind.MESSAGE and not self._session.receiver.take(
            frame.position, now
        ):
            return  # taken already (a replay overlapping what arrived before a drop)
        await self._hand_on(frame.payload)
        if self._session.receiver.ack_due(self._clock()):
            await self._acknowledge(ws)

    async def _acknowledge(self, ws: ClientConnection) -> None:
        assert self._session is not None
        position = self._session.receiver.received
        await ws.send(sessionframe.ack(position))
        self._session.receiver.acknowledged(position)


__all__ = [
    "GIVE_UP_CLOSE_CODES",
    "RETRY_CLOSE_CODES",
    "RETRY_HTTP_STATUSES",
    "Decision",
    "Disconnect",
    "Framing",
    "LinkHooks",
    "OutboundBuffer",
    "ReconnectPolicy",
    "ReconnectStats",
    "ReconnectingLink",
    "describe_close",
    "describe_failure",
    "merge_codes",
]
