"""redis-py's ``PubSub`` as the listener's link, for URLs the raw connections do not
open: TLS (``rediss://``) and unix sockets, whose set-up is redis-py's to get right.

Slower than the raw link (a task step per message, see subscriber.py) but the same
to the listener: subscribe and unsubscribe return at once, their commands written
in order by one writer task, everything asked since its last write in one go
(``written`` returns once it is written: a claim published on another connection
must not reach Redis before the subscription that hears it); a ``ping`` is
answered once Redis has run everything written before it; a SUBSCRIBE Redis
refuses fails the ``ping`` behind it or, with none waiting, is reported to
``on_refused`` while the connection goes on delivering what it holds (as on the
raw link: one refused channel must not deafen the node). One reader task, started
with the link, reads everything the connection brings.
"""

import asyncio
import collections
import contextlib
import logging
from collections.abc import Collection
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from bushub.broker.base import MessageHandler, RefusedHandler
from bushub.broker.subscriber import SUBSCRIBE_BATCH

log = logging.getLogger(__name__)

# A failed write needs no handling of its own: the reader meets the same broken
# connection, and the next connection subscribes every channel.
_WRITE_FAILURES = (OSError, asyncio.TimeoutError, RedisError)

# What the writer is asked: (subscribe), (unsubscribe) channels, or a PING.
_SUBSCRIBE, _UNSUBSCRIBE, _PING = "subscribe", "unsubscribe", "ping"


class PubSubLink:
    """One redis-py PubSub connection; open it with `PubSubLink.open`.

    Attributes:
        on_refused: Called with an error reply no ``ping`` was waiting for: a
            SUBSCRIBE refused after the connection was confirmed (logged either way).
    """

    def __init__(self, pubsub: Any, on_message: MessageHandler) -> None:
        self.on_message = on_message
        self.on_refused: RefusedHandler | None = None
        # Messages and replies read so far: life, for the liveness watch.
        self.reads = 0
        self._pubsub = pubsub
        # In the order asked; one writer, so redis-py never has two commands in
        # flight on the connection.
        self._writes: asyncio.Queue[tuple[str, tuple[str, ...]]] = asyncio.Queue()
        # One per PING written, oldest first: Redis answers in order, so the first
        # pong or error reply that comes back belongs to the oldest.
        self._pings: collections.deque[asyncio.Future[None]] = collections.deque()
        self._writer = asyncio.create_task(self._write(), name="redis-pubsub-writer")
        self._reader = asyncio.create_task(self._read(), name="redis-pubsub-reader")

    @classmethod
    async def open(cls, client: aioredis.Redis, on_message: MessageHandler) -> "PubSubLink":
        """Connect now, so that an unreachable Redis fails here (redis-py would
        otherwise connect on the first command)."""
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.connect()  # type: ignore[no-untyped-call, unused-ignore]
        except BaseException:
            await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call, unused-ignore]
            raise
        return cls(pubsub, on_message)

    def subscribe(self, channels: Collection[str]) -> None:
        if channels:
            self._writes.put_nowait((_SUBSCRIBE, tuple(channels)))

    def unsubscribe(self, channels: Collection[str]) -> None:
        # Never empty: redis-py's unsubscribe() with no channel means all of them.
        if channels:
            self._writes.put_nowait((_UNSUBSCRIBE, tuple(channels)))

    async def ping(self) -> None:
        """Queue a PING behind every command asked for so far (at the call, as the raw
        link writes it); awaited, its answer: Redis has run them all.

        Raises:
            RedisError: a SUBSCRIBE before it was refused (NOPERM...).
            ConnectionError: the connection ended first.
        """
        if self._reader.done():
            raise ConnectionError("redis pub/sub connection lost")
        answered = asyncio.get_running_loop().create_future()
        self._pings.append(answered)
        self._writes.put_nowait((_PING, ()))
        await answered

    async def written(self) -> None:
        """Return once every command asked for so far is written to the connection
        (or given up: a write that failed, the link closed)."""
        await self._writes.join()

    async def serve(self) -> None:
        """Wait for the connection to end (the reader delivers meanwhile).

        Raises:
            Why it ended: an OSError, a timeout, or one of redis-py's errors.
        """
        await asyncio.shield(self._reader)
        raise ConnectionError("redis pub/sub connection closed")

    async def aclose(self) -> None:
        for task in (self._writer, self._reader):
            task.cancel()
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)
        # What was never written never will be: nobody waits on it.
        while not self._writes.empty():
            self._writes.get_nowait()
            self._writes.task_done()
        await self._pubsub.aclose()

    async def _read(self) -> None:
        pubsub = self._pubsub
        try:
            while True:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                except ResponseError as refusal:
                    # A whole error reply was read: the connection is still in step.
                    self.reads += 1
                    self._refused(refusal)
                    continue
                if message is None:
                    continue
                self.reads += 1
                kind = message["type"]
                if kind == "message":
                    try:
                        self.on_message(message["channel"].decode(), message["data"])
                    except Exception:
                        # A handler's bug must not cost the subscription.
                        log.exception("message handler failed")
                elif kind == "pong":
                    self._answer(None)
        except BaseException as ended:
            self._end(ended)
            raise

    def _refused(self, refusal: ResponseError) -> None:
        if self._pings:
            self._answer(refusal)
            return
        log.warning("redis pub/sub connection: %s", refusal)
        if self.on_refused is not None:
            self.on_refused(refusal)

    def _answer(self, error: Exception | None) -> None:
        if not self._pings:
            return  # a pong nobody asked for (redis-py's own health check)
        answered = self._pings.popleft()
        if answered.done():
            return  # its waiter gave up (timed out, cancelled)
        if error is None:
            answered.set_result(None)
        else:
            answered.set_exception(error)

    def _end(self, cause: BaseException) -> None:
        """The connection is over: every PING still waiting fails with it."""
        while self._pings:
            answered = self._pings.popleft()
            if not answered.done():
                answered.set_exception(ConnectionError(f"redis pub/sub connection lost: {cause!r}"))

    async def _write(self) -> None:
        pubsub = self._pubsub
        while True:
            # Everything asked since the last write, in one go: one command at a time,
            # a storm's subscriptions reached Redis after the claims that needed them.
            asked = [await self._writes.get()]
            while not self._writes.empty():
                asked.append(self._writes.get_nowait())
            try:
                for what, channels in _merged(asked):
                    with contextlib.suppress(*_WRITE_FAILURES):
                        if what == _SUBSCRIBE:
                            await pubsub.subscribe(*channels)
                        elif what == _UNSUBSCRIBE:
                            await pubsub.unsubscribe(*channels)
                        else:
                            await pubsub.ping()
            finally:
                for _ in asked:
                    self._writes.task_done()


def _merged(asked: list[tuple[str, tuple[str, ...]]]) -> list[tuple[str, tuple[str, ...]]]:
    """Consecutive subscribes (or unsubscribes) as one command of at most
    ``SUBSCRIBE_BATCH`` channels, in the order asked; each PING on its own."""
    merged: list[tuple[str, tuple[str, ...]]] = []
    for what, channels in asked:
        if merged and what != _PING and merged[-1][0] == what:
            last = merged[-1][1]
            if len(last) + len(channels) <= SUBSCRIBE_BATCH:
                merged[-1] = (what, last + channels)
                continue
        merged.append((what, channels))
    return merged
