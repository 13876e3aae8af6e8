"""One agent socket's state: who it is, and its bounded outbound queue.

The queue is bounded in bytes. A consumer that falls behind the bound is closed
rather than silently starved (a slow connection never delays others on the node).
"""

import itertools
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import TYPE_CHECKING, Protocol

from bushub.auth import OPEN_GRANT, Grant
from bushub.closecodes import CloseCode
from bushub.lightsync import Flag
from bushub.limits import TokenBucket
from buswire import Dialect, Format

if TYPE_CHECKING:
    from bushub.sessions import Session

_ids = itertools.count(1)
_MAX_ROUTES = 64
_PROCESS_TAG = f"{os.getpid():x}{int(time.time() * 1000) % 0xFFFFFF:06x}"


def new_connection_id(node_id: str) -> str:
    """A cluster-unique connection id: node, process incarnation, sequence."""
    return f"{node_id}.{_PROCESS_TAG}.{next(_ids)}"


class State(Enum):
    """Where a socket is in its life; each transition is one assignment here.

    CLAIMING -> OPEN -> (DRAINING ->) CLOSING -> CLOSED, and from any state before
    CLOSED straight to CLOSING when the hub closes without flushing or the socket ends
    under it.
    """

    CLAIMING = auto()  # handshake under way: claiming the agent name
    OPEN = auto()  # accepted and served
    DRAINING = auto()  # closing after what is queued has been written (SIGTERM)
    CLOSING = auto()  # ending now: nothing more is written
    CLOSED = auto()  # forgotten by the hub


class Enqueued(Enum):
    """What ``Connection.enqueue`` did with a frame."""

    QUEUED = auto()  # for the writer task
    SENT = auto()  # written to the socket's transport at once (direct path)
    FULL = auto()  # over the byte bound: the caller closes the slow consumer
    CLOSING = auto()  # the socket is being closed: the frame is lost


class Outlet(Protocol):
    """A socket that takes frames synchronously (see ``bushub.wsprotocol``)."""

    def send_frame(self, payload: bytes) -> bool:
        """Write one frame now; False once the socket no longer takes data."""

    def takes_frames(self) -> bool:
        """False while the transport is over its high-water mark (flow control)."""

    def keepalive_check(self) -> bool:
        """Once per keepalive interval: ping a client silent since the last check;
        False when it stayed silent through a whole interval after such a ping."""


class ClientGone(Exception):
    """The client of a handshake hung up before its claim was written."""


@dataclass(frozen=True, slots=True)
class ConnectionParams:
    """What the client asked for in the connection URL.

    Attributes:
        agent: The agent name this socket holds.
        peer: The agent untargeted messages go to, and whose presence is announced.
        format: The declared encoding; ``format_declared`` is False when defaulted.
        dialect: None for ``auto``: announce in both until a message shows which.
        close_on_peer_lost: ``on_peer_lost=close``.
    """

    agent: str
    peer: str | None
    format: Format
    format_declared: bool
    dialect: Dialect | None
    close_on_peer_lost: bool


class Connection:
    """An accepted agent socket, as the hub sees it.

    Slotted: with more attributes than CPython 3.11 shares between instances' dicts
    (30), every connection carried a dict of its own, ~1.6 KB of a node's ~13 KB
    per idle socket.
    """

    __slots__ = (
        "_drained_close",
        "_queue",
        "_queue_bound",
        "_queue_limit",
        "_queued_bytes",
        "_room",
        "_wakeup",
        "agent",
        "announced_holder",
        "byte_rate",
        "claim_seen",
        "client_close_code",
        "client_gone",
        "close_code",
        "close_on_peer_lost",
        "closed",
        "closing",
        "dialect",
        "dropped",
        "format",
        "format_confirmed",
        "format_declared",
        "frame_rate",
        "grant",
        "id",
        "message_rate",
        "messages_in",
        "messages_out",
        "outlet",
        "peer",
        "routes",
        "sending",
        "session",
        "since",
        "socket_close_code",
        "sources",
        "state",
        "subscribed",
        "throttle",
    )

    def __init__(
        self,
        conn_id: str,
        params: ConnectionParams,
        *,
        queue_bytes: int,
        grant: Grant,
        message_rate: TokenBucket,
        byte_rate: TokenBucket,
        frame_rate: TokenBucket | None = None,
    ) -> None:
        self.id = conn_id
        self.grant = grant
        self.message_rate = message_rate
        self.byte_rate = byte_rate
        # Frames that are not messages, and frames dropped (``EXTRA_FRAMES_PER_MESSAGE``).
        self.frame_rate = frame_rate or TokenBucket(0)
        # Set where reading can be held (the direct path): holds it until the frame
        # and byte budgets allow a frame again.
        self.throttle: Callable[[], None] | None = None
        self.agent = params.agent
        self.peer = params.peer
        self.format = params.format
        self.format_declared = params.format_declared
        self.format_confirmed = False
        self.dialect = params.dialect
        self.close_on_peer_lost = params.close_on_peer_lost
        self.since = time.time()
        # This socket's own counts, for the console (the metrics are per node).
        self.messages_in = 0
        self.messages_out = 0
        self.dropped = 0
        # Set when the handshake named a session (bushub.sessions): frames are framed.
        self.session: Session | None = None
        # The holder of the peer name last announced to this client, so that a
        # refresh of the same holder is not announced twice.
        self.announced_holder: str | None = None
        # Set once this connection's own claim came back on its presence channel:
        # claims seen after it are newer and win.
        self.claim_seen = False
        # Set while it holds a want of its message channel (from its claim on).
        self.subscribed = False
        self.state = State.CLAIMING
        # Why the hub closes it, once it does.
        self.close_code: CloseCode | None = None
        # The code the client closed with, when it closed first.
        self.client_close_code: int | None = None
        # The close the hub's WebSocket layer sent on its own (a protocol error, a
        # text frame that is not UTF-8, a failure routing a frame), if it did.
        self.socket_close_code: CloseCode | None = None
        # Signals for those who wait on the state: set on entering CLOSED, and when
        # the socket is to end now (a close that must not wait for the writer, a
        # drained queue, or on the direct path any end at all).
        self.closed = Flag()
        self.closing = Flag()
        # The direct path: frames go straight to the transport while it takes
        # them, and wait in _queue while it does not; None: the writer task
        # drains _queue.
        self.outlet: Outlet | None = None
        # Until its claim is written: whether its client has hung up already (the
        # endpoint sets it from the transport, and lets it go after the claim).
        self.client_gone: Callable[[], bool] | None = None
        # Targets this socket may send to, checked once: target -> channel.
        self.routes: dict[str, str] = {}
        # Sources its messages may carry, checked once: source -> allowed; None when
        # auth is off and any source goes.
        self.sources: dict[str, bool] | None = None if grant is OPEN_GRANT else {}
        # The frame being written right now, if any.
        self.sending: tuple[bytes, float] | None = None
        # Frames waiting for the writer task, or on the direct path for the
        # transport to resume writing; made lazily (most sockets never need it).
        self._queue: deque[tuple[bytes, float]] | None = None
        self._queued_bytes = 0
        self._queue_bound = queue_bytes
        # The bound, or more while a resume's replay is queued (``make_room``).
        self._queue_limit = queue_bytes
        # Set when the queue is back within its bound (``room``); made lazily.
        self._room: Flag | None = None
        self._wakeup = Flag()
        # Frames are still taken after a drain was asked for: the drain waits for
        # them (bounded by --drain-timeout).
        self._drained_close = False

    @property
    def runner(self) -> str:
        """Who peers announce this socket as: the connection, or its session (a
        resumed session is the same agent to its peers; a gap makes it a new one)."""
        session = self.session
        return self.id if session is None else session.runner

    def remember_route(self, target: str, channel: str) -> str:
        """Keep a checked target's channel (bounded: a client may name many)."""
        if len(self.routes) >= _MAX_ROUTES:
            self.routes.clear()
        self.routes[target] = channel
        return channel

    @property
    def ending(self) -> bool:
        """The hub is closing the socket, or its client has gone: nothing more is
        to be written to it but what is queued."""
        return self.close_code is not None or self.closing.is_set()

    @property
    def flush_before_close(self) -> bool:
        """The hub closes this socket after writing what is queued (a drain)."""
        return self._drained_close

    def opened(self) -> None:
        """The hub accepted the socket and serves it."""
        if self.state is State.CLAIMING:
            self.state = State.OPEN

    def forgotten(self) -> None:
        """The hub let go of the socket."""
        self.state = State.CLOSED
        self.closed.set()
        if self._room is not None:
            self._room.set()

    def _end_now(self) -> None:
        if self.state is not State.CLOSED:
            self.state = State.CLOSING
        self.closing.set()
        if self._room is not None:
            self._room.set()

    def may_send_as(self, source: str) -> bool:
        """True if the grant lets this socket send messages from ``source``.

        A message's source is whoever a receiver believes sent it, so with auth on
        it must be a name the token could hold (the proxy forwards its other local
        agents' messages too: their names belong in the token's ``agents``). The
        answer is kept per source (bounded, as routes are): glob matching on every
        frame would cost more than the rest of the routing.
        """
        sources = self.sources
        if sources is None:
            return True
        allowed = sources.get(source)
        if allowed is None:
            if len(sources) >= _MAX_ROUTES:
                sources.clear()
            allowed = sources[source] = self.grant.may_hold(source)
        return allowed

    def socket_ended(self, code: int, sent_close: CloseCode | None = None) -> None:
        """The socket ended under the hub (direct path): end the connection now.

        Args:
            code: The code of the end: the client's close code, 1005/1006 when it
                vanished, or ``sent_close``.
            sent_close: The close the hub's WebSocket layer sent on its own; None
                when the client closed or vanished.
        """
        if sent_close is not None:
            self.socket_close_code = sent_close
        elif self.client_close_code is None:
            self.client_close_code = code
        self._end_now()

    def __repr__(self) -> str:
        return f"<Connection {self.id} agent={self.agent} peer={self.peer}>"

    def enqueue(self, payload: bytes, received_at: float) -> Enqueued:
        """Queue a frame for the writer.

        Args:
            payload: The bytes to send, already in this connection's format.
            received_at: Wall-clock receive time on the first hub, 0 for frames the
                hub made itself (no latency is measured for those).

        Returns:
            What became of the frame. On the direct path a frame is written at once
            (``SENT``) while the transport takes more; past its high-water mark
            frames wait here (``QUEUED``) until the transport resumes writing.
        """
        if self.close_code is not None and not self.flush_before_close:
            return Enqueued.CLOSING
        outlet = self.outlet
        if outlet is not None and not self._queue and outlet.takes_frames():
            return Enqueued.SENT if outlet.send_frame(payload) else Enqueued.CLOSING
        if self._queued_bytes + len(payload) > self._queue_limit:
            return Enqueued.FULL
        if self._queue is None:
            self._queue = deque()
        self._queue.append((payload, received_at))
        self._queued_bytes += len(payload)
        self._wakeup.set()
        return Enqueued.QUEUED

    def request_close(self, code: CloseCode, *, flush: bool = False) -> None:
        """Ask for the socket to be closed; the first reason given wins.

        Args:
            code: The close code to send.
            flush: Send what is queued first (draining). Without it the connection
                ends at once, even while the writer is stuck on a client that
                does not read.
        """
        if self.close_code is None:
            self.close_code = code
            self._drained_close = flush
            if flush and self.state in (State.CLAIMING, State.OPEN):
                self.state = State.DRAINING
            if not flush or (self.outlet is not None and not self._queue):
                # On the direct path a drain ends once the queue is empty (drained()).
                self._end_now()
        self._wakeup.set()

    def drained(self) -> None:
        """A draining socket's queue is empty: it ends now."""
        if self.state is State.DRAINING:
            self._end_now()

    def make_room(self, extra: int) -> None:
        """Let ``extra`` bytes more than ``--queue-bytes`` wait here, until the queue
        is back within it: a page of what a session's stream kept is written at once,
        and a socket that reads as fast as it can must not be closed as a slow
        consumer for it."""
        self._queue_limit = max(self._queue_limit, self._queued_bytes + extra + self._queue_bound)

    async def room(self) -> None:
        """Return once the queue is back within ``--queue-bytes`` (at once if it is),
        or the socket is to end: a replay waits here between two pages for a slow
        reader, instead of holding the whole backlog in the node's memory."""
        while (
            self._queued_bytes > self._queue_bound
            and not self.closing.is_set()
            and self.state is not State.CLOSED
        ):
            room = self._room
            if room is None:
                room = self._room = Flag()
            room.clear()
            await room.wait()

    def pop(self) -> tuple[bytes, float] | None:
        """The next frame to write, or None if none is queued."""
        if not self._queue:
            return None
        item = self._queue.popleft()
        self._queued_bytes -= len(item[0])
        if self._queued_bytes <= self._queue_bound:
            self._queue_limit = self._queue_bound
            if self._room is not None:
                self._room.set()
        return item

    async def wait_for_frames(self) -> bool:
        """Wait until a frame is queued; False once the socket should close instead."""
        while True:
            if self.close_code is not None and not (self.flush_before_close and self._queue):
                return False
            if self._queue:
                return True
            self._wakeup.clear()
            await self._wakeup.wait()

    def unsent(self) -> int:
        """Frames that will never be written: still queued, or cut off mid-send."""
        return len(self._queue or ()) + (1 if self.sending is not None else 0)
