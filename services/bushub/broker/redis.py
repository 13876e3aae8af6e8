"""A single Redis (or a primary behind a proxy) as the broker.

A command connection pool for records, a raw publish connection (resp.py) and a
raw pub/sub connection (subscriber.py) kept open by the listener (listener.py);
both raw ones run on the event loop's callbacks, so a relayed message costs no task
step here. TLS and unix-socket URLs publish on redis-py's pipeline and subscribe on
its PubSub (redispubsub.py). When Redis goes away the listener retries with
jittered backoff and, once back, resubscribes every channel the hub still wants;
the broker then drops its pooled and publish connections, which died with it.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    ClusterError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bushub.broker.base import Broker, MessageHandler, PartialPublish, PublishDone, StateHandler
from bushub.broker.coalesce import Coalesced
from bushub.broker.credentials import Credentials
from bushub.broker.listener import Listener
from bushub.broker.nodes import NodeRegistry
from bushub.broker.rawscripts import Script, arg_bytes, refused_or
from bushub.broker.redisnodes import RedisNodeRegistry
from bushub.broker.redispubsub import PubSubLink
from bushub.broker.refusals import BrokerRefused, ErrorKind, classify
from bushub.broker.resp import FastItem, PublishConnection
from bushub.broker.respconn import ReplyError, encode_command
from bushub.broker.sessionscripts import (
    DELIVER,
    DELIVER_SHA,
    TRIM_SCRIPT,
    Delivery,
    Reasserted,
    Resumed,
    SessionLimits,
    SessionScripts,
    TrimCalls,
    agent_of,
    trim_call,
)
from bushub.broker.startwait import until_reachable
from bushub.broker.subscriber import Subscriber
from bushub.stopping import cancelled

log = logging.getLogger(__name__)

# A publish batch that takes longer than this is treated as Redis being away; so
# is a publish connection owing replies that has received none for as long.
_PUBLISH_SECONDS = 3.0
# Bound on opening the pub/sub connection (each step: connect, AUTH).
_CONNECT_SECONDS = 2.0
# Bound on a subscription's write on redis-py's pub/sub connection (a connection
# that stopped taking writes fails on its own; the subscriber goes on without).
_SUBSCRIBE_WRITE_SECONDS = 2.0

# redis-py retries a failed connection with seconds of backoff by default, which
# hides an outage from the listener and the publisher; both retry on their own.
NO_RETRY = Retry(NoBackoff(), 0)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


@contextlib.contextmanager
def unreachable_as_connection_error() -> Iterator[None]:
    """Present every way Redis can be out of reach as the builtin ConnectionError,
    which is what the Broker interface promises callers; and an error reply
    (ACL, out of memory...) as BrokerRefused, a ConnectionError that says which."""
    try:
        yield
    except ConnectionError:
        raise  # already the builtin (PartialPublish among them): keep what it says
    except UNREACHABLE as exc:
        # A timeout says nothing of itself: its type is the message then.
        said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ConnectionError(f"redis: {said}") from exc
    except ResponseError as exc:
        raise BrokerRefused(exc) from exc
    except (ClusterError, RedisClusterException) as exc:
        # A cluster changing under the command: redirects past redis-py's retries while
        # a slot migrates ("TTL exhausted"), no node known for a slot. Out of reach for
        # now, as a failover is; it escaped every caller's handling before.
        raise ConnectionError(f"redis cluster: {type(exc).__name__}: {exc}") from exc


# What a refused login looks like: AUTH or SELECT refused on a raw connection, or
# redis-py's class for it (TLS and unix-socket URLs).
LOGIN_REFUSALS = (ReplyError, AuthenticationError)


def _refused_or(result: object) -> object:
    """A pipeline's per-command result, its error reply as BrokerRefused."""
    return BrokerRefused(result) if isinstance(result, ResponseError) else result


@contextlib.asynccontextmanager
async def guarded() -> AsyncIterator[None]:
    """`unreachable_as_connection_error` for an ``async with`` (the node registry)."""
    with unreachable_as_connection_error():
        yield


@contextlib.asynccontextmanager
async def on_publisher() -> AsyncIterator[None]:
    """A call on the publish connection: Redis out of reach as ConnectionError, and
    no longer than a publish batch may take."""
    with unreachable_as_connection_error():
        async with asyncio.timeout(_PUBLISH_SECONDS):
            yield


def ttl_ms(ttl: float | None) -> int:
    """A record's lifetime for the scripts, in ms; 0 for none (kept until deleted)."""
    return 0 if ttl is None else max(1, int(ttl * 1000))


# Store the record if the same connection still holds the key, or (ARGV[4] = 1)
# nobody does.
REFRESH_SCRIPT = """
local v = redis.call('GET', KEYS[1])
local mine = v and string.sub(v, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' '
if mine or ((not v) and ARGV[4] == '1') then
  if ARGV[3] == '0' then
    redis.call('SET', KEYS[1], ARGV[2])
  else
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  end
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


# Store a record and publish in one step (see Broker.claim_record).
CLAIM_SCRIPT = """
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return redis.call(ARGV[3], ARGV[4], ARGV[5])
"""


class RedisBroker(Broker):
    """Pub/sub and presence records on one Redis.

    Args:
        url: ``redis://`` or ``rediss://`` URL; ``user:password@`` in it logs every
            connection in (``requirepass``: the password alone).
        control_channel: Always subscribed, so the pub/sub connection is always in
            subscribed mode (and has a subscription to block on).
        backoff_max: Longest wait between reconnect attempts, seconds.
    """

    def __init__(self, url: str, *, control_channel: str, backoff_max: float = 0.5) -> None:
        super().__init__()
        self._url = url
        # A blocking pool: when thousands of sockets connect at once, presence
        # commands wait for a connection instead of failing with "too many
        # connections" (which would read as Redis being down).
        # (Keepalive is a TCP option: redis-py's unix-socket connection refuses it.)
        keepalive = {} if url.startswith("unix:") else {"socket_keepalive": True}
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=5.0,
            socket_connect_timeout=2.0,
            health_check_interval=0,
            retry=NO_RETRY,
            **keepalive,
        )
        self._client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        # Plain TCP URLs publish and subscribe over raw connections driven by the
        # event loop's callbacks (resp.py, subscriber.py); TLS and unix sockets
        # keep redis-py's pipeline and PubSub.
        params = parse_url(url)
        self._raw = url.startswith("redis://")
        self._address = (str(params.get("host", "localhost")), int(params.get("port", 6379)))
        # The pool reads the login from the URL; the raw connections are handed it.
        self._credentials = Credentials.from_url(url)
        self._publisher: PublishConnection | None = None
        if self._raw:
            self._publisher = PublishConnection(
                *self._address,
                username=self._credentials.username,
                password=self._credentials.password,
                # The delivery and acknowledgement scripts touch keys: the URL's database.
                db=int(params.get("db") or 0),
            )
            self._publisher.on_lost = self._publish_lost
            self._publisher.stall_seconds = _PUBLISH_SECONDS
        self._refresh = self._client.register_script(REFRESH_SCRIPT)
        self._release = self._client.register_script(RELEASE_SCRIPT)
        self._claim = self._client.register_script(CLAIM_SCRIPT)
        # The same two on the publish connection, where the batches of a storm's
        # handshakes go (no SCRIPT EXISTS round trip, no redis-py pipeline per batch).
        self._release_raw = Script(RELEASE_SCRIPT)
        self._claim_raw = Script(CLAIM_SCRIPT)
        self._sessions = SessionScripts(self._client)
        self._trim_calls = TrimCalls()
        self._delivery: Delivery | None = None
        self._nodes = RedisNodeRegistry(self._client, guarded, self._publisher)
        # What many handshakes ask at once goes as one command or one batch.
        self._reads = Coalesced(self._read_batch)
        self._puts = Coalesced(self._put_batch)
        self._claims = Coalesced(self._claim_batch)
        self._deletes = Coalesced(self._delete_batch)
        self._listener = Listener(
            "redis",
            self._connect if self._raw else self._connect_pubsub,
            on_up=self._subscribed,
            on_down=self._listener_down,
            backoff_max=backoff_max,
        )
        # Always subscribed, so the pub/sub connection always has one.
        self._listener.subscribe((control_channel,))
        self._listening: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._up = False
        self._closed = False

    @property
    def up(self) -> bool:
        return self._up

    @property
    def nodes(self) -> NodeRegistry:
        return self._nodes

    @property
    def channel_count(self) -> int:
        """Channels subscribed, the control channel among them (for leak checks)."""
        return len(self._listener.channels)

    @property
    def description(self) -> str:
        pool = self._client.connection_pool.connection_kwargs
        if "path" in pool:  # a unix socket
            return f"redis unix:{pool['path']}/{pool.get('db', 0)}"
        return f"redis {pool.get('host', '?')}:{pool.get('port', '?')}/{pool.get('db', 0)}"

    async def start(self) -> None:
        await until_reachable(self._reachable, self.description, UNREACHABLE, LOGIN_REFUSALS)
        self._ready = asyncio.get_running_loop().create_future()
        self._listening = asyncio.create_task(self._listener.run(), name="redis-listener")
        try:
            await self._ready
        except BaseException:
            # Refused (or stopped) before the first subscription: no listener left
            # retrying behind a start that failed.
            await cancelled(self._listening)
            raise

    async def _reachable(self) -> None:
        await self._client.ping()
        await self._load_delivery()

    def _listener_down(self, exc: BaseException) -> None:
        self._set_up(False)
        ready = self._ready
        if ready is not None and not ready.done() and isinstance(exc, LOGIN_REFUSALS):
            # A login refused before the node ever served is a setting to fix (a
            # wrong password, a password for a Redis that has none, a user without
            # access to the URL's database): the node stops at start-up saying so.
            # Refused later (a password rotated under it), it retries instead.
            ready.set_exception(exc)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listening is not None:
            await cancelled(self._listening)
        if self._publisher is not None:
            await self._publisher.close()
        await self._client.aclose()
        # A client given its pool does not close it: its sockets would be left to
        # the garbage collector (a ResourceWarning, and an unclean loop close).
        await self._client.connection_pool.disconnect()

    def set_handlers(self, on_message: MessageHandler, on_state: StateHandler) -> None:
        super().set_handlers(on_message, on_state)
        link = self._listener.link
        if link is not None:
            link.on_message = on_message

    def _set_up(self, up: bool) -> None:
        if up != self._up:
            self._up = up
            self._on_state(up)

    async def _connect(self) -> Subscriber:
        """A raw pub/sub connection (plain TCP URLs)."""
        host, port = self._address
        subscriber = await Subscriber.open(
            host,
            port,
            self._on_message,
            username=self._credentials.username,
            password=self._credentials.password,
            timeout=_CONNECT_SECONDS,
        )
        subscriber.on_refused = self._subscribe_refused
        return subscriber

    def _subscribe_refused(self, error: Exception) -> None:
        # Redis' refusal does not say which channel: the hub's health retries them all.
        # (Looked up at the call: the hub sets the handler after the broker is built.)
        self.on_subscribe_refused(error)

    async def _connect_pubsub(self) -> PubSubLink:
        """redis-py's PubSub (TLS and unix-socket URLs)."""
        link = await PubSubLink.open(self._client, self._on_message)
        link.on_refused = self._subscribe_refused
        return link

    async def _subscribed(self, again: bool) -> None:
        """Every channel is subscribed on a new pub/sub connection: the broker is up."""
        if again:
            # Pooled command connections died with the old server: drop them now,
            # or the first commands after the outage fail on them. The publish
            # connection too, once it owes no replies (see PublishConnection.retire).
            # Idle ones only: on TLS and unix-socket URLs the pub/sub connection just
            # confirmed is the pool's too, in use; dropping it failed the listener,
            # whose next connection dropped itself again here, for good.
            await self._client.connection_pool.disconnect(inuse_connections=False)
            if self._publisher is not None:
                self._publisher.retire()
            with contextlib.suppress(RedisError, *UNREACHABLE):
                await self._load_delivery()  # a restarted Redis has no scripts
        self._set_up(True)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        if self._publisher is not None:
            async with on_publisher():
                return await self._publisher.publish_many(items)
        with unreachable_as_connection_error():
            results = await self._pipelined(items, by_sha=True)
            # A Redis that lost its scripts (restarted, SCRIPT FLUSH) ran none of the
            # deliveries from the one that met NOSCRIPT on: those go again with the
            # script's text, in order (as on the raw path).
            again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if again:
                retried = await self._pipelined([items[i] for i in again], by_sha=False)
                for i, result in zip(again, retried, strict=True):
                    results[i] = result
        errors = [r if isinstance(r, Exception) else None for r in results]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            counts = [r if isinstance(r, int) else None for r in results]
            raise PartialPublish(counts, str(first), errors)
        return [int(r) for r in results]

    async def _pipelined(self, items: Sequence[tuple[str, bytes]], *, by_sha: bool) -> list[Any]:
        """``items`` through redis-py's pipeline (TLS and unix-socket URLs): a message
        for an agent by the delivery script once sessions are on (by its digest, or
        ``by_sha`` False its text), any other by PUBLISH. Each reply on its own, as on
        the raw path: a refused PUBLISH is that message's outcome, not the batch's."""
        async with self._client.pipeline(transaction=False) as pipe:
            delivery = self._delivery
            for channel, data in items:
                if delivery is not None and agent_of(channel.encode()) is not None:
                    if by_sha:
                        pipe.evalsha(DELIVER_SHA.decode(), 3, *delivery.args(channel, data))
                    else:
                        pipe.eval(DELIVER, 3, *delivery.args(channel, data, ask=True))
                else:
                    pipe.publish(channel, data)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    def publish_nowait(self, channel: str, data: bytes, done: PublishDone) -> bool:
        publisher = self._publisher
        return publisher is not None and publisher.publish_nowait(channel, data, done)

    def _publish_lost(self, items: list[FastItem]) -> None:
        """The publish connection failed with these unacknowledged: not known to be
        out, so each is reported as such (in order) for its owner to retry."""
        log.debug("publish connection lost; %d unacknowledged handed back", len(items))
        for _, _, done in items:
            done(None)

    async def subscribe(self, channel: str) -> None:
        # Written on the live connection (Redis confirms later); without one, the
        # listener subscribes every channel when it connects. Returns once written:
        # at once on the raw link, after its writer task on redis-py's.
        self._listener.subscribe((channel,))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SUBSCRIBE_WRITE_SECONDS):
                await self._listener.written()

    async def unsubscribe(self, channel: str) -> None:
        self._listener.unsubscribe((channel,))

    async def confirm_subscriptions(self) -> None:
        await self._listener.resubscribe()

    async def put_record(self, key: str, value: bytes, ttl: float | None) -> None:
        await self._puts((key, value, ttl_ms(ttl)))

    async def _put_batch(self, items: list[tuple[str, bytes, int]]) -> list[object]:
        if self._publisher is not None:
            commands = b"".join(
                encode_command(b"SET", arg_bytes(key), value, b"PX", b"%d" % lifetime)
                if lifetime
                else encode_command(b"SET", arg_bytes(key), value)
                for key, value, lifetime in items
            )
            async with on_publisher():
                replies = await self._publisher.request(commands, len(items))
            return refused_or(replies)
        with unreachable_as_connection_error():
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value, lifetime in items:
                    pipe.set(key, value, px=lifetime or None)
                results: list[object] = await pipe.execute(raise_on_error=False)
        return [_refused_or(r) for r in results]

    async def claim_record(
        self, key: str, value: bytes, ttl: float | None, channel: str, data: bytes
    ) -> None:
        await self._claims((key, [value, ttl_ms(ttl), "PUBLISH", channel, data]))

    async def _claim_batch(self, items: list[tuple[str, list[Any]]]) -> list[object]:
        if self._publisher is not None:
            calls = [([key], args) for key, args in items]
            async with on_publisher():
                return await self._claim_raw.run_many(self._publisher, calls)
        with unreachable_as_connection_error():
            async with self._client.pipeline(transaction=False) as pipe:
                for key, args in items:
                    await self._claim(keys=[key], args=args, client=pipe)
                results: list[object] = await pipe.execute(raise_on_error=False)
        return [_refused_or(r) for r in results]

    async def refresh_records(
        self, items: Sequence[tuple[str, str, bytes]], ttl: float | None, *, create: bool = True
    ) -> list[bool]:
        if not items:
            return []
        lifetime = ttl_ms(ttl)
        absent = int(create)
        with unreachable_as_connection_error():
            async with self._client.pipeline(transaction=False) as pipe:
                for key, conn, value in items:
                    args: list[str | bytes | int] = [conn, value, lifetime, absent]
                    await self._refresh(keys=[key], args=args, client=pipe)
                # Errors as results: raised, redis-py rewrites the reply's text into
                # "Command # 1 (EVALSHA ...) of pipeline caused error: ...".
                results = await pipe.execute(raise_on_error=False)
        refused = next((r for r in results if isinstance(r, Exception)), None)
        if refused is not None:
            raise BrokerRefused(refused)
        return [bool(r) for r in results]

    async def delete_record(self, key: str, conn: str) -> None:
        # Coalesced: a node whose sockets end together (a drain, a load balancer
        # restarted) deletes their records and claims in one pipeline an iteration.
        await self._deletes((key, conn))

    async def delete_records(self, items: Sequence[tuple[str, str]]) -> None:
        if not items:
            return
        results = await self._delete_batch(items)
        refused = next((r for r in results if isinstance(r, BrokerRefused)), None)
        if refused is not None:
            raise refused

    async def _delete_batch(self, items: Sequence[tuple[str, str]]) -> list[object]:
        if self._publisher is not None:
            calls = [([key], [conn]) for key, conn in items]
            async with on_publisher():
                return await self._release_raw.run_many(self._publisher, calls)
        with unreachable_as_connection_error():
            async with self._client.pipeline(transaction=False) as pipe:
                for key, conn in items:
                    await self._release(keys=[key], args=[conn], client=pipe)
                results = await pipe.execute(raise_on_error=False)
        return [_refused_or(r) for r in results]

    async def get_records(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return await self._reads(list(keys))

    async def _read_batch(self, reads: list[list[str]]) -> list[list[bytes | None]]:
        """Concurrent reads as one MGET (on the publish connection, after the writes
        before it)."""
        keys = [key for keys in reads for key in keys]
        if self._publisher is not None:
            async with on_publisher():
                [reply] = await self._publisher.request(
                    # str, or bytes as SCAN gives them (scan_records)
                    encode_command(b"MGET", *(arg_bytes(key) for key in keys)),
                    1,
                )
            if isinstance(reply, Exception):
                raise BrokerRefused(reply)
            values: list[Any] = reply
        else:
            with unreachable_as_connection_error():
                values = await self._client.mget(keys)
        out, start = [], 0
        for keys in reads:
            out.append(
                [v.encode() if isinstance(v, str) else v for v in values[start : start + len(keys)]]
            )
            start += len(keys)
        return out

    async def scan_records(self, pattern: str, most: int) -> list[bytes]:
        keys: list[str] = []
        with unreachable_as_connection_error():
            async for key in self._client.scan_iter(match=pattern, count=500):
                keys.append(key)
                if len(keys) >= most:
                    break
        return await self._live_values(keys)

    async def _load_delivery(self) -> None:
        """Put DELIVER in the script cache, so the hot path's EVALSHA finds it (a
        NOSCRIPT would send the message again, in full, after a hold)."""
        if self._delivery is not None:
            await self._client.script_load(DELIVER)

    def keep_for_sessions(self, limits: SessionLimits) -> None:
        self._delivery = Delivery(limits, b"PUBLISH")
        if self._publisher is not None:
            self._publisher.delivery = self._delivery

    async def resume_session(
        self, agent: str, session: str, received: int, epoch: str, conn: str, renew: bool = False
    ) -> Resumed:
        with unreachable_as_connection_error():
            return await self._sessions.resume(agent, session, received, epoch, conn, renew)

    async def read_session(
        self, agent: str, after: int, most: int | None = None
    ) -> list[tuple[int, bytes]]:
        with unreachable_as_connection_error():
            return await self._sessions.read(agent, after, most)

    async def reassert_session(
        self, agent: str, session: str, epoch: str, conn: str, delivered: int
    ) -> Reasserted:
        with unreachable_as_connection_error():
            return await self._sessions.reassert(agent, session, epoch, conn, delivered)

    async def ack_sessions(self, items: Sequence[tuple[str, str, int]]) -> None:
        if self._publisher is not None:
            await self._ack_raw(self._publisher, items)
            return
        with unreachable_as_connection_error():
            async with self._client.pipeline(transaction=False) as pipe:
                for agent, session, position in items:
                    await self._sessions.trim(agent, session, position, client=pipe)
                await pipe.execute()

    def ack_session_nowait(self, agent: str, session: str, position: int) -> bool:
        publisher = self._publisher
        if publisher is None:
            return False
        return self._trim_nowait(publisher, agent, session, position, by_sha=True)

    def _trim_nowait(
        self,
        publisher: PublishConnection,
        agent: str,
        session: str,
        position: int,
        *,
        by_sha: bool,
    ) -> bool:
        def done(reply: Any) -> None:
            if not isinstance(reply, Exception):
                return
            if by_sha and classify(reply) is ErrorKind.NOSCRIPT:
                # Redis lost its script cache (a restart): the text loads it again.
                self._trim_nowait(publisher, agent, session, position, by_sha=False)
                return
            # Kept a while longer; the session's next acknowledgement trims it.
            log.debug("could not trim the session stream of %s: %s", agent, reply)

        if by_sha:
            command = self._trim_calls.by_sha(agent, session, position)
        else:
            command = TRIM_SCRIPT.call(*trim_call(agent, session, position), by_sha=False)
        return publisher.command_nowait(command, done)

    @staticmethod
    async def _ack_raw(publisher: PublishConnection, items: Sequence[tuple[str, str, int]]) -> None:
        """``TRIM`` every session on the publish connection, in one round trip (two
        after NOSCRIPT)."""
        replies = await TRIM_SCRIPT.run_many(publisher, [trim_call(*item) for item in items])
        refused = next((r for r in replies if isinstance(r, BrokerRefused)), None)
        if refused is not None:
            raise refused

    async def release_sessions(self, items: Sequence[tuple[str, str]], window: float) -> None:
        with unreachable_as_connection_error():
            await self._sessions.release(items, window)

    async def session_kept(self, agent: str) -> bool:
        with unreachable_as_connection_error():
            return await self._sessions.kept(agent)

    async def end_away_session(self, agent: str, position: int) -> int | None:
        with unreachable_as_connection_error():
            return await self._sessions.end_away(agent, position)

    async def relayed_senders_gone(self, agent: str, most: int) -> dict[bytes, bytes]:
        with unreachable_as_connection_error():
            return await self._sessions.senders_gone(agent, most)

    async def forget_relayed(self, agent: str, senders: dict[bytes, bytes]) -> int:
        with unreachable_as_connection_error():
            return await self._sessions.forget(agent, senders)


__all__ = ["RedisBroker", "RedisError"]
