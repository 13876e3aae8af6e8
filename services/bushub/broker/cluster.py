"""Redis Cluster as the broker, with sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``).

Classic ``PUBLISH`` in a cluster is copied to every shard and does not scale; a
sharded channel lives on the shard that owns its slot. Every channel and key of an
agent carries the agent in a hash tag, so one agent's traffic and presence sit on
one shard.

This node keeps one pub/sub connection per primary that owns at least one of its
channels: the raw subscriber in sharded mode (subscriber.py), kept open by the
same listener loop as the single-Redis broker's (listener.py). The topology is
re-read, and every channel re-homed, when a shard connection fails (a failover),
when Redis unsubscribes a channel on its own (its slot migrated) or refuses one
(MOVED), and every few seconds as a safety net.

Every connection logs in with the URL's credentials (``requirepass`` or an ACL
user): the cluster client reads them from the URL, the per-primary pub/sub and
publish connections are handed them.
"""

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    MovedError,
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
)

from bushub.broker.base import Broker, PartialPublish
from bushub.broker.credentials import Credentials
from bushub.broker.listener import Listener
from bushub.broker.nodes import NodeRegistry
from bushub.broker.redis import (
    CLAIM_SCRIPT,
    LOGIN_REFUSALS,
    REFRESH_SCRIPT,
    RELEASE_SCRIPT,
    UNREACHABLE,
    ttl_ms,
    unreachable_as_connection_error,
)
from bushub.broker.redisnodes import RedisNodeRegistry
from bushub.broker.refusals import error_code, redirect_slot
from bushub.broker.resp import PublishConnection
from bushub.broker.sessionscripts import (
    DELIVER,
    Delivery,
    Reasserted,
    Resumed,
    SessionLimits,
    SessionScripts,
)
from bushub.broker.startwait import until_reachable
from bushub.broker.subscriber import Subscriber
from bushub.lightsync import wait_at_most
from bushub.stopping import cancelled

log = logging.getLogger(__name__)

_TOPOLOGY_CHECK_SECONDS = 5.0
# Every command is bounded: mid-failover, redis-py's cluster client can wait on a
# dead primary far longer than a caller should, with the topology lock held.
_COMMAND_SECONDS = 3.0
_FIRST_CONNECT_SECONDS = 2.0
# Bound on opening a shard's pub/sub connection (each step: connect, AUTH).
_CONNECT_SECONDS = 2.0
# Longest wait between a shard's reconnect attempts.
_BACKOFF_MAX = 0.5
# How long a slot's MOVED reply is held newer than a topology read: gossip tells the
# cluster's other nodes of a slot's move within a second or two.
_MOVES_KEPT = 10.0
# The least time between two topology refreshes.
_REFRESH_SPACING = 0.05
# The operator's view scans every primary: longer than one command, never forever.
_SCAN_SECONDS = 10.0


@contextlib.asynccontextmanager
async def guarded() -> AsyncIterator[None]:
    """Errors translated as on a single Redis, and every call bounded."""
    with unreachable_as_connection_error():
        async with asyncio.timeout(_COMMAND_SECONDS):
            yield


class _Shard:
    """The sharded pub/sub connection to one primary, kept open by a listener."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        credentials: Credentials,
        broker: "RedisClusterBroker",
    ) -> None:
        self.name = name
        # A shard counts as down only once its connection has failed; a new one
        # is pending, not down, so opening it does not flap the node's readiness.
        self.failed = False
        self.connected = asyncio.Event()
        self._broker = broker
        self._address = (host, int(port))
        self._credentials = credentials
        self._listener = Listener(
            f"shard {name}",
            self._connect,
            on_up=self._up,
            on_down=self._down,
            backoff_max=_BACKOFF_MAX,
        )
        self._task = asyncio.create_task(self._listener.run(), name=f"shard-{name}")

    @property
    def channels(self) -> set[str]:
        """The channels this shard subscribes (the listener's set: read only)."""
        return self._listener.channels

    async def subscribe(self, channels: set[str]) -> None:
        """Add channels; on a new shard, wait (bounded) for its first connection so
        that messages published right after this returns are not missed."""
        self._listener.subscribe(channels)
        await wait_at_most(self.connected, _FIRST_CONNECT_SECONDS)

    def unsubscribe(self, channels: set[str]) -> None:
        self._listener.unsubscribe(channels)

    async def close(self) -> None:
        await cancelled(self._task)

    async def _connect(self) -> Subscriber:
        host, port = self._address
        sub = await Subscriber.open(
            host,
            port,
            self._broker.deliver,
            username=self._credentials.username,
            password=self._credentials.password,
            timeout=_CONNECT_SECONDS,
            sharded=True,
        )
        sub.on_dropped = self._dropped
        sub.on_refused = self._refused
        sub.on_moved = self._moved
        return sub

    def _dropped(self, channel: str) -> None:
        # Our own SUNSUBSCRIBE takes a channel out of the set first: one still
        # wanted was dropped by Redis on its own, its slot having moved elsewhere or
        # been assigned again to this same primary (CLUSTER SETSLOT ... NODE, sent
        # twice by a migration). Either way it is no longer subscribed here: out of
        # the set, so that the refresh subscribes it wherever its slot is now.
        if channel in self.channels:
            self._listener.forget((channel,))
            self._broker.request_refresh("slot moved")

    def _refused(self, error: Exception) -> None:
        self._broker.request_refresh(f"subscribe refused on shard {self.name} ({error})")

    def _moved(self, error: Exception) -> None:
        # MOVED on SSUBSCRIBE: the slot map said this primary, a reshard had moved the
        # slot on. Nothing of that slot is subscribed here: its channels leave the
        # set (left in it, every refresh on the same map found them in place and
        # they heard nothing until the map changed), to go where the reply says.
        slot = redirect_slot(error)
        self._listener.forget([c for c in self.channels if key_slot(c.encode()) == slot])
        self._broker.slot_moved(error)

    async def _up(self, again: bool) -> None:
        self.connected.set()
        self._set_failed(False)

    def _down(self, exc: BaseException) -> None:
        self._set_failed(True)
        self._broker.request_refresh(f"shard {self.name} lost ({type(exc).__name__})")

    def _set_failed(self, failed: bool) -> None:
        if failed != self.failed:
            self.failed = failed
            self._broker.shard_state_changed()


async def _apply_move(manager: Any, moved: MovedError) -> None:
    """Put ``moved``'s slot where it says in redis-py's slot map: ``move_slot``
    (redis-py 8), else ``update_moved_exception`` (earlier: applied at the map's next
    lookup)."""
    move = getattr(manager, "move_slot", None)
    if move is None:
        manager.update_moved_exception(moved)
        return
    result = move(moved)
    if inspect.isawaitable(result):
        await result


def _is_moved(error: object) -> bool:
    """A ``MOVED`` reply, raw (hiredis) or as redis-py raises it."""
    return isinstance(error, MovedError) or error_code(error) == "MOVED"


def split_seeds(url: str) -> tuple[str, list[ClusterNode]]:
    """``redis://[login@]h1:p1,h2:p2[/...]`` as the URL of its first node and the
    others: the cluster is known by any of several, so one of them down when a node
    starts does not keep it from starting."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    login, at, hosts = authority.rpartition("@")
    first, *others = hosts.split(",")
    nodes = []
    for seed in others:
        host, colon, port = seed.rpartition(":")
        if not colon or host.endswith(":"):  # no port (an IPv6 address alone, too)
            host, port = seed, "6379"
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    return f"{scheme}{sep}{login}{at}{first}{slash}{path}", nodes


class RedisClusterBroker(Broker):
    """Sharded pub/sub and presence records on a Redis Cluster (Redis >= 7).

    Args:
        url: ``redis://[user:password@]host:port`` of any node of the cluster, or of
            several (``host:port,host:port``); the login is used on every node.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        url, seeds = split_seeds(url)
        self._client = RedisCluster.from_url(
            url, socket_connect_timeout=2.0, startup_nodes=seeds or None
        )
        self._credentials = Credentials.from_url(url)
        self._refresh = self._client.register_script(REFRESH_SCRIPT)
        self._release = self._client.register_script(RELEASE_SCRIPT)
        self._claim = self._client.register_script(CLAIM_SCRIPT)
        self._sessions = SessionScripts(self._client)
        self._delivery: Delivery | None = None
        self._nodes = RedisNodeRegistry(self._client, guarded)
        self._channels: set[str] = set()
        self._shards: dict[str, _Shard] = {}
        self._node_publishers: dict[str, PublishConnection] = {}
        self._refresh_needed = asyncio.Event()
        # Whether the next refresh reads the topology again (else it re-homes by the
        # slot map as it is), and the MOVED replies met lately by slot, with when.
        self._reread = False
        self._moves: dict[int, tuple[float, MovedError]] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._started = False
        self._up = False
        self._closed = False

    @property
    def up(self) -> bool:
        return self._up

    @property
    def nodes(self) -> NodeRegistry:
        return self._nodes

    @property
    def description(self) -> str:
        primaries = ", ".join(n.name for n in self._client.get_primaries()) or "?"
        return f"redis cluster (sharded pub/sub; primaries {primaries})"

    async def start(self) -> None:
        startup = ", ".join(self._client.nodes_manager.startup_nodes) or "?"
        await until_reachable(
            self._reachable,
            f"redis cluster ({startup})",
            # A failover under way: a primary gone, or slots not served yet.
            (*UNREACHABLE, RedisClusterUnreachableError, ClusterDownError),
            LOGIN_REFUSALS,
        )
        self._started = True
        self._refresher = asyncio.create_task(self._refresh_loop(), name="cluster-topology")
        self.shard_state_changed()

    async def _reachable(self) -> None:
        await self._client.initialize()  # once it has succeeded, a no-op
        if self._delivery is not None:
            # Every primary's cache (the queued path, EVAL, fills one that lost it).
            await self._client.script_load(DELIVER)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._refresher is not None:
            await cancelled(self._refresher)
        for shard in self._shards.values():
            await shard.close()
        self._shards.clear()
        for publisher in self._node_publishers.values():
            await publisher.close()
        self._node_publishers.clear()
        await self._client.aclose()

    # ---- shards -------------------------------------------------------------

    def deliver(self, channel: str, data: bytes) -> None:
        """A shard received a message on a wanted channel."""
        if channel in self._channels:
            self._on_message(channel, data)

    def request_refresh(self, why: str, *, reread: bool = True) -> None:
        """Re-home channels soon, by the topology read again unless ``reread`` is
        False (the slot map is known to be right: a MOVED reply was applied)."""
        if not self._refresh_needed.is_set():
            log.info("cluster topology refresh: %s", why)
        self._reread = self._reread or reread
        self._refresh_needed.set()

    def slot_moved(self, error: object) -> None:
        """A primary answered MOVED: its slot is where the reply says (the primary
        that answered has let the slot go, so the reply is newer than a topology
        read from another node, which may still name it mid-reshard)."""
        if not _is_moved(error):  # ASK: only on its way; read the map again
            self.request_refresh(f"slot migrating ({error})")
            return
        slot, address = redirect_slot(error), str(error).split()[-1]
        self._moves[slot] = (time.monotonic(), MovedError(f"{slot} {address}"))
        self.request_refresh(f"slot moved ({error})", reread=False)

    def shard_state_changed(self) -> None:
        """Recompute reachability: no shard holding channels may have failed."""
        up = self._started and not any(
            shard.failed and shard.channels for shard in self._shards.values()
        )
        if up != self._up:
            self._up = up
            self._on_state(up)

    def _owner(self, channel: str) -> Any:
        return self._client.get_node_from_key(channel)

    def _shard_for(self, node: Any) -> _Shard:
        shard = self._shards.get(node.name)
        if shard is None:
            shard = _Shard(node.name, node.host, node.port, self._credentials, self)
            self._shards[node.name] = shard
        return shard

    async def _refresh_loop(self) -> None:
        while True:
            asked = await wait_at_most(self._refresh_needed, _TOPOLOGY_CHECK_SECONDS)
            # Spaced, and what is asked meanwhile taken with it: two primaries that
            # each name the other for a slot (a cluster whose nodes disagree,
            # mid-reshard) answered MOVED back and forth, and each reply's refresh
            # came at once, a loop as fast as Redis answered.
            await asyncio.sleep(_REFRESH_SPACING)
            self._refresh_needed.clear()
            # The safety net, every few seconds, reads the topology again.
            reread, self._reread = self._reread or not asked, False
            try:
                async with asyncio.timeout(_COMMAND_SECONDS * 2):
                    await self._rehome(reread)
            except (*UNREACHABLE, ConnectionError, RedisError, RedisClusterException) as exc:
                # RedisClusterException ("cannot be connected", not a RedisError):
                # mid-failover no node may answer for a moment; with a refused
                # login, none ever will, and what it says names the reason.
                log.warning(
                    "cluster topology unreadable (%s: %s); retrying", type(exc).__name__, exc
                )
                await asyncio.sleep(random.uniform(0.1, 0.3))
                self._refresh_needed.set()
            except Exception:
                # This loop is what brings subscriptions back: it must not die.
                log.exception("cluster topology refresh failed; retrying")
                await asyncio.sleep(random.uniform(0.1, 0.3))
                self._refresh_needed.set()

    async def _rehome(self, reread: bool = True) -> None:
        """Put every wanted channel on the shard that owns its slot now.

        Args:
            reread: Read the topology first. The MOVED replies of the last
                ``_MOVES_KEPT`` seconds are applied after it: a reshard tells the
                slot's two primaries, and the other nodes learn it by gossip, so a
                read from one of them in the meantime names the old owner, and moved
                a channel back there for a moment (its messages lost meanwhile).
        """
        manager = self._client.nodes_manager
        if reread:
            await manager.initialize()
        since = time.monotonic() - _MOVES_KEPT
        for slot, (when, moved) in list(self._moves.items()):
            if when < since:
                del self._moves[slot]
            else:
                await _apply_move(manager, moved)
        primaries = {node.name for node in self._client.get_primaries()}
        for name in [n for n in self._node_publishers if n not in primaries]:
            await self._node_publishers.pop(name).close()
        desired: dict[str, set[str]] = {}
        nodes: dict[str, Any] = {}
        for channel in self._channels:
            node = self._owner(channel)
            nodes[node.name] = node
            desired.setdefault(node.name, set()).add(channel)
        for name, shard in list(self._shards.items()):
            stale = shard.channels - desired.get(name, set())
            if stale:
                shard.unsubscribe(stale)
            if not shard.channels and name not in desired:
                del self._shards[name]
                await shard.close()
        for name, channels in desired.items():
            await self._shard_for(nodes[name]).subscribe(channels)
        self.shard_state_changed()

    # ---- pub/sub ------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        await self._shard_for(self._owner(channel)).subscribe({channel})
        self.shard_state_changed()

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        for shard in self._shards.values():
            if channel in shard.channels:
                shard.unsubscribe({channel})

    def _node_publisher(self, node: Any) -> PublishConnection:
        publisher = self._node_publishers.get(node.name)
        if publisher is None:
            publisher = PublishConnection(
                node.host,
                int(node.port),
                command=b"SPUBLISH",
                username=self._credentials.username,
                password=self._credentials.password,
            )
            publisher.delivery = self._delivery
            self._node_publishers[node.name] = publisher
        return publisher

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        """SPUBLISH grouped by owning primary, one batch per primary, concurrently.

        redis-py's cluster pipeline costs milliseconds per batch; routing by the
        cached slot map and one raw batch per primary keeps a batch near one round
        trip. Each channel's messages go to one node in order, so order per pair
        holds. A MOVED reply (the slot moved) refuses just that message: it is
        retried after the topology is re-read.
        """
        groups: dict[str, tuple[Any, list[int]]] = {}
        for index, (channel, _) in enumerate(items):
            node = self._owner(channel)
            groups.setdefault(node.name, (node, []))[1].append(index)
        errors: list[object | None] = [None] * len(items)  # refusals, for the caller

        async def send(node: Any, indexes: list[int]) -> list[int | None]:
            publisher = self._node_publisher(node)
            try:
                counts = await publisher.publish_many([items[i] for i in indexes])
                return list(counts)
            except PartialPublish as partial:
                moved = False
                for i, error in zip(indexes, partial.errors, strict=True):
                    errors[i] = error
                    if error is not None and _is_moved(error):
                        # Retried where the reply says, not on a map read again
                        # from a node that may not know yet.
                        self.slot_moved(error)
                        moved = True
                if not moved:
                    self.request_refresh(f"publish refused ({partial})")
                return partial.counts
            except ConnectionError:
                self.request_refresh(f"publish to {node.name} failed")
                return [None] * len(indexes)

        results: list[int | None] = [None] * len(items)
        with unreachable_as_connection_error():
            async with asyncio.timeout(_COMMAND_SECONDS):
                replies = await asyncio.gather(*(send(n, ix) for n, ix in groups.values()))
        for (_, indexes), node_replies in zip(groups.values(), replies, strict=True):
            for i, count in zip(indexes, node_replies, strict=True):
                results[i] = count
        if any(count is None for count in results):
            raise PartialPublish(results, "some primaries refused or were unreachable", errors)
        return [count for count in results if count is not None]

    # ---- records ------------------------------------------------------------

    async def put_record(self, key: str, value: bytes, ttl: float | None) -> None:
        async with guarded():
            await self._client.set(key, value, px=ttl_ms(ttl) or None)

    async def claim_record(
        self, key: str, value: bytes, ttl: float | None, channel: str, data: bytes
    ) -> None:
        async with guarded():
            # The key and the channel share a hash tag: one shard runs both.
            await self._claim(keys=[key], args=[value, ttl_ms(ttl), "SPUBLISH", channel, data])

    async def refresh_records(
        self, items: Sequence[tuple[str, str, bytes]], ttl: float | None, *, create: bool = True
    ) -> list[bool]:
        lifetime, absent = ttl_ms(ttl), int(create)
        # Keys live on different shards: one script call each, concurrently.
        async with guarded():
            results = await asyncio.gather(
                *(self._refresh(keys=[k], args=[c, v, lifetime, absent]) for k, c, v in items)
            )
        return [bool(r) for r in results]

    async def delete_record(self, key: str, conn: str) -> None:
        async with guarded():
            await self._release(keys=[key], args=[conn])

    async def delete_records(self, items: Sequence[tuple[str, str]]) -> None:
        async with guarded():
            await asyncio.gather(*(self._release(keys=[k], args=[c]) for k, c in items))

    async def get_records(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with unreachable_as_connection_error():
            async with asyncio.timeout(_COMMAND_SECONDS):
                values = await self._client.mget_nonatomic(list(keys))
        return [v.encode() if isinstance(v, str) else v for v in values]

    async def scan_records(self, pattern: str, most: int) -> list[bytes]:
        # The cluster client scans every primary, each to its own cursor's end, on
        # its own connections: the URL's login, and the same bounds as any command.
        keys: list[str] = []
        with unreachable_as_connection_error():
            async with asyncio.timeout(_SCAN_SECONDS):
                async for key in self._client.scan_iter(match=pattern, count=500):
                    keys.append(key.decode())
                    if len(keys) >= most:
                        break
        return await self._live_values(keys)

    # ---- sessions -----------------------------------------------------------

    def keep_for_sessions(self, limits: SessionLimits) -> None:
        self._delivery = Delivery(limits, b"SPUBLISH")
        for publisher in self._node_publishers.values():
            publisher.delivery = self._delivery

    async def resume_session(
        self, agent: str, session: str, received: int, epoch: str, conn: str, renew: bool = False
    ) -> Resumed:
        async with guarded():
            return await self._sessions.resume(agent, session, received, epoch, conn, renew)

    async def read_session(
        self, agent: str, after: int, most: int | None = None
    ) -> list[tuple[int, bytes]]:
        async with guarded():
            return await self._sessions.read(agent, after, most)

    async def reassert_session(
        self, agent: str, session: str, epoch: str, conn: str, delivered: int
    ) -> Reasserted:
        async with guarded():
            return await self._sessions.reassert(agent, session, epoch, conn, delivered)

    async def ack_sessions(self, items: Sequence[tuple[str, str, int]]) -> None:
        async with guarded():
            # Agents live on different shards: one call each, together.
            await asyncio.gather(*(self._sessions.trim(a, s, p) for a, s, p in items))

    async def release_sessions(self, items: Sequence[tuple[str, str]], window: float) -> None:
        async with guarded():
            await self._sessions.release(items, window)

    async def session_kept(self, agent: str) -> bool:
        with unreachable_as_connection_error():
            return await self._sessions.kept(agent)

    async def end_away_session(self, agent: str, position: int) -> int | None:
        with unreachable_as_connection_error():
            return await self._sessions.end_away(agent, position)

    async def relayed_senders_gone(self, agent: str, most: int) -> dict[bytes, bytes]:
        with unreachable_as_connection_error():
            # Not bounded as one call: a large record is read in many.
            return await self._sessions.senders_gone(agent, most)

    async def forget_relayed(self, agent: str, senders: dict[bytes, bytes]) -> int:
        with unreachable_as_connection_error():
            return await self._sessions.forget(agent, senders)
