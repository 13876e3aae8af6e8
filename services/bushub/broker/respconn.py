"""One raw RESP connection to Redis, driven by the event loop's callbacks.

The publisher (resp.py) and the pub/sub subscriber (subscriber.py) are both this: a
TCP connection opened with keepalive and a bounded connect, logged in with the
URL's credentials, whose bytes hiredis parses in ``data_received``, every reply
handed to the subclass there and then (a reply wakes no task); replies to commands
awaited together come off one FIFO, in the order asked; and ``lost`` resolves with
the cause once the socket is gone, which is all the task owning one awaits.
"""

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, cast

import hiredis

from bushub.broker.credentials import Credentials

log = logging.getLogger(__name__)

C = TypeVar("C", bound="RespConnection")


class ReplyError(ConnectionError):
    """Redis refused the connection set-up (AUTH)."""


def encode_command(*parts: bytes) -> bytes:
    """Any command in RESP."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def auth_command(credentials: Credentials) -> bytes | None:
    """``AUTH [username] password`` in RESP; None when there is no login to send.

    As redis-py logs in: a user without a password (an ACL ``nopass`` user) is sent
    with an empty one, so every connection of a node is the same user.
    """
    username, password = credentials.username, credentials.password
    if not (username or password):
        return None
    user = [username.encode()] if username else []
    return encode_command(b"AUTH", *user, (password or "").encode())


def set_keepalive(transport: asyncio.BaseTransport) -> None:
    """Let the kernel notice a peer that vanished without a FIN (as redis-py's pool
    does with ``socket_keepalive``)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class Replies:
    """Raw replies awaited together: AUTH, a PING, a publish batch."""

    __slots__ = ("future", "replies", "size")

    def __init__(self, size: int, future: "asyncio.Future[list[Any]]") -> None:
        self.size = size
        self.replies: list[Any] = []
        self.future = future

    def add(self, reply: Any) -> bool:
        """Take one reply; True once all of them are in."""
        self.replies.append(reply)
        if len(self.replies) < self.size:
            return False
        if not self.future.done():  # cancelled: the caller gave up waiting
            self.future.set_result(self.replies)
        return True

    def fail(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
            # Retrieved or not, the caller has been told (or gave up): no warning.
            self.future.exception()


class ReplyCallback:
    """One command's raw reply handed to a function as it arrives (or the error that
    ended the connection first), for a reply nobody awaits: no future to make, and
    nothing left for a later turn of the event loop."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self.callback = callback

    def add(self, reply: Any) -> bool:
        try:
            self.callback(reply)
        except Exception:
            # The owner's bug must not cost the connection.
            log.exception("redis reply callback failed")
        return True

    def fail(self, exc: Exception) -> None:
        self.add(exc)


class RespConnection(asyncio.Protocol):
    """One TCP connection's state; open one with `open_connection`.

    A reconnect makes a new instance, so callbacks from an old socket never touch a
    new one's FIFO. Subclasses take each reply in `_on_reply`; those that answer a
    command go to `_answer`, which settles the head of ``waiting``.
    """

    # Names the connection in log lines and errors: "redis <what> connection".
    what = "raw"

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Errors come back as ReplyError instances, not raised: one refused command
        # answers that command only, and the stream stays in step.
        self._reader = hiredis.Reader(replyError=hiredis.ReplyError)
        self.transport: asyncio.Transport | None = None
        # What each reply that is not a push answers, in the order written: a
        # Replies here; subclasses may queue entries of their own (see `_on_reply`).
        self.waiting: deque[Any] = deque()
        # Resolved with the cause (None: Redis closed it) once the socket is gone.
        self.lost: asyncio.Future[Exception | None] = self._loop.create_future()
        # Reads so far: life, for a connection that only reads (broker.liveness).
        self.reads = 0

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    # ---- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass it.
        self.transport = cast(asyncio.Transport, transport)
        set_keepalive(transport)

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        reader = self._reader
        reader.feed(data)
        on_reply = self._on_reply
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                log.warning("redis %s connection: %s; reconnecting", self.what, exc)
                self.abort()
                return
            if reply is False:
                return
            on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        waiting, self.waiting = self.waiting, deque()
        reason = f": {exc}" if exc else ""
        error = ConnectionError(f"redis {self.what} connection lost{reason}")
        for entry in waiting:
            if type(entry) is Replies or type(entry) is ReplyCallback:
                entry.fail(error)
        if not self.lost.done():
            self.lost.set_result(exc)

    # ---- replies ------------------------------------------------------------

    def _on_reply(self, reply: Any) -> None:
        """Take one parsed reply, in arrival order, from the read callback."""
        self._answer(reply)

    def _answer(self, reply: Any) -> None:
        """A reply to a command: settles the head of ``waiting``."""
        waiting = self.waiting
        if not waiting:
            self._unasked(reply)
            return
        head = waiting[0]
        if head.add(reply):
            waiting.popleft()

    def _unasked(self, reply: Any) -> None:
        """A reply with nothing waiting for it."""
        log.warning("redis %s connection: unexpected reply %r", self.what, reply)

    # ---- writing ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write now; a subclass that buffers writes its buffer first."""
        if self.transport is not None:
            self.transport.write(data)

    def request(self, commands: bytes, size: int = 1) -> "asyncio.Future[list[Any]]":
        """Write ``size`` commands; their raw replies, error replies among them."""
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        if not self.is_open:
            # Nothing would ever answer: connection_lost has run, or will.
            future.set_exception(ConnectionError(f"redis {self.what} connection closed"))
            return future
        self.waiting.append(Replies(size, future))
        self.write(commands)
        return future

    # ---- ending -------------------------------------------------------------

    def close(self) -> None:
        """Close after writing what is buffered; replies still owed are lost."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the socket now (the reply stream cannot be trusted, or is not
        wanted)."""
        if self.transport is not None:
            self.transport.abort()

    async def aclose(self, timeout: float = 1.0) -> None:
        """Drop the socket and wait (bounded) for ``connection_lost`` to have run."""
        self.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.lost)


async def open_connection(
    factory: Callable[[], C],
    host: str,
    port: int,
    credentials: Credentials,
    timeout: float,
    db: int = 0,
) -> C:
    """Connect, log in and select ``db`` (a connection that runs scripts on keys must
    be on the URL's database), each step bounded by ``timeout``.

    Raises:
        OSError: Redis could not be reached.
        TimeoutError: Redis did not accept the connection, or answer AUTH or
            SELECT, in time.
        ReplyError: Redis refused AUTH or SELECT (what it said is in the message).
    """
    loop = asyncio.get_running_loop()
    # asyncio.timeout, not wait_for: on Python 3.11, wait_for met by a cancel in the
    # same loop turn as the connect's failure raises the failure and loses the cancel,
    # and a node stopping while Redis was out of reach retried for good.
    async with asyncio.timeout(timeout):
        _, conn = await loop.create_connection(factory, host, port)
    try:
        login = auth_command(credentials)
        if login is not None:
            await _set_up(conn, login, "AUTH", timeout)
        if db:
            await _set_up(conn, encode_command(b"SELECT", b"%d" % db), f"SELECT {db}", timeout)
    except BaseException:
        conn.abort()
        raise
    return conn


async def _set_up(conn: RespConnection, command: bytes, what: str, timeout: float) -> None:
    """One step of a connection's set-up, answered OK within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            [reply] = await conn.request(command)
    except TimeoutError as exc:
        raise TimeoutError(f"{what} timed out") from exc
    if reply != b"OK":
        raise ReplyError(f"redis refused {what}: {reply}")
