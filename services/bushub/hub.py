"""A hub node: local sockets on one side, broker channels on the other.

The node subscribes to the message channel of every agent connected to it and to
the presence channel of every agent or peer it serves. Frames from a socket go to
the target's channel; frames from a channel go to the local socket holding that
agent. Presence (who holds which name, on which connection) is kept in expiring
broker records and announced through presence events; a periodic reconcile pass
refreshes this node's records and re-reads its peers', which is how a crashed
node's agents disappear.
"""

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

from bushub.broker import Broker
from bushub.claims import ClaimFence
from bushub.closecodes import CloseCode
from bushub.connection import Connection, Enqueued
from bushub.metrics import Metrics
from bushub.publisher import Publisher
from bushub.settings import Settings
from buswire import (
    DecodeError,
    Dialect,
    is_registry_type,
    message_channel,
    presence_channel,
    presence_key,
    registry_message,
    sniff_format,
    translate,
    validate_agent_name,
)
from buswire.allowlist import TypePolicy
from buswire.channels import claim_key
from buswire.codec import encode_tree, envelope_of, load_tree
from buswire.presence import (
    EventKind,
    PresenceEvent,
    PresenceRecord,
    decode_event,
    encode_event,
    encode_record,
    record_conn,
)
from buswire.relayframe import pack_relay, unpack_relay

log = logging.getLogger(__name__)

HUB_SOURCE = "bushub"
# After the broker comes back, publishes wait this long so that every node, each
# retrying on its own jittered backoff, has resubscribed its agents' channels.
RESUBSCRIBE_SETTLE = 1.0
_MSG_PREFIX = message_channel("")[:-2]
_PRESENCE_PREFIX = presence_channel("")[:-2]


def runner_name(agent: str, conn_id: str) -> str:
    """The runner an agent is announced under: one per connection holding it.

    Clients deduplicate agents per runner, so a new connection of the agent (a
    restart) makes ``@agent_ready`` fire again, while re-announcing the same
    connection (a reconnect of the watcher) does not.
    """
    return f"{HUB_SOURCE}:{agent}:{conn_id}"


class Hub:
    """Routing, delivery and presence for the sockets on this node."""

    def __init__(self, settings: Settings, broker: Broker, metrics: Metrics) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.broker = broker
        self.metrics = metrics
        self.draining = False
        self.policy = TypePolicy(
            settings.split(settings.allow_types), settings.split(settings.allow_type_prefixes)
        )
        self.publisher = Publisher(
            broker,
            settings.publish_buffer,
            self._on_published,
            self._on_publish_dropped,
            settle=RESUBSCRIBE_SETTLE,
        )
        # Every connection claiming or holding an agent name here, by name.
        self._by_agent: dict[str, set[Connection]] = defaultdict(set)
        self._connection_count = 0
        # The connection currently holding each agent name on this node.
        self._local: dict[str, Connection] = {}
        # Local connections by the peer they serve, and who holds each such peer.
        self._watchers: dict[str, set[Connection]] = {}
        self._holders: dict[str, str | None] = {}
        self._peer_version: dict[str, int] = defaultdict(int)
        self._lost_timers: dict[str, asyncio.TimerHandle] = {}
        # Futures of new connections waiting for the previous holder to let go.
        self._release_waiters: dict[tuple[str, str], asyncio.Future[None]] = {}
        # The newest claim seen per name claimed here: only its socket gets messages.
        self._claims = ClaimFence()
        self._subscriptions: dict[str, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconcile_now = asyncio.Event()
        self._broker_was_down = False
        # Counts broker state changes: a claim key read confirms a holder only if
        # it was made while subscribed, with no break since (see bushub.claims).
        self._broker_epoch = 0
        broker.set_handlers(self._on_broker_message, self._on_broker_state)

    # ---- life cycle ---------------------------------------------------------

    @property
    def connection_count(self) -> int:
        """Sockets claiming or holding a name on this node (checked per handshake,
        so kept as a count rather than summed over every agent)."""
        return self._connection_count

    @property
    def ready(self) -> bool:
        """Broker reachable and not draining."""
        return self.broker.up and not self.draining

    async def start(self) -> None:
        """Connect the broker and start the background tasks."""
        await self.broker.start()
        self.metrics.redis_up.set(1 if self.broker.up else 0)
        self._spawn(self.publisher.run(), "publisher")
        self._spawn(self._reconcile_loop(), "presence-reconcile")

    def _spawn(self, coro: "asyncio._CoroutineLike[None]", name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: "asyncio.Task[None]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s died", task.get_name(), exc_info=task.exception())
            # A dead reconcile loop would silently freeze presence: stop serving.
            self.draining = True

    async def drain(self, timeout: float) -> None:
        """Stop taking sockets, flush and close open ones with 1012, withdraw presence.

        Args:
            timeout: Seconds to wait for queues to flush and sockets to close.
        """
        if self.draining and not self._by_agent:
            return
        self.draining = True
        log.info("draining %d connections", sum(len(c) for c in self._by_agent.values()))
        conns = [c for group in self._by_agent.values() for c in group]
        for conn in conns:
            conn.request_close(CloseCode.SERVICE_RESTART, flush=True)
        if conns:
            done = asyncio.gather(*(c.closed.wait() for c in conns))
            try:
                await asyncio.wait_for(done, timeout)
            except TimeoutError:
                log.warning(
                    "drain timeout: %d sockets still open",
                    sum(not c.closed.is_set() for c in conns),
                )
        try:
            await asyncio.wait_for(self.publisher.flushed(), timeout=max(0.1, timeout / 2))
        except TimeoutError:
            log.warning("drain: %d publishes not flushed", self.publisher.pending)

    async def stop(self) -> None:
        """Cancel background tasks and close the broker; safe to call twice."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.publisher.close()
        for timer in self._lost_timers.values():
            timer.cancel()
        await self.broker.close()

    # ---- subscriptions ------------------------------------------------------

    async def _acquire(self, channel: str) -> None:
        self._subscriptions[channel] += 1
        if self._subscriptions[channel] == 1:
            await self.broker.subscribe(channel)

    async def _release(self, channel: str) -> None:
        self._subscriptions[channel] -= 1
        if self._subscriptions[channel] <= 0:
            del self._subscriptions[channel]
            await self.broker.unsubscribe(channel)

    # ---- connections --------------------------------------------------------

    async def claim(self, conn: Connection) -> bool:
        """Claim ``conn.agent`` before the socket is accepted.

        Any older holder, on any node, is told to close; this waits (bounded by
        ``takeover_timeout``) until the holders known from the presence record or
        this node have, so their close reaches their client before the newer is
        accepted. It also waits for this claim to come back on the presence
        channel: from then on, every node orders each message for the name against
        it (see ``bushub.claims``), so no message reaches an older socket and this
        one both.

        Returns:
            False when a newer claim beat this one; the socket must be refused.

        Raises:
            ConnectionError: the broker did not bring this claim back in time.
        """
        agent = conn.agent
        self._by_agent[agent].add(conn)
        self._connection_count += 1
        await self._acquire(presence_channel(agent))
        [record] = await self.broker.get_records([presence_key(agent)])
        holder = record_conn(record) if record is not None else None
        local = self._local.get(agent)
        waits = {h for h in (holder, local.id if local else None) if h and h != conn.id}
        futures = []
        loop = asyncio.get_running_loop()
        for old in waits:
            future = self._release_waiters.setdefault((agent, old), loop.create_future())
            futures.append(future)
        echo = self._claims.expect(conn.id)
        event = PresenceEvent(kind=EventKind.CLAIM, agent=agent, conn=conn.id, node=self.node_id)
        try:
            # The claim key and the claim event in one step, so that a node that
            # missed the event can tell from the key (see _reconcile).
            await self.broker.claim_record(
                claim_key(agent),
                self._claim_value(conn),
                self.settings.presence_ttl,
                presence_channel(agent),
                encode_event(event),
            )
            await asyncio.wait([echo, *futures], timeout=self.settings.takeover_timeout)
        finally:
            self._claims.unexpect(conn.id)
            for old in waits:
                self._release_waiters.pop((agent, old), None)
        if not all(f.done() for f in futures):
            log.warning("takeover of %s: previous holder did not confirm; proceeding", agent)
        if not echo.done():
            # Unordered against other claims, the socket could never be given a message.
            raise ConnectionError(f"claim of {agent} not seen back within the takeover timeout")
        return conn.close_code is None

    async def attach(self, conn: Connection) -> None:
        """Start serving an accepted socket: subscribe, record presence, announce."""
        agent = conn.agent
        previous = self._local.get(agent)
        if previous is not None and previous is not conn:
            previous.request_close(CloseCode.TAKEN_OVER)
        self._local[agent] = conn
        await self._acquire(message_channel(agent))
        self.metrics.connections.inc()
        self.metrics.connections_opened.inc()
        self.metrics.agents.set(len(self._local))
        await self.broker.put_record(
            presence_key(agent), encode_record(self._record(conn)), self.settings.presence_ttl
        )
        self._publish_event(EventKind.UP, agent, conn.id)
        if conn.peer is not None:
            await self._watch(conn)

    async def detach(self, conn: Connection, *, attached: bool) -> None:
        """Forget a socket that has ended; withdraw its presence if it held the name."""
        agent = conn.agent
        group = self._by_agent.get(agent)
        if group is not None and conn in group:
            group.discard(conn)
            self._connection_count -= 1
            if not group:
                del self._by_agent[agent]
                self._claims.forget(agent)
        unsent = conn.unsent()
        if unsent:
            self.metrics.messages_dropped.labels("closing").inc(unsent)
        try:
            if attached:
                self.metrics.connections.dec()
                if self._local.get(agent) is conn:
                    del self._local[agent]
                    self.metrics.agents.set(len(self._local))
                    await self._release(message_channel(agent))
                if conn.peer is not None:
                    await self._unwatch(conn)
                try:
                    await self.broker.delete_record(presence_key(agent), conn.id)
                except (ConnectionError, OSError) as exc:
                    log.warning("could not withdraw presence of %s: %s", agent, exc)
                self._publish_event(EventKind.DOWN, agent, conn.id)
            try:
                await self.broker.delete_record(claim_key(agent), conn.id)
            except (ConnectionError, OSError) as exc:
                log.warning("could not withdraw the claim of %s: %s", agent, exc)
            await self._release(presence_channel(agent))
        finally:
            conn.closed.set()

    def _claim_value(self, conn: Connection) -> bytes:
        # Connection id first, as in a presence record, for the broker's scripts.
        return f"{conn.id} {self.node_id}".encode()

    def _record(self, conn: Connection) -> PresenceRecord:
        return PresenceRecord(
            agent=conn.agent,
            conn=conn.id,
            node=self.node_id,
            since=conn.since,
            format=conn.format.value,
            dialect=conn.dialect.value if conn.dialect else "auto",
            peer=conn.peer,
        )

    # ---- peers --------------------------------------------------------------

    async def _watch(self, conn: Connection) -> None:
        peer = conn.peer
        assert peer is not None
        first = peer not in self._watchers
        self._watchers.setdefault(peer, set()).add(conn)
        if first:
            await self._acquire(presence_channel(peer))
            version = self._peer_version[peer]
            [record] = await self.broker.get_records([presence_key(peer)])
            if self._peer_version[peer] == version and peer not in self._holders:
                self._holders[peer] = record_conn(record) if record is not None else None
        self._announce(conn)

    async def _unwatch(self, conn: Connection) -> None:
        peer = conn.peer
        assert peer is not None
        watchers = self._watchers.get(peer)
        if watchers is None or conn not in watchers:
            return
        watchers.discard(conn)
        if not watchers:
            del self._watchers[peer]
            self._holders.pop(peer, None)
            self._peer_version.pop(peer, None)
            timer = self._lost_timers.pop(peer, None)
            if timer is not None:
                timer.cancel()
            await self._release(presence_channel(peer))

    def _announce(self, conn: Connection) -> None:
        """Tell a client its peer exists, once per holder connection of the peer."""
        holder = self._holders.get(conn.peer or "")
        if conn.peer is None or holder is None or conn.announced_holder == holder:
            return
        conn.announced_holder = holder
        dialects = [conn.dialect] if conn.dialect else [Dialect.SUBAGENTS, Dialect.PIPECAT]
        for dialect in dialects:
            tree = registry_message(
                dialect, source=HUB_SOURCE, runner=runner_name(conn.peer, holder), agent=conn.peer
            )
            self._enqueue(conn, encode_tree(tree, conn.format), 0.0)

    def _peer_up(self, peer: str, holder: str) -> None:
        if peer not in self._watchers or self._holders.get(peer) == holder:
            return
        self._holders[peer] = holder
        timer = self._lost_timers.pop(peer, None)
        if timer is not None:
            timer.cancel()
        for conn in self._watchers[peer]:
            self._announce(conn)

    def _peer_down(self, peer: str) -> None:
        if peer not in self._watchers or self._holders.get(peer) is None:
            return
        self._holders[peer] = None
        if peer not in self._lost_timers:
            loop = asyncio.get_running_loop()
            self._lost_timers[peer] = loop.call_later(
                self.settings.peer_grace, self._peer_lost, peer
            )

    def _peer_lost(self, peer: str) -> None:
        self._lost_timers.pop(peer, None)
        if self._holders.get(peer) is not None:
            return
        for conn in list(self._watchers.get(peer, ())):
            if conn.close_on_peer_lost:
                log.info(
                    "peer %s of %s lost for %.1fs; closing",
                    peer,
                    conn.agent,
                    self.settings.peer_grace,
                )
                conn.request_close(CloseCode.PEER_LOST)

    # ---- presence events ----------------------------------------------------

    def _publish_event(self, kind: EventKind, agent: str, conn_id: str) -> None:
        event = PresenceEvent(kind=kind, agent=agent, conn=conn_id, node=self.node_id)
        self.publisher.publish(presence_channel(agent), encode_event(event))

    def _on_presence(self, agent: str, data: bytes) -> None:
        try:
            event = decode_event(data)
        except DecodeError:
            self.metrics.messages_dropped.labels("bad_presence").inc()
            return
        if event.agent != agent:
            return
        if event.kind is EventKind.CLAIM:
            if agent in self._by_agent:
                self._claims.seen(agent, event.conn)
            for conn in self._by_agent.get(agent, ()):
                if conn.id == event.conn:
                    conn.claim_seen = True
                elif conn.claim_seen:
                    # This claim came after ours on the channel: it is newer and wins.
                    conn.request_close(CloseCode.TAKEN_OVER)
            return
        if agent in self._watchers:
            self._peer_version[agent] += 1
        if event.kind is EventKind.UP:
            self._peer_up(agent, event.conn)
        else:
            waiter = self._release_waiters.get((agent, event.conn))
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if self._holders.get(agent) == event.conn:
                self._peer_down(agent)

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_now.wait(), self.settings.presence_refresh)
            self._reconcile_now.clear()
            if not self.broker.up:
                continue
            try:
                await self._reconcile()
            except (ConnectionError, OSError) as exc:
                log.warning("presence reconcile failed: %s", exc)

    async def _reconcile(self) -> None:
        """Refresh this node's records and claim keys; re-read its peers' (crashed
        nodes expire); confirm holders after a broker break."""
        epoch = self._broker_epoch if self.broker.up else None
        local = list(self._local.items())
        items = [(presence_key(a), c.id, encode_record(self._record(c))) for a, c in local]
        items += [(claim_key(a), c.id, self._claim_value(c)) for a, c in local]
        kept = await self.broker.refresh_records(items, self.settings.presence_ttl)
        # Made while subscribed and unbroken since: no claim before the read was missed.
        confirms = epoch == self._broker_epoch
        for (agent, conn), ok, claimed in zip(
            local, kept[: len(local)], kept[len(local) :], strict=True
        ):
            if self._local.get(agent) is not conn:
                continue
            if not (ok and claimed):
                log.info("presence of %s is held elsewhere now; closing %s", agent, conn.id)
                conn.request_close(CloseCode.TAKEN_OVER)
            elif confirms:
                self._claims.confirm(agent, conn.id)
        peers = list(self._watchers)
        versions = [self._peer_version[p] for p in peers]
        records = await self.broker.get_records([presence_key(p) for p in peers])
        for peer, version, record in zip(peers, versions, records, strict=True):
            if self._peer_version.get(peer) != version:
                continue  # an event arrived meanwhile and is fresher than this read
            if record is None:
                self._peer_down(peer)
            else:
                self._peer_up(peer, record_conn(record))

    # ---- messages -----------------------------------------------------------

    def route(self, conn: Connection, data: bytes) -> None:
        """Route one frame received on ``conn``: decode the envelope, publish.

        Undecodable, oversize or disallowed frames are dropped and counted here;
        nothing else on the connection is affected.
        """
        traffic = self.metrics.traffic
        traffic.bytes_received += len(data)
        if len(data) > self.settings.max_message_bytes:
            self._received_and_dropped(conn, "oversize")
            return
        if not conn.message_rate.take() or not conn.byte_rate.take(len(data)):
            self._received_and_dropped(conn, "rate_limited")
            return
        fmt = conn.format
        if not conn.format_confirmed:
            sniffed = sniff_format(data)
            if sniffed is None:
                self._received_and_dropped(conn, "malformed")
                return
            if sniffed is not fmt:
                if conn.format_declared:
                    self._received_and_dropped(conn, "format_mismatch")
                    conn.request_close(CloseCode.INVALID_DATA)
                    return
                fmt = sniffed
        traffic.received[fmt.value] += 1
        try:
            tree = load_tree(data, fmt)
            if not conn.format_confirmed:
                # Only a frame that parses settles the format: one broken frame that
                # merely starts like MsgPack must not switch a JSON client over.
                conn.format = fmt
                conn.format_confirmed = True
            envelope = envelope_of(tree)
            if is_registry_type(envelope.type_name):
                # The hub speaks for presence itself.
                raise DecodeError("registry")
            self.policy.check(tree)
            target = envelope.target or conn.peer
            if target is None:
                raise DecodeError("no_route")
            channel = conn.routes.get(target)
            if channel is None:
                validate_agent_name(target)
        except DecodeError as exc:
            self.metrics.messages_dropped.labels(exc.reason).inc()
            return
        if conn.dialect is None and envelope.dialect is not None:
            conn.dialect = envelope.dialect
        if channel is None:
            if not conn.grant.may_address(target):
                self.metrics.messages_dropped.labels("target_not_allowed").inc()
                return
            channel = conn.remember_route(target, message_channel(target))
        self.publisher.publish(channel, pack_relay(conn.format, time.time(), data))

    def _received_and_dropped(self, conn: Connection, reason: str) -> None:
        self.metrics.traffic.received[conn.format.value] += 1
        self.metrics.messages_dropped.labels(reason).inc()

    def _on_published(self, channel: str, receivers: int) -> None:
        if receivers == 0 and channel.startswith(_MSG_PREFIX):
            self.metrics.messages_dropped.labels("undeliverable").inc()

    def _on_publish_dropped(self, reason: str, count: int) -> None:
        self.metrics.messages_dropped.labels(reason).inc(count)

    def _on_broker_message(self, channel: str, data: bytes) -> None:
        if channel.startswith(_MSG_PREFIX):
            self._deliver(channel[len(_MSG_PREFIX) + 1 : -1], data)
        elif channel.startswith(_PRESENCE_PREFIX):
            self._on_presence(channel[len(_PRESENCE_PREFIX) + 1 : -1], data)

    def _on_broker_state(self, up: bool) -> None:
        self.metrics.redis_up.set(1 if up else 0)
        self._broker_epoch += 1
        if not up:
            # Claims published from now until resubscribed would be missed.
            self._claims.suspend()
        if up and self._broker_was_down:
            log.info(
                "broker back: holding publishes %.1fs while nodes resubscribe", RESUBSCRIBE_SETTLE
            )
            self.publisher.hold(RESUBSCRIBE_SETTLE)
            self.metrics.redis_reconnects.inc()
            self._reconcile_now.set()  # re-record presence at once
        self._broker_was_down = not up

    def _deliver(self, agent: str, data: bytes) -> None:
        conn = self._local.get(agent)
        if conn is None:
            self.metrics.messages_dropped.labels("no_local_agent").inc()
            return
        if not self._claims.holds(agent, conn.id):
            # A newer claim of the name came first in the broker's order: the message
            # is the newer socket's (on whichever node), and this one is being closed.
            # Or, after a broker break, the socket's claim is not confirmed yet.
            reason = "unconfirmed" if conn.close_code is None else "closing"
            self.metrics.messages_dropped.labels(reason).inc()
            return
        try:
            frame = unpack_relay(data)
            payload = translate(frame.payload, frame.fmt, conn.format)
        except DecodeError as exc:
            self.metrics.messages_dropped.labels(exc.reason).inc()
            return
        self._enqueue(conn, payload, frame.received_at)

    def _enqueue(self, conn: Connection, payload: bytes, received_at: float) -> None:
        result = conn.enqueue(payload, received_at)
        if result is Enqueued.SENT:
            self.sent(conn, payload, received_at)
        elif result is Enqueued.FULL:
            self.metrics.messages_dropped.labels("slow_consumer").inc()
            conn.request_close(CloseCode.SLOW_CONSUMER)
        elif result is Enqueued.CLOSING:
            self.metrics.messages_dropped.labels("closing").inc()

    def flush(self, conn: Connection) -> None:
        """Write a direct socket's queued frames while its transport takes them."""
        outlet = conn.outlet
        if outlet is None:
            return
        while outlet.takes_frames():
            item = conn.pop()
            if item is None:
                if conn.flush_before_close:
                    conn.closing.set()  # a drain waited for this queue to empty
                return
            if not outlet.send_frame(item[0]):
                self.metrics.messages_dropped.labels("closing").inc()
                return
            self.sent(conn, item[0], item[1])

    def sent(self, conn: Connection, payload: bytes, received_at: float) -> None:
        """Account for one frame written to a client."""
        traffic = self.metrics.traffic
        traffic.delivered[conn.format.value] += 1
        traffic.bytes_sent += len(payload)
        if received_at:
            traffic.observe_latency(max(0.0, time.time() - received_at))
