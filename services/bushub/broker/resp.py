"""A raw Redis connection that only publishes, driven by the event loop's callbacks.

Two ways in, one FIFO of replies. ``publish_many`` sends a batch in one write and
awaits its replies (the queued path, and Redis Cluster's per-shard batches).
``publish_nowait`` is the hot path: it appends the command to a buffer written once
per event-loop iteration, and the reply, parsed by hiredis in ``data_received``,
calls the caller's ``done`` there. A message then costs no task step at all, where
awaiting a reader cost one wake-up per reply; redis-py's pipeline machinery
(command objects, response callbacks, pool round trips) cost more still. The
connection itself (connect, AUTH, parsing, loss) is respconn.py's.
"""

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from bushub.broker.base import PartialPublish, PublishDone
from bushub.broker.credentials import Credentials
from bushub.broker.respconn import ReplyCallback, ReplyError, RespConnection, open_connection
from bushub.broker.sessionscripts import Delivery

log = logging.getLogger(__name__)

_CRLF = b"\r\n"
_CONNECT_SECONDS = 2.0

# A message handed to ``publish_nowait``: (channel as given, data, done).
FastItem = tuple[bytes | str, bytes, PublishDone]
# Called with the fast-path messages a failed connection had not had acknowledged,
# oldest first: none of them is known to have been published.
LostHandler = Callable[[list[FastItem]], None]


def encode_publish(command: bytes, channel: bytes, data: bytes) -> bytes:
    """One publish command in RESP."""
    return b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(command),
        command,
        len(channel),
        channel,
        len(data),
        data,
    )


class _Connection(RespConnection):
    """One publish connection. ``waiting`` holds a FastItem per fast-path message and
    a Replies per group awaited together (a ReplyCallback per command answered by a
    callback), in the order written."""

    what = "publish"

    def __init__(self, owner: "PublishConnection", stall_seconds: float | None) -> None:
        super().__init__()
        self._owner = owner
        self.out: list[bytes] = []
        self._flush_scheduled = False
        self.ready = False  # authenticated: the fast path may use it
        self.retiring = False  # close once every reply is in
        self.closing = False
        self._replies = 0
        self._stall_seconds = stall_seconds
        self._stalled = 0.0
        self._seen = 0
        self._watchdog: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._stall_seconds is not None:
            self._watchdog = self._loop.call_later(self._stall_seconds / 3, self._watch)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.retiring and not self.waiting:
            self.close()

    def _on_reply(self, reply: Any) -> None:
        waiting = self.waiting
        if not waiting:
            if not self.closing:  # once is enough: the rest of what arrived is moot
                log.warning("redis publish connection: unexpected reply; reconnecting")
                self.abort()
            return
        self._replies += 1
        head = waiting[0]
        if type(head) is tuple:
            waiting.popleft()
            try:
                # An error reply is handed over as is: whether to retry or drop
                # depends on which (refusals.py).
                head[2](reply if type(reply) is int or isinstance(reply, Exception) else None)
            except Exception:
                # The owner's bug must not cost the connection (and re-send
                # everything behind this reply).
                log.exception("publish callback failed")
        elif head.add(reply):
            waiting.popleft()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ready = False
        self.closing = True
        self.out.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
        unacked: list[FastItem] = [e for e in self.waiting if type(e) is tuple]
        super().connection_lost(exc)  # fails the batches awaited
        self._owner._lost(self, unacked)

    # ---- writing ------------------------------------------------------------

    def buffer(self, header: bytes, data: bytes, entry: FastItem) -> None:
        """Queue one fast-path command (its data unjoined: the flush copies it once);
        written with the rest of this iteration's."""
        out = self.out
        out.append(header)
        out.append(data)
        out.append(_CRLF)
        self.waiting.append(entry)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def buffer_command(self, command: bytes, on_reply: Callable[[Any], None]) -> None:
        """One command, written with the rest of this iteration's; ``on_reply`` gets
        its reply (or the connection's end) as it arrives."""
        self.waiting.append(ReplyCallback(on_reply))
        self.out.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def write(self, data: bytes) -> None:
        """Write now, after anything buffered: the FIFO's order is the wire's."""
        self.out.append(data)
        self.flush()

    def flush(self) -> None:
        self._flush_scheduled = False
        transport = self.transport
        if self.out and transport is not None and not transport.is_closing():
            data = b"".join(self.out)
            self.out.clear()
            transport.write(data)

    # ---- ending -------------------------------------------------------------

    def _watch(self) -> None:
        """Replies owed and none arriving for ``stall_seconds``: Redis is stopped or
        the network silently gone. Treated as lost, like a publish batch's timeout."""
        assert self._stall_seconds is not None
        period = self._stall_seconds / 3
        if self.waiting and self._replies == self._seen:
            self._stalled += period
            if self._stalled >= self._stall_seconds:
                log.warning("redis publish connection: no reply for %.1fs", self._stalled)
                self.abort()
                return
        else:
            self._stalled = 0.0
        self._seen = self._replies
        self._watchdog = self._loop.call_later(period, self._watch)

    def close(self) -> None:
        """Close after writing what is buffered; replies still owed are lost."""
        self.ready = False
        self.closing = True
        if self.transport is not None:
            self.flush()
        super().close()

    def abort(self) -> None:
        """Drop the socket now (the reply stream cannot be trusted)."""
        self.ready = False
        self.closing = True
        super().abort()


class PublishConnection:
    """A lazily opened TCP connection for ``PUBLISH``/``SPUBLISH``.

    Args:
        host: Redis host.
        port: Redis port.
        command: ``PUBLISH`` or ``SPUBLISH``.
        username: ACL user, if any.
        password: Password, if any.
        db: The database selected once connected (the URL's; scripts touch keys).

    Attributes:
        on_lost: Called with the fast-path messages a failed connection had not had
            acknowledged; unset, they are only logged. (Attributes, not arguments,
            so the constructor's keywords stay the credentials Cluster passes.)
        stall_seconds: With replies owed and none arriving for this long, the
            connection is dropped as lost (at most a third of it sooner); unset,
            only the caller's timeout on ``publish_many`` applies.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        command: bytes = b"PUBLISH",
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
    ) -> None:
        self._address = (host, port)
        self._db = db
        self._command = command
        self._prefix = b"*3\r\n$%d\r\n%s\r\n" % (len(command), command)
        self._credentials = Credentials(username, password)
        self.on_lost: LostHandler | None = None
        # Set when sessions are on: messages for agents go through DELIVER.
        self.delivery: Delivery | None = None
        self.stall_seconds: float | None = None
        self._conn: _Connection | None = None
        # One connect at a time: two concurrent first batches would each open one.
        self._connect_lock = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        """True while the fast path can take messages."""
        conn = self._conn
        return conn is not None and conn.ready

    async def connect(self) -> None:
        """Open the connection now if it is not (``publish_many`` does so itself).

        Raises:
            ConnectionError: Redis could not be reached or refused AUTH.
        """
        await self._open()

    async def _open(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closing:
            return conn
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and not conn.closing:
                return conn
            try:
                new = await open_connection(
                    lambda: _Connection(self, self.stall_seconds),
                    *self._address,
                    self._credentials,
                    _CONNECT_SECONDS,
                    self._db,
                )
            except ReplyError:
                raise  # AUTH refused: already says so, with what Redis said
            except (OSError, TimeoutError) as exc:
                raise ConnectionError(f"redis publish connection: {exc!r}") from exc
            new.ready = True
            self._conn = new
            return new

    def publish_nowait(self, channel: bytes | str, data: bytes, done: PublishDone) -> bool:
        """Publish without waiting; False (nothing done) when not connected.

        Every command of one event-loop iteration goes out in one write. ``done`` is
        called from the reply, in order, with the subscriber count, or with the
        error reply (a ``hiredis.ReplyError``) where Redis refused it. If the
        connection fails first, the message is handed to ``on_lost`` instead;
        ``done`` is then never called.
        """
        conn = self._conn
        if conn is None or not conn.ready:
            return False
        raw = channel.encode() if isinstance(channel, str) else channel
        delivery = self.delivery
        header = None if delivery is None else delivery.header(raw, len(data), by_sha=True)
        if header is None:
            header = b"%s$%d\r\n%s\r\n$%d\r\n" % (self._prefix, len(raw), raw, len(data))
        conn.buffer(header, data, (channel, data, done))
        return True

    def _encode(self, channel: str, data: bytes) -> bytes:
        raw = channel.encode()
        delivery = self.delivery
        # The queued path sends the script's text: it also fills an emptied cache.
        header = None if delivery is None else delivery.header(raw, len(data), by_sha=False)
        if header is None:
            return encode_publish(self._command, raw, data)
        return header + data + _CRLF

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        """Publish in order; the number of subscribers reached by each message.

        Raises:
            PartialPublish: Redis refused some (MOVED after a slot moved, an ACL
                without the command...); says which, and with what error.
            ConnectionError: the connection failed (it is closed; the next call
                reconnects).
        """
        conn = await self._open()
        if not items:
            return []
        payload = b"".join(self._encode(c, d) for c, d in items)
        try:
            replies = await conn.request(payload, len(items))
        except asyncio.CancelledError:
            # Cut off mid-batch (a timeout): Redis is not answering, start over.
            conn.abort()
            raise
        # Every reply is read, errors too: Redis runs each command of a batch on its
        # own, so only the refused ones are retried or dropped, each by its error.
        counts: list[int | None] = []
        errors: list[object | None] = []
        for reply in replies:
            if type(reply) is int:
                counts.append(reply)
                errors.append(None)
            else:
                counts.append(None)
                errors.append(reply if isinstance(reply, Exception) else repr(reply))
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise PartialPublish(counts, str(first), errors)
        return [c for c in counts if c is not None]

    async def request(self, commands: bytes, size: int) -> list[Any]:
        """Send ``size`` commands other than publishes (already in RESP), after what
        is buffered; their replies, error replies among them.

        No timeout of its own: with ``stall_seconds`` set the connection is dropped
        when Redis stops answering, and this then raises.

        Raises:
            ConnectionError: the connection failed.
        """
        conn = await self._open()
        return await conn.request(commands, size)

    def command_nowait(self, command: bytes, on_reply: Callable[[Any], None]) -> bool:
        """One command other than a publish, without waiting for a connection:
        written with this event-loop iteration's publishes, in their order, its reply
        (an error reply or a ``ConnectionError`` among them) handed to ``on_reply``
        as it arrives; False (nothing written) when not connected."""
        conn = self._conn
        if conn is None or not conn.ready:
            return False
        conn.buffer_command(command, on_reply)
        return True

    def retire(self) -> None:
        """Take no more fast-path messages; close once the replies owed are in.

        For a connection that may be stale (Redis came back from an outage): an idle
        one closes at once and the next publish reconnects; one still owed replies
        either gets them (nothing re-sent twice) or fails and hands them back.
        """
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if conn.waiting:
            conn.ready = False
            conn.retiring = True
            # publish_many may still use it until it closes: same FIFO, same order.
            self._conn = conn
        else:
            conn.close()

    def _lost(self, conn: _Connection, unacked: list[FastItem]) -> None:
        if self._conn is conn:
            self._conn = None
        if not unacked:
            return
        if self.on_lost is None:
            log.warning("redis publish connection lost with %d unacknowledged", len(unacked))
            return
        try:
            self.on_lost(unacked)
        except Exception:
            log.exception("publish loss handler failed")

    async def close(self) -> None:
        """Close the connection; safe to call twice. Replies still owed are lost
        (fast-path messages go to ``on_lost`` once the socket is down)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            # Waits for connection_lost: the socket is gone (and on_lost called)
            # when this returns.
            await conn.aclose()
