"""A raw pub/sub connection that hands each message over from the read callback.

redis-py's ``PubSub`` needs a task awaiting ``get_message()``, one task step per
delivered message on the relay's hot path. Here the event loop's ``data_received``
feeds hiredis and calls the message handler for every ``message`` push in what
arrived; the task that owns the connection only awaits its loss.
"""

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any, cast

import hiredis

from bushub.broker.base import MessageHandler
from bushub.broker.resp import ReplyError, auth_command, encode_command, set_keepalive

log = logging.getLogger(__name__)

# Channels per SUBSCRIBE/UNSUBSCRIBE command: a node with thousands of agents
# resubscribes in a few writes without building one huge command.
SUBSCRIBE_BATCH = 500

_CONFIRMATIONS = (b"subscribe", b"unsubscribe")


class Subscriber(asyncio.Protocol):
    """One pub/sub connection; open it with `Subscriber.open`.

    Args:
        on_message: Called with (channel, data) for every message, in order, from
            the event loop's read callback: it must not block.
    """

    def __init__(self, on_message: MessageHandler) -> None:
        self.on_message = on_message
        self._loop = asyncio.get_running_loop()
        # Errors come back as ReplyError instances rather than raised, so one
        # refused command does not lose the rest of what arrived.
        self._reader = hiredis.Reader(replyError=hiredis.ReplyError)
        self._transport: asyncio.Transport | None = None
        # Replies other than pushes (AUTH, PING), in the order asked for.
        self._waiters: deque[asyncio.Future[Any]] = deque()
        # Resolved with the cause (None: Redis closed it) once the connection is gone.
        self.lost: asyncio.Future[Exception | None] = self._loop.create_future()

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        on_message: MessageHandler,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 2.0,
    ) -> "Subscriber":
        """Connect (and AUTH), each step bounded by ``timeout``.

        Raises:
            ConnectionError: unreachable, or AUTH refused.
            TimeoutError: Redis did not answer in time.
        """
        loop = asyncio.get_running_loop()
        _, sub = await asyncio.wait_for(
            loop.create_connection(lambda: cls(on_message), host, port), timeout
        )
        try:
            login = auth_command(username, password)
            if login is not None:
                reply = await asyncio.wait_for(sub._ask(login), timeout)
                if reply != b"OK":
                    raise ReplyError(f"redis refused AUTH: {reply}")
        except BaseException:
            sub.close()
            raise
        return sub

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def subscribe(self, channels: Iterable[str]) -> None:
        """Write SUBSCRIBE for ``channels``; Redis confirms later (ignored)."""
        self._write_batched(b"SUBSCRIBE", channels)

    def unsubscribe(self, channels: Iterable[str]) -> None:
        """Write UNSUBSCRIBE for ``channels``."""
        self._write_batched(b"UNSUBSCRIBE", channels)

    async def ping(self) -> None:
        """Wait for a PING's answer: Redis has run every command written before it
        (all SUBSCRIBEs among them), so messages published from now on arrive."""
        reply = await self._ask(encode_command(b"PING"))
        if isinstance(reply, Exception):
            raise ReplyError(f"redis: {reply}")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _write_batched(self, command: bytes, channels: Iterable[str]) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # the owner resubscribes everything on the next connection
        names = [c.encode() for c in channels]
        transport.write(
            b"".join(
                encode_command(command, *names[i : i + SUBSCRIBE_BATCH])
                for i in range(0, len(names), SUBSCRIBE_BATCH)
            )
        )

    def _ask(self, command: bytes) -> "asyncio.Future[Any]":
        future: asyncio.Future[Any] = self._loop.create_future()
        transport = self._transport
        if transport is None or transport.is_closing():
            future.set_exception(ConnectionError("redis pub/sub connection closed"))
            return future
        self._waiters.append(future)
        transport.write(command)
        return future

    # ---- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass it.
        self._transport = cast(asyncio.Transport, transport)
        set_keepalive(transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        on_message = self.on_message
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                log.warning("redis pub/sub connection: %s", exc)
                self.close()
                return
            if reply is False:
                return
            if type(reply) is list and reply[0] == b"message":
                try:
                    on_message(reply[1].decode(), reply[2])
                except Exception:
                    # A handler's bug must not cost the subscription.
                    log.exception("message handler failed")
            elif not (type(reply) is list and reply[0] in _CONFIRMATIONS):
                self._answer(reply)

    def _answer(self, reply: Any) -> None:
        if self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(reply)
        elif isinstance(reply, Exception):
            # A refused SUBSCRIBE (ACL): that channel stays silent; say so.
            log.warning("redis pub/sub connection: %s", reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_exception(ConnectionError("redis pub/sub connection lost"))
                future.exception()  # the asker may have given up (timeout): no warning
        if not self.lost.done():
            self.lost.set_result(exc)


async def close_quietly(sub: Subscriber | None) -> None:
    """Close ``sub`` and let its ``connection_lost`` run."""
    if sub is None:
        return
    sub.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(sub.lost), 1.0)
