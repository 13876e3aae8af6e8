"""The dialect-free half of the reconnecting client proxies.

The stock client proxies (``WebSocketProxyClientAgent``, ``WebSocketProxyClient``) dial
once: any close ends them, and messages their local agent sends while no socket is open
are dropped without a trace. Behind a load balancer in front of hub nodes that drain
(1012 on SIGTERM), shed load (1013) or die (a dropped TCP connection), a client has to
come back through the same URL. This module holds what does not depend on the library:

- `ReconnectPolicy`: which ends are worth a retry, which are a definite refusal, the
  jittered exponential backoff and the give-up limits. Pure logic.
- `OutboundBuffer`: the bounded, ordered hold for messages sent while disconnected,
  with counters for what it had to drop. Pure logic.
- `ReconnectingLink`: one supervisor coroutine that owns the socket: connect, flush the
  buffer, receive, and on an end ask the policy whether and when to dial again. Exactly
  one socket and one receive loop exist at any time, because only this coroutine opens
  sockets and it receives inline.

The dialect modules (``busclient.reconnecting_subagents``,
``busclient.reconnecting_pipecat``) subclass the stock proxies on top of this. This
module imports only ``websockets``, which both libraries' proxies already need.

Delivery stays at most once, as the hub's is: a message written into a socket that
then drops without the hub having read it is lost, and so is a message the hub sends
while this side is away. What the buffer adds is that nothing the local agent sends
*while the proxy knows it is disconnected* is lost, up to the buffer's bounds. A send
that fails on a socket that closed under it is kept and sent again after reconnecting,
so that message alone may arrive twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.protocol import State

log = logging.getLogger(__name__)

# Close codes after which the same URL is worth dialling again: a normal or going-away
# close the proxy did not ask for (an idle timeout, a load balancer restarting), no
# close frame at all (1005, 1006: a dropped connection, a killed node), a server error
# (1011), a draining node (1012), an overloaded or not-ready node (1013), a bad gateway
# (1014), and the hub's slow-consumer cut (4008), after which this side can keep up again.
RETRY_CLOSE_CODES: frozenset[int] = frozenset(
    {1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014, 4008}
)
# Close codes that are a definite answer: the protocol or the data is wrong (1002,
# 1003, 1007, 1009, 1010), the connection parameters are refused (1008), TLS failed
# (1015), a newer connection took this agent name over (4001), the peer is gone (4002).
# Other codes in 3000-4999 (application-defined) are treated the same way.
GIVE_UP_CLOSE_CODES: frozenset[int] = frozenset(
    {1002, 1003, 1007, 1008, 1009, 1010, 1015, 4001, 4002}
)
# HTTP statuses of a refused handshake that are worth a retry; every other 4xx (401
# unauthorized, 403 forbidden, 404...) is a definite refusal, every 5xx is retried.
RETRY_HTTP_STATUSES: frozenset[int] = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Disconnect:
    """How a socket ended, or how a handshake failed.

    Exactly one of ``code`` (an open socket ended), ``status`` (the server answered the
    handshake with an HTTP status instead of an upgrade) or ``error`` (the handshake
    failed on the network: refused, reset, timed out) is set.
    """

    code: int | None = None
    status: int | None = None
    error: str | None = None
    reason: str = ""
    local: bool = False  # the proxy closed the socket itself (stop, cleanup)
    fatal: bool = False  # a handshake that can never succeed (a malformed URL)

    def describe(self) -> str:
        """A short human-readable account, for logs."""
        if self.code is not None:
            text = f"close {self.code}"
            return f"{text} ({self.reason})" if self.reason else text
        if self.status is not None:
            return f"HTTP {self.status}"
        return f"handshake failed: {self.error or 'unknown error'}"


@dataclass(frozen=True)
class Decision:
    """What to do after a disconnect: dial again after ``delay`` seconds, or give up."""

    retry: bool
    reason: str
    delay: float = 0.0


@dataclass(frozen=True)
class ReconnectPolicy:
    """When to reconnect, how long to wait, and when to stop trying.

    Backoff: the n-th attempt of an outage waits
    ``min(max_delay, initial_delay * multiplier ** (n - 1))`` scaled down by a random
    factor in ``(1 - jitter, 1]``; ``jitter=1`` is "full jitter", ``0`` none. Clients
    closed together by a draining node so spread their reconnects instead of arriving
    at the load balancer in one burst.

    Limits: an outage is given up after ``max_attempts`` failed attempts or
    ``max_elapsed`` seconds, whichever comes first (``None`` disables a limit). An
    outage ends only when a connection has stayed open for ``stable_after`` seconds, so
    a node that accepts and at once closes again cannot keep a client looping forever.
    """

    initial_delay: float = 0.2
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int | None = None
    max_elapsed: float | None = 60.0
    stable_after: float = 5.0
    retry_codes: frozenset[int] = RETRY_CLOSE_CODES
    give_up_codes: frozenset[int] = GIVE_UP_CLOSE_CODES
    retry_statuses: frozenset[int] = RETRY_HTTP_STATUSES

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ValueError("need 0 <= initial_delay <= max_delay")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError("max_attempts must be >= 0")
        if self.max_elapsed is not None and self.max_elapsed < 0:
            raise ValueError("max_elapsed must be >= 0")
        if self.retry_codes & self.give_up_codes:
            raise ValueError("a close code cannot be both retried and given up on")

    def classify(self, disconnect: Disconnect) -> tuple[bool, str]:
        """Whether this end is worth another attempt, and why (limits aside)."""
        what = disconnect.describe()
        if disconnect.local:
            return False, f"closed by the proxy ({what})"
        if disconnect.fatal:
            return False, f"cannot connect ({what})"
        status = disconnect.status
        if status is not None:
            if status in self.retry_statuses or 500 <= status <= 599:
                return True, f"server unavailable ({what})"
            return False, f"refused ({what})"
        code = disconnect.code
        if code is not None:
            if code in self.give_up_codes:
                return False, f"refused ({what})"
            if code in self.retry_codes:
                return True, f"recoverable ({what})"
            if 3000 <= code <= 4999:
                return False, f"refused ({what})"
            return True, f"recoverable ({what})"
        return True, f"unreachable ({what})"

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before reconnect attempt number ``attempt`` (from 1)."""
        exponent = max(0, attempt - 1)
        # Capped before the power can overflow a float on a very long outage.
        ceiling = self.initial_delay
        for _ in range(exponent):
            ceiling *= self.multiplier
            if ceiling >= self.max_delay:
                break
        ceiling = min(self.max_delay, ceiling)
        return ceiling * (1.0 - self.jitter * rng.random())

    def decide(
        self, disconnect: Disconnect, attempt: int, elapsed: float, rng: random.Random
    ) -> Decision:
        """Retry or give up before attempt number ``attempt`` of an outage.

        Args:
            disconnect: How the last socket or handshake ended.
            attempt: The attempt about to be made, counted from 1 within the outage.
            elapsed: Seconds since the outage began.
            rng: The source of jitter.
        """
        retry, why = self.classify(disconnect)
        if not retry:
            return Decision(False, why)
        if self.max_attempts is not None and attempt > self.max_attempts:
            return Decision(False, f"gave up after {self.max_attempts} attempts; last: {why}")
        if self.max_elapsed is not None and elapsed >= self.max_elapsed:
            return Decision(False, f"gave up after {elapsed:.1f}s; last: {why}")
        wait = self.delay(attempt, rng)
        if self.max_elapsed is not None:
            wait = min(wait, self.max_elapsed - elapsed)
        return Decision(True, why, max(0.0, wait))


class OutboundBuffer:
    """Messages held while disconnected: ordered, bounded, oldest dropped first.

    Bounded by ``max_messages`` and ``max_bytes``; when a push passes either bound the
    oldest messages are dropped and counted in ``overflowed`` (for real-time traffic the
    newest is the one worth keeping). With ``max_age`` set, messages older than that are
    dropped when they reach the head, counted in ``expired``.
    """

    def __init__(
        self, max_messages: int = 1000, max_bytes: int = 8 << 20, max_age: float | None = None
    ) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("buffer bounds must be >= 1")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._items: deque[tuple[float, bytes]] = deque()
        self.bytes = 0
        self.pushed = 0
        self.overflowed = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, data: bytes, now: float) -> int:
        """Hold ``data``; returns how many messages were dropped to make room."""
        self._items.append((now, data))
        self.bytes += len(data)
        self.pushed += 1
        dropped = 0
        while self._items and (len(self._items) > self.max_messages or self.bytes > self.max_bytes):
            _, old = self._items.popleft()
            self.bytes -= len(old)
            dropped += 1
        self.overflowed += dropped
        return dropped

    def peek(self, now: float) -> bytes | None:
        """The oldest message still within ``max_age``, left in place; None if empty."""
        while self._items:
            stamp, data = self._items[0]
            if self.max_age is None or now - stamp <= self.max_age:
                return data
            self._items.popleft()
            self.bytes -= len(data)
            self.expired += 1
        return None

    def pop(self) -> bytes:
        """Remove and return the oldest message."""
        _, data = self._items.popleft()
        self.bytes -= len(data)
        return data

    def clear(self) -> int:
        """Drop everything held; returns how many messages that was."""
        count = len(self._items)
        self._items.clear()
        self.bytes = 0
        return count


@dataclass
class ReconnectStats:
    """Counters of one proxy's connection history."""

    connects: int = 0  # sockets opened (the first one and every reconnect)
    reconnects: int = 0  # sockets opened after an outage
    attempts: int = 0  # handshakes tried, successful or not
    sent: int = 0  # messages written to a socket directly
    flushed: int = 0  # buffered messages written after a reconnect
    dropped_stopped: int = 0  # messages sent after the proxy stopped or gave up
    last_disconnect: Disconnect | None = None
    gave_up: str | None = None  # why, once the proxy gave up
    buffer: OutboundBuffer = field(default_factory=OutboundBuffer)

    @property
    def buffered(self) -> int:
        """Messages waiting for a socket now."""
        return len(self.buffer)

    @property
    def overflowed(self) -> int:
        """Messages dropped because the buffer was full."""
        return self.buffer.overflowed

    @property
    def expired(self) -> int:
        """Messages dropped because they waited longer than the buffer's max_age."""
        return self.buffer.expired


class LinkHooks(Protocol):
    """What a dialect proxy does on the link's events."""

    async def link_connected(self, websocket: ClientConnection, first: bool, attempts: int) -> None:
        """A socket opened: the first since activation, or a reconnect after ``attempts``."""

    async def link_frame(self, data: bytes | str) -> None:
        """One frame arrived."""

    async def link_reconnecting(self, disconnect: Disconnect, attempt: int, delay: float) -> None:
        """The link will dial again in ``delay`` seconds (attempt ``attempt`` of an outage)."""

    async def link_gave_up(
        self, websocket: ClientConnection | None, disconnect: Disconnect, reason: str
    ) -> None:
        """The link stopped for good; ``websocket`` is the socket that ended, if any."""


def describe_close(websocket: ClientConnection, *, local: bool) -> Disconnect:
    """How an open socket ended: the code of the close frame received, else 1006."""
    received = websocket.protocol.close_rcvd
    if received is not None:
        return Disconnect(code=int(received.code), reason=received.reason, local=local)
    return Disconnect(code=1006, reason="no close frame", local=local)


def describe_failure(exc: BaseException) -> Disconnect:
    """How a handshake failed."""
    if isinstance(exc, InvalidStatus):
        return Disconnect(status=exc.response.status_code)
    if isinstance(exc, InvalidURI | ValueError):
        return Disconnect(error=f"{type(exc).__name__}: {exc}", fatal=True)
    return Disconnect(error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


class ReconnectingLink:
    """The socket of one reconnecting proxy, owned by the single `run` coroutine.

    Args:
        url: The WebSocket URL, dialled again unchanged on every reconnect.
        hooks: The proxy that receives frames and turns link events into its own.
        headers: Handshake headers (e.g. ``Authorization``), sent on every attempt.
        policy: Retry, backoff and give-up rules.
        buffer: Where messages wait while disconnected.
        open_timeout: Seconds one handshake may take.
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
        self._open_timeout = open_timeout
        self._connect_kwargs = dict(connect_kwargs or {})
        self._rng = rng or random.Random()
        self._clock = clock
        self._ws: ClientConnection | None = None
        self._live = False  # a socket is open and the buffer has been flushed into it
        self._running = False  # accepting messages: started and neither closed nor given up
        self._supervising = False  # run() is executing
        self._closing = False
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()

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

    async def send(self, data: bytes) -> None:
        """Write ``data`` to the socket, or hold it until the next one opens.

        Calls are serialised, so messages leave in the order they were sent, buffered
        or not.
        """
        async with self._send_lock:
            if not self.running:
                self.stats.dropped_stopped += 1
                return
            ws = self._ws
            if self._live and ws is not None and ws.state is State.OPEN:
                try:
                    await ws.send(data)
                except ConnectionClosed:
                    self._live = False
                else:
                    self.stats.sent += 1
                    return
            dropped = self._buffer.push(data, self._clock())
            if dropped:
                log.warning(
                    "%s: outbound buffer full, dropped %d oldest (%d in all)",
                    self.url,
                    dropped,
                    self._buffer.overflowed,
                )

    async def close(self) -> None:
        """Stop for good: no more reconnects; close the open socket (code 1000)."""
        self._closing = True
        self._wake.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        dropped = self._buffer.clear()
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
                try:
                    ws = await connect(
                        self.url,
                        additional_headers=self._headers,
                        open_timeout=self._open_timeout,
                        **self._connect_kwargs,
                    )
                except (OSError, TimeoutError, EOFError, InvalidHandshake, ValueError) as exc:
                    disconnect = describe_failure(exc)
                else:
                    if self._closing:
                        await ws.close()
                        break
                    opened_at = self._clock()
                    self._ws = ws
                    self.stats.connects += 1
                    if not first:
                        self.stats.reconnects += 1
                    await self._hooks.link_connected(ws, first, attempt)
                    first = False
                    try:
                        await self._flush(ws)
                        await self._receive(ws)
                    finally:
                        self._live = False
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
                decision = self.policy.decide(disconnect, attempt, now - outage_since, self._rng)
                self.stats.last_disconnect = disconnect
                if not decision.retry:
                    self.stats.gave_up = decision.reason
                    self._running = False
                    self._live = False
                    lost = self._buffer.clear()
                    self.stats.dropped_stopped += lost
                    await self._hooks.link_gave_up(ended, disconnect, decision.reason)
                    return
                await self._hooks.link_reconnecting(disconnect, attempt, decision.delay)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), decision.delay)
        finally:
            self._supervising = False
            self._running = False
            self._live = False
            current, self._ws = self._ws, None
            if current is not None and current.state is not State.CLOSED:
                # Cancelled mid-connection: do not leave the socket behind.
                current.transport.abort()

    async def _flush(self, ws: ClientConnection) -> None:
        """Send everything held, in order, then let sends go straight to the socket."""
        async with self._send_lock:
            while True:
                data = self._buffer.peek(self._clock())
                if data is None:
                    break
                if ws.state is not State.OPEN:
                    return
                try:
                    await ws.send(data)
                except ConnectionClosed:
                    return  # kept at the head, for the next socket
                self._buffer.pop()
                self.stats.flushed += 1
            self._live = ws.state is State.OPEN

    async def _receive(self, ws: ClientConnection) -> None:
        """The one receive loop: every frame to the hooks until the socket ends.

        ``async for`` ends quietly on a 1000/1001 close; any other close raises. Either
        way the close is described afterwards from the socket itself.
        """
        with contextlib.suppress(ConnectionClosed):
            async for data in ws:
                try:
                    await self._hooks.link_frame(data)
                except Exception:
                    log.exception("%s: failed to handle an inbound frame", self.url)


def merge_codes(
    base: frozenset[int], add: Iterable[int] = (), remove: Iterable[int] = ()
) -> frozenset[int]:
    """``base`` with codes added and removed, for building a policy's code sets."""
    return (base | frozenset(add)) - frozenset(remove)


__all__ = [
    "GIVE_UP_CLOSE_CODES",
    "RETRY_CLOSE_CODES",
    "RETRY_HTTP_STATUSES",
    "Decision",
    "Disconnect",
    "LinkHooks",
    "OutboundBuffer",
    "ReconnectPolicy",
    "ReconnectStats",
    "ReconnectingLink",
    "describe_close",
    "describe_failure",
    "merge_codes",
]
