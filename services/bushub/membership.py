"""This node in the cluster: its heartbeat, the nodes known dead, and the cleanup
after them (docs/protocol.md, Presence).

Presence records never expire on their own; what keeps them honest is one heartbeat
per node every ``--presence-ttl``/3. A node whose heartbeat lapses is dead to every
other node at its next beat (one whose own beats went through for a TTL and a refresh
before: see ``Membership.beat``): the holders it had count as gone (``is_live``), and the
first node to see it takes its claim index over and deletes what it lists,
owner-checked. So at rest Redis does one command per node per refresh, whatever the
number of agents, and a crashed node's agents leave within ``--presence-ttl`` plus
one refresh, as they did when each record had to be refreshed to stay.
"""

import asyncio
import logging
from collections.abc import Callable, Iterable

from redis.exceptions import RedisError

from bushub.broker import Broker
from bushub.broker.nodes import BeatStatus
from bushub.brokerhealth import BrokerHealth
from bushub.settings import Settings
from buswire import presence_key
from buswire.channels import claim_key, node_channel

log = logging.getLogger(__name__)

# Deletes per pipelined batch when cleaning up after a dead node.
_COLLECT_BATCH = 1000
# How long, in presence TTLs, a node cleaned up after is still listed dead.
_GONE_LINGER_TTLS = 3
# How long a cleanup may take before another node may take it over.
_COLLECT_HOLD_MIN = 30.0


def index_member(conn_id: str, agent: str) -> str:
    """A claim as listed in its node's index (neither part holds a space)."""
    return f"{conn_id} {agent}"


def _claim_of(member: str) -> tuple[str, str]:
    conn_id, _, agent = member.partition(" ")
    return conn_id, agent


# How often a node whose id another running process has asks again.
_ID_IN_USE_RETRY = 1.0


class Membership:
    """The heartbeat of one node and what it learns of the others.

    Args:
        settings: Node id and presence TTL.
        broker: The node registry and the records to clean up.
        health: Told of the writes Redis refuses.
        went_down: Publishes that a connection let go of an agent (a DOWN event).
    """

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        health: BrokerHealth,
        went_down: Callable[[str, str], None],
    ) -> None:
        self._went_down = went_down
        self._node_id = settings.node_id
        self._ttl = settings.presence_ttl
        self._resume_window = settings.resume_window
        self._broker = broker
        self._health = health
        # Nodes whose heartbeat lapsed, or that are being cleaned up; every other
        # node named in a record or an event counts as alive.
        self.dead: frozenset[str] = frozenset()
        self._cleanups: dict[str, asyncio.Task[None]] = {}
        # The probe of each node in flight (see answers).
        self._probes: dict[str, asyncio.Future[bool]] = {}
        # Since when this node's beats have gone through promptly (loop time; None:
        # the last one failed): see beat. A beat slower than a refresh period is late.
        self._steady_since: float | None = None
        self._prompt = settings.presence_refresh

    def is_live(self, node: str) -> bool:
        """False for a node known dead: its records and holders count for nothing."""
        return node not in self.dead

    def heard_from(self, node: str) -> None:
        """``node`` just published: it is alive, whatever the last beat said."""
        if node in self.dead:
            self.dead = self.dead - {node}

    async def answers(self, node: str) -> bool:
        """Whether Redis still hears ``node``: its own channel has a subscriber.

        A node killed a moment ago is not known dead until its heartbeat lapses, but
        Redis dropped its subscriptions with its connections; a node taken for dead at
        the last beat may be back since. Unknown (the probe failed) counts as heard.

        Asked while a probe of the same node is on its way, the answer is that
        probe's: in a reconnect storm every handshake of a dead node's agents asks
        about that node, and one probe a round trip does for all of them.
        """
        if node == self._node_id:
            return True
        probe = self._probes.get(node)
        if probe is None:
            probe = self._probes[node] = asyncio.ensure_future(self._probe(node))
            probe.add_done_callback(lambda _: self._probes.pop(node, None))
        # Shielded: a handshake given up does not cancel the others' answer.
        return await asyncio.shield(probe)

    async def _probe(self, node: str) -> bool:
        try:
            [receivers] = await self._broker.publish_many([(node_channel(node), b"")])
        except (ConnectionError, OSError):
            return True
        if receivers:
            self.heard_from(node)
        return receivers > 0

    async def join(self) -> None:
        """Start: clean up after an earlier process of this node id (it was never
        seen dead if this one started within its TTL), then beat. While another live
        process serves this id, wait (``_until_own_id_free``)."""
        await self._until_own_id_free()
        members = await self._broker.nodes.reset(self._node_id)
        if members:
            claims = [_claim_of(member) for member in members]
            await self._delete(claims)
            for conn_id, agent in claims:
                self._went_down(agent, conn_id)
            # Each was removed unless a newer connection (on another node) holds it.
            log.info(
                "cleaned up after an earlier process of this node: %d agents it held "
                "(those no newer connection holds are gone)",
                len(claims),
            )
        await self.beat()

    async def _until_own_id_free(self) -> None:
        """Wait while another process is subscribed to this node's own channel: a
        node started with the --node-id of one that is running. Its clean-up after
        "an earlier process" removed the running node's agents from presence (their
        peers closed 4002 a peer grace later), and peers that came later were never
        told of them. An earlier process that died is no longer subscribed (Redis
        drops a connection's subscriptions as it closes), so a restart is not held.
        Nothing is served meanwhile: the node's start waits here."""
        channel = node_channel(self._node_id)
        waited = False
        while True:
            try:
                # This node's own subscription (made before this) confirmed first,
                # so that it is among the receivers counted.
                await self._broker.confirm_subscriptions()
                [receivers] = await self._broker.publish_many([(channel, b"")])
            except (RedisError, ConnectionError, OSError) as exc:
                # Redis refusing a subscribe or a publish here (an ACL) is told and
                # retried where it matters; this check is not worth a start.
                log.info("could not ask whether node id %s is in use: %s", self._node_id, exc)
                return
            if receivers <= 1:
                if waited:
                    log.warning("node id %s is free now: starting", self._node_id)
                return
            waited = True
            log.error(
                "another running process is node %s (%d subscribed to its channel): "
                "this one waits, serving nothing; give each node its own --node-id",
                self._node_id,
                receivers - 1,
            )
            await asyncio.sleep(_ID_IN_USE_RETRY)

    async def beat(self) -> BeatStatus:
        """Say this node is alive; learn which are dead and clean up after them.

        A node lapsed is taken for dead only by a node whose own beats went through
        promptly for a TTL and one refresh before: when the registry was out for this
        node too (a Redis outage, refused writes, a failover of the registry's shard, a
        stall here), the others' lapses may be the same gap, and each may come back
        later than this one (a beat stuck on a primary that died, until its timeout,
        then tried again a refresh later).
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with self._health.watching("presence_write"):
                beat = await self._broker.nodes.beat(self._node_id, self._ttl)
        except BaseException:
            self._steady_since = None
            raise
        done = loop.time()
        if beat.status is not BeatStatus.LIVE or done - started > self._prompt:
            self._steady_since = None
        if self._steady_since is None:
            self._steady_since = done
        if beat.status is not BeatStatus.LIVE:
            return beat.status
        if done - self._steady_since < self._ttl + self._prompt:
            # Not judging yet: who was dead already and still is stays so.
            self.dead = self.dead & beat.dead
            return beat.status
        self.dead = beat.dead
        for dead in beat.dead - self._cleanups.keys():
            self._cleanups[dead] = asyncio.create_task(self._collect(dead), name=f"collect-{dead}")
        return beat.status

    async def enlist(self, claims: Iterable[tuple[str, str]]) -> None:
        """List ``(conn id, agent)`` claims in this node's index."""
        members = [index_member(conn_id, agent) for conn_id, agent in claims]
        with self._health.watching("presence_write"):
            await self._broker.nodes.enlist(self._node_id, members)

    async def delist(self, conn_id: str, agent: str) -> None:
        """Remove an ended claim from this node's index."""
        await self._broker.nodes.delist(self._node_id, index_member(conn_id, agent))

    async def leave(self) -> None:
        """Deregister (the node stops; its claims are withdrawn already)."""
        await self._broker.nodes.leave(self._node_id)

    async def stop(self) -> None:
        """Cancel cleanups in progress (another node takes them over)."""
        tasks = list(self._cleanups.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _collect(self, dead: str) -> None:
        """Delete what a dead node's index lists, unless another node does it."""
        try:
            members = await self._broker.nodes.take(dead, max(_COLLECT_HOLD_MIN, 3 * self._ttl))
            if members is None:
                return
            await self._delete([_claim_of(member) for member in members])
            # Listed dead a while longer: a node whose beat comes after this cleanup
            # must still see it die (its peers held there are lost).
            await self._broker.nodes.collected(dead, _GONE_LINGER_TTLS * self._ttl)
            log.warning(
                "node %s is dead: removed from presence those of its %d agents no newer "
                "connection holds",
                dead,
                len(members),
            )
        except (ConnectionError, OSError) as exc:
            # Its hold lapses and a later beat (here or elsewhere) takes it again.
            log.warning("cleanup after dead node %s failed: %s", dead, exc)
        finally:
            self._cleanups.pop(dead, None)

    async def _delete(self, claims: list[tuple[str, str]]) -> None:
        """Delete the records and claim keys of ``(conn id, agent)`` claims, each only
        while that connection still owns it."""
        items: list[tuple[str, str]] = []
        for conn_id, agent in claims:
            items += [(presence_key(agent), conn_id), (claim_key(agent), conn_id)]
        for start in range(0, len(items), _COLLECT_BATCH):
            await self._broker.delete_records(items[start : start + _COLLECT_BATCH])
        if self._resume_window > 0:
            # Their sessions are away now: kept for the window, as if they had closed.
            held = [(agent, conn_id) for conn_id, agent in claims]
            for start in range(0, len(held), _COLLECT_BATCH):
                chunk = held[start : start + _COLLECT_BATCH]
                await self._broker.release_sessions(chunk, self._resume_window)
