"""Presence on one node: who holds which agent name, and takeover.

Each socket first *claims* its agent name: the claim key and a claim event on the
name's presence channel tell every node, and any older holder is closed with 4001
(docs/protocol.md, Presence); the claim fence (``bushub.claims``) makes sure no
message reaches two sockets of one name. A socket that holds a name is recorded in a
broker record that stays until withdrawn; every claim is listed in the node's index,
so that when the node's heartbeat lapses another node removes its records
(``bushub.membership``). Per agent, nothing runs on a timer: the records are
re-asserted, and the peers' re-read, only after a broker break or when the registry
had lost this node.

Everything with a side effect comes in from outside (broker, subscriptions, publish,
outbound writer, timers), so a test can drive every transition with events and a fake
clock.
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

from bushub.broker import Broker
from bushub.brokerhealth import BrokerHealth
from bushub.claims import ClaimFence
from bushub.closecodes import CloseCode
from bushub.connection import ClientGone, Connection
from bushub.holderrecords import Rewriter, claim_value, presence_record
from bushub.membership import Membership
from bushub.metrics import Metrics
from bushub.outbound import Outbound
from bushub.peers import CallLater, Peers
from bushub.settings import Settings
from bushub.subscriptions import Subscriptions
from buswire import (
    DecodeError,
    DropReason,
    presence_channel,
    presence_key,
)
from buswire.channels import claim_key
from buswire.presence import (
    EventKind,
    PresenceEvent,
    decode_event,
    encode_event,
    record_holder,
)

log = logging.getLogger(__name__)

PRESENCE_PREFIX = presence_channel("")[:-2]

Publish = Callable[[str, bytes], None]


class Presence:
    """Claims, holders and their records for the sockets on one node, and their peers.

    Args:
        settings: Node id, takeover timeout, presence TTL and refresh, peer grace.
        broker: Where presence records live.
        subscriptions: The node's shared channel subscriptions.
        publish: Publishes a presence event on a channel; never blocks.
        outbound: Writes registry announcements to sockets.
        metrics: Where undecodable events are counted.
        call_later: Schedules the peer-lost timers (``loop.call_later``).
        health: Told of the writes Redis refuses and of those that go through again.
    """

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        subscriptions: Subscriptions,
        publish: Publish,
        outbound: Outbound,
        metrics: Metrics,
        call_later: CallLater,
        health: BrokerHealth,
    ) -> None:
        self._settings = settings
        self._node_id = settings.node_id
        self._broker = broker
        self._subscriptions = subscriptions
        self._publish = publish
        self._outbound = outbound
        self._metrics = metrics
        self.membership = Membership(
            settings,
            broker,
            health,
            lambda agent, conn_id: self._publish_event(EventKind.DOWN, agent, conn_id),
        )
        # The peers local sockets watch, and what they are told of them.
        self.peers = Peers(
            settings, broker, subscriptions, outbound, call_later, health, self.membership
        )
        self._health = health
        # The connection currently holding each agent name on this node; the relay
        # reads it to deliver.
        self.holders: dict[str, Connection] = {}
        # Every connection claiming or holding an agent name here, by name.
        self._by_agent: dict[str, set[Connection]] = defaultdict(set)
        self._connection_count = 0
        # Futures of new connections waiting for the previous holder to let go.
        self._release_waiters: dict[tuple[str, str], asyncio.Future[None]] = {}
        # Per name, one set per claim in flight of the connections whose release
        # (DOWN) was heard since that claim subscribed: a release heard before the
        # claim knew whom to wait for is not waited for.
        self._releases_heard: dict[str, list[set[str]]] = defaultdict(list)
        # The newest claim seen per name claimed here: only its socket gets messages.
        self.claims = ClaimFence()
        # Writes the records of holders whose record changed.
        self.rewriter = Rewriter(broker, health, self._node_id, self._holds)
        # Counts broker state changes: a claim key read confirms a holder only if
        # it was made while subscribed, with no break since (see bushub.claims).
        self._broker_epoch = 0
        # Set by the hub: told once a reconcile has confirmed this node's holders.
        self.on_confirmed: Callable[[], None] | None = None

    @property
    def connection_count(self) -> int:
        """Sockets claiming or holding a name on this node (checked per handshake,
        so kept as a count rather than summed over every agent)."""
        return self._connection_count

    def connections(self) -> list[Connection]:
        """Every socket claiming or holding a name on this node."""
        return [conn for group in self._by_agent.values() for conn in group]

    def per_agent_sizes(self) -> dict[str, int]:
        """How many entries each per-agent structure holds (for leak checks)."""
        return {
            "holders": len(self.holders),
            "by_agent": len(self._by_agent),
            **self.peers.sizes(),
            "release_waiters": len(self._release_waiters),
            "releases_heard": len(self._releases_heard),
            "claims": len(self.claims),
        }

    # ---- claims and holders -------------------------------------------------

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
            ClientGone: the client hung up first; nothing was claimed.
        """
        agent = conn.agent
        self._by_agent[agent].add(conn)
        self._connection_count += 1
        heard: set[str] = set()
        self._releases_heard[agent].append(heard)
        try:
            return await self._claim(conn, heard)
        finally:
            listening = self._releases_heard[agent]
            listening.remove(heard)
            if not listening:
                del self._releases_heard[agent]

    async def _claim(self, conn: Connection, heard: set[str]) -> bool:
        agent = conn.agent
        await self._subscriptions.acquire(presence_channel(agent))
        # Listed before it is made: a claim key of a node that dies is always found.
        await self.membership.enlist([(conn.id, agent)])
        [record] = await self._broker.get_records([presence_key(agent)])
        if conn.client_gone is not None and conn.client_gone():
            # A storm's handshake that waited longer than its client (which timed
            # out and dialled again): claimed now, the name would go to this dead
            # socket and the client's newer one be refused 403, given up for good.
            raise ClientGone(agent)
        holder = self._record_holder(record)
        local = self.holders.get(agent)
        waits = {local.id} if local is not None and local.id != conn.id else set()
        if holder is not None and holder[0] != conn.id and await self.membership.answers(holder[1]):
            waits.add(holder[0])
        # A holder may have let go while its node was asked about: its release was
        # heard then, before there was a waiter to take it.
        waits -= heard
        futures = []
        loop = asyncio.get_running_loop()
        for old in waits:
            future = self._release_waiters.setdefault((agent, old), loop.create_future())
            futures.append(future)
        echo = self.claims.expect(conn.id)
        event = PresenceEvent(kind=EventKind.CLAIM, agent=agent, conn=conn.id, node=self._node_id)
        try:
            # The claim key and the claim event in one step, so that a node that
            # missed the event can tell from the key (see reconcile).
            with self._health.watching("presence_write"):
                await self._broker.claim_record(
                    claim_key(agent),
                    claim_value(conn, self._node_id),
                    None,
                    presence_channel(agent),
                    encode_event(event),
                )
            await asyncio.wait([echo, *futures], timeout=self._settings.takeover_timeout)
        finally:
            self.claims.unexpect(conn.id)
            for old in waits:
                self._release_waiters.pop((agent, old), None)
        if not all(f.done() for f in futures):
            log.warning("takeover of %s: previous holder did not confirm; proceeding", agent)
        if not echo.done():
            # Unordered against other claims, the socket could never be given a message.
            raise ConnectionError(f"claim of {agent} not seen back within the takeover timeout")
        return conn.close_code is None

    def hold(self, conn: Connection) -> None:
        """Make an accepted socket the local holder of its name, closing any older."""
        previous = self.holders.get(conn.agent)
        if previous is not None and previous is not conn:
            previous.request_close(CloseCode.TAKEN_OVER)
        self.holders[conn.agent] = conn

    async def announce(self, conn: Connection) -> None:
        """Record the holder in the broker, tell the cluster, and start watching its peer."""
        agent = conn.agent
        with self._health.watching("presence_write"):
            await self._broker.put_record(
                presence_key(agent), presence_record(conn, self._node_id), None
            )
        self._publish_event(EventKind.UP, agent, conn.id, conn.runner)
        if conn.peer is not None:
            await self.peers.watch(conn)

    def _holds(self, conn: Connection) -> bool:
        return self.holders.get(conn.agent) is conn

    def let_go(self, conn: Connection) -> bool:
        """Forget ``conn`` as a claimant; True if it was the local holder of its name."""
        agent = conn.agent
        group = self._by_agent.get(agent)
        if group is not None and conn in group:
            group.discard(conn)
            self._connection_count -= 1
            if not group:
                del self._by_agent[agent]
                self.claims.forget(agent)
        if self.holders.get(agent) is conn:
            del self.holders[agent]
            return True
        return False

    async def withdraw(self, conn: Connection) -> None:
        """Stop watching the peer of an ended holder, delete its record, tell the cluster."""
        agent = conn.agent
        if conn.peer is not None:
            await self.peers.unwatch(conn)
        try:
            await self._broker.delete_record(presence_key(agent), conn.id)
        except (ConnectionError, OSError) as exc:
            log.warning("could not withdraw presence of %s: %s", agent, exc)
        self._publish_event(EventKind.DOWN, agent, conn.id)

    async def unclaim(self, conn: Connection) -> None:
        """Delete an ended socket's claim key (if still its own) and drop its interest
        in its name's presence channel."""
        try:
            await self._broker.delete_record(claim_key(conn.agent), conn.id)
            await self.membership.delist(conn.id, conn.agent)
        except (ConnectionError, OSError) as exc:
            log.warning("could not withdraw the claim of %s: %s", conn.agent, exc)
        await self._subscriptions.release(presence_channel(conn.agent))

    def _record_holder(self, record: bytes | None) -> tuple[str, str] | None:
        """The connection and node a record names (None: none, or unreadable)."""
        if record is None:
            return None
        try:
            conn_id, node = record_holder(record)
        except DecodeError:
            self._metrics.messages_dropped.labels(DropReason.BAD_PRESENCE).inc()
            return None
        return conn_id, node

    # ---- presence events ----------------------------------------------------

    def _publish_event(self, kind: EventKind, agent: str, conn_id: str, runner: str = "") -> None:
        event = PresenceEvent(
            kind=kind, agent=agent, conn=conn_id, node=self._node_id, runner=runner
        )
        self._publish(presence_channel(agent), encode_event(event))

    def on_event(self, agent: str, data: bytes) -> None:
        """Take one event from ``agent``'s presence channel."""
        try:
            event = decode_event(data)
        except DecodeError:
            self._metrics.messages_dropped.labels(DropReason.BAD_PRESENCE).inc()
            return
        if event.agent != agent:
            return
        if event.kind is EventKind.CLAIM:
            if agent in self._by_agent:
                self.claims.seen(agent, event.conn)
            for conn in self._by_agent.get(agent, ()):
                if conn.id == event.conn:
                    conn.claim_seen = True
                elif conn.claim_seen:
                    # This claim came after ours on the channel: it is newer and wins.
                    conn.request_close(CloseCode.TAKEN_OVER)
            return
        self.membership.heard_from(event.node)
        if event.kind is EventKind.UP:
            self.peers.up(agent, event.conn, event.node, event.runner or event.conn)
        else:
            for heard in self._releases_heard.get(agent, ()):
                heard.add(event.conn)
            waiter = self._release_waiters.get((agent, event.conn))
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            self.peers.down(agent, event.conn)

    # ---- reconcile ----------------------------------------------------------

    def broker_state_changed(self, up: bool) -> None:
        """The broker connection went down or came back (resubscribed)."""
        self._broker_epoch += 1
        if not up:
            # Claims published from now until resubscribed would be missed.
            self.claims.suspend()

    async def reconcile(self, *, announce: bool = False) -> None:
        """Re-assert this node's records, claim keys and index; re-read its peers'
        records; confirm holders after a broker break.

        Args:
            announce: Publish UP for every holder again (the cluster took this node
                for dead, so its peers may have dropped them).
        """
        epoch = self._broker_epoch if self._broker.up else None
        local = list(self.holders.items())
        items = [(presence_key(a), c.id, presence_record(c, self._node_id)) for a, c in local]
        items += [(claim_key(a), c.id, claim_value(c, self._node_id)) for a, c in local]
        await self.membership.enlist((c.id, c.agent) for c in self.connections())
        with self._health.watching("presence_refresh"):
            kept = await self._broker.refresh_records(items, None)
        # Made while subscribed and unbroken since: no claim before the read was missed.
        confirms = epoch == self._broker_epoch
        ended: list[tuple[str, str]] = []
        for (agent, conn), ok, claimed in zip(
            local, kept[: len(local)], kept[len(local) :], strict=True
        ):
            if self.holders.get(agent) is not conn:
                # It ended while its records were re-stored: its own deletes may have
                # come first, so they are made again (records have no lifetime).
                ended += [(presence_key(agent), conn.id), (claim_key(agent), conn.id)]
                continue
            if not (ok and claimed):
                log.info("presence of %s is held elsewhere now; closing %s", agent, conn.id)
                conn.request_close(CloseCode.TAKEN_OVER)
                continue
            if confirms:
                self.claims.confirm(agent, conn.id)
            if announce:
                self._publish_event(EventKind.UP, agent, conn.id, conn.runner)
        await self._broker.delete_records(ended)
        if confirms and self.on_confirmed is not None:
            self.on_confirmed()
        await self.peers.reread()
