"""redis-py's ``PubSub`` as the listener's link, for URLs the raw connections do not
open: TLS (``rediss://``) and unix sockets, whose set-up is redis-py's to get right.

Slower than the raw link (a task step per message, see subscriber.py) but the same
to the listener: subscribe and unsubscribe return at once, their commands written
in order by one writer task; ``serve`` reads messages until the connection fails.
"""

import asyncio
import contextlib
from collections.abc import Collection
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bushub.broker.base import MessageHandler

# A failed write needs no handling of its own: the reader meets the same broken
# connection, and the next connection subscribes every channel.
_WRITE_FAILURES = (OSError, asyncio.TimeoutError, RedisError)


class PubSubLink:
    """One redis-py PubSub connection; open it with `PubSubLink.open`."""

    def __init__(self, pubsub: Any, on_message: MessageHandler) -> None:
        self.on_message = on_message
        self._pubsub = pubsub
        # (subscribe?, channels) in the order asked; one writer, so redis-py never
        # has two commands in flight on the connection.
        self._writes: asyncio.Queue[tuple[bool, tuple[str, ...]]] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write(), name="redis-pubsub-writer")

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
            self._writes.put_nowait((True, tuple(channels)))

    def unsubscribe(self, channels: Collection[str]) -> None:
        # Never empty: redis-py's unsubscribe() with no channel means all of them.
        if channels:
            self._writes.put_nowait((False, tuple(channels)))

    async def ping(self) -> None:
        """Wait until every command asked for so far is written. (redis-py answers
        a PING among the messages, which only ``serve`` reads.)"""
        await self._writes.join()

    async def serve(self) -> None:
        pubsub = self._pubsub
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None and message["type"] == "message":
                self.on_message(message["channel"].decode(), message["data"])

    async def aclose(self) -> None:
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        await self._pubsub.aclose()

    async def _write(self) -> None:
        pubsub = self._pubsub
        while True:
            subscribe, channels = await self._writes.get()
            try:
                with contextlib.suppress(*_WRITE_FAILURES):
                    if subscribe:
                        await pubsub.subscribe(*channels)
                    else:
                        await pubsub.unsubscribe(*channels)
            finally:
                self._writes.task_done()
