"""A single Redis (or a primary behind a proxy) as the broker.

One command connection pool for publishes and records, one pub/sub connection
owned by a listener task. When Redis goes away the listener retries with jittered
backoff and, once back, resubscribes every channel the hub still wants.
"""

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bushub.broker.base import Broker
from bushub.broker.resp import PublishConnection

log = logging.getLogger(__name__)

# A publish batch that takes longer than this is treated as Redis being away.
_PUBLISH_SECONDS = 3.0

# redis-py retries a failed connection with seconds of backoff by default, which
# hides an outage from the listener and the publisher; both retry on their own.
NO_RETRY = Retry(NoBackoff(), 0)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


@contextlib.contextmanager
def unreachable_as_connection_error() -> Iterator[None]:
    """Present every way Redis can be out of reach as the builtin ConnectionError,
    which is what the Broker interface promises callers."""
    try:
        yield
    except ConnectionError:
        raise  # already the builtin (PartialPublish among them): keep what it says
    except UNREACHABLE as exc:
        raise ConnectionError(f"redis: {type(exc).__name__}: {exc}") from exc


# Store the record if nobody holds the key or the same connection still does.
REFRESH_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if (not v) or string.sub(v, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' ' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

# Delete the record only if this connection still holds it.
RELEASE_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' ' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisBroker(Broker):
    """Pub/sub and presence records on one Redis.

    Args:
        url: ``redis://`` or ``rediss://`` URL.
        control_channel: Always subscribed, so the listener always has a
            subscription to block on.
        backoff_max: Longest wait between reconnect attempts, seconds.
    """

    def __init__(self, url: str, *, control_channel: str, backoff_max: float = 0.5) -> None:
        super().__init__()
        self._url = url
        # A blocking pool: when thousands of sockets connect at once, presence
        # commands wait for a connection instead of failing with "too many
        # connections" (which would read as Redis being down).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=5.0,
            socket_connect_timeout=2.0,
            socket_keepalive=True,
            health_check_interval=0,
            retry=NO_RETRY,
        )
        self._client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        # Plain TCP URLs publish over a raw connection (see resp.py); TLS and unix
        # sockets keep redis-py's pipeline.
        params = parse_url(url)
        self._publisher: PublishConnection | None = None
        if url.startswith("redis://"):
            self._publisher = PublishConnection(
                params.get("host", "localhost"),
                int(params.get("port", 6379)),
                username=params.get("username"),
                password=params.get("password"),
            )
        self._refresh = self._client.register_script(REFRESH_SCRIPT)
        self._release = self._client.register_script(RELEASE_SCRIPT)
        self._channels: set[str] = {control_channel}
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        # One command at a time on the pub/sub connection: redis-py opens it
        # lazily, and two concurrent first commands would each open one, leaving
        # subscriptions on a connection nobody reads.
        self._lock = asyncio.Lock()
        self._up = False
        self._closed = False
        self._backoff_max = backoff_max

    @property
    def up(self) -> bool:
        return self._up

    @property
    def description(self) -> str:
        pool = self._client.connection_pool.connection_kwargs
        return f"redis {pool.get('host', '?')}:{pool.get('port', '?')}/{pool.get('db', 0)}"

    async def start(self) -> None:
        await self._client.ping()
        ready = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(self._listen(ready), name="redis-listener")
        await ready

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._publisher is not None:
            await self._publisher.close()
        await self._client.aclose()

    def _set_up(self, up: bool) -> None:
        if up != self._up:
            self._up = up
            self._on_state(up)

    async def _listen(self, ready: "asyncio.Future[None]") -> None:
        """Own the pub/sub connection for the broker's whole life."""
        delay = 0.05
        first = True
        while not self._closed:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                async with self._lock:
                    # Under the lock, so subscribe()/unsubscribe() calls wait for
                    # this connection and then apply their change on it.
                    await pubsub.subscribe(*self._channels)
                    self._pubsub = pubsub
                if not first:
                    # Pooled command connections died with the old server: drop them
                    # now, or the first commands after the outage fail on them.
                    await self._client.connection_pool.disconnect()
                    if self._publisher is not None:
                        await self._publisher.close()
                    log.warning(
                        "redis reachable again; resubscribed %d channels", len(self._channels)
                    )
                first = False
                self._set_up(True)
                if not ready.done():
                    ready.set_result(None)
                delay = 0.05
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is not None and message["type"] == "message":
                        self._on_message(message["channel"].decode(), message["data"])
            except (*UNREACHABLE, RedisError) as exc:
                self._pubsub = None
                self._set_up(False)
                log.warning("redis unreachable (%s); retrying in %.2fs", type(exc).__name__, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, self._backoff_max)
            finally:
                self._pubsub = None
                await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        if self._publisher is not None:
            with unreachable_as_connection_error():
                async with asyncio.timeout(_PUBLISH_SECONDS):
                    return await self._publisher.publish_many(items)
        with unreachable_as_connection_error():
            async with self._client.pipeline(transaction=False) as pipe:
                for channel, data in items:
                    pipe.publish(channel, data)
                results: list[int] = await pipe.execute()
                return results

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        async with self._lock:
            if self._pubsub is not None:
                # On failure the listener resubscribes everything when it reconnects.
                with contextlib.suppress(*UNREACHABLE):
                    await self._pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        async with self._lock:
            if self._pubsub is not None:
                with contextlib.suppress(*UNREACHABLE):
                    await self._pubsub.unsubscribe(channel)

    async def put_record(self, key: str, value: bytes, ttl: float) -> None:
        with unreachable_as_connection_error():
            await self._client.set(key, value, px=max(1, int(ttl * 1000)))

    async def refresh_records(
        self, items: Sequence[tuple[str, str, bytes]], ttl: float
    ) -> list[bool]:
        if not items:
            return []
        ttl_ms = max(1, int(ttl * 1000))
        with unreachable_as_connection_error():
            async with self._client.pipeline(transaction=False) as pipe:
                for key, conn, value in items:
                    await self._refresh(keys=[key], args=[conn, value, ttl_ms], client=pipe)
                results = await pipe.execute()
        return [bool(r) for r in results]

    async def delete_record(self, key: str, conn: str) -> None:
        with unreachable_as_connection_error():
            await self._release(keys=[key], args=[conn])

    async def get_records(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with unreachable_as_connection_error():
            values = await self._client.mget(list(keys))
        return [v.encode() if isinstance(v, str) else v for v in values]

    async def scan_records(self, pattern: str) -> list[bytes]:
        with unreachable_as_connection_error():
            keys = [key async for key in self._client.scan_iter(match=pattern, count=500)]
        return [v for v in await self.get_records(keys) if v is not None]


__all__ = ["RedisBroker", "RedisError"]
