"""Peers: what local sockets are told about the agents they talk to.

A socket that names a ``peer`` is told, by a registry message, that the peer exists
as soon as it is connected to any node, under a runner named per holder connection
(docs/protocol.md, Presence): a restarted peer is announced anew, a re-announcement
of the same holder says nothing. A peer gone (its DOWN event, or the heartbeat of
its node lapsed: ``bushub.membership``) and not back within ``--peer-grace`` closes the
sockets that asked ``on_peer_lost=close`` with 4002.

Events come from the presence channels; the node's heartbeat says which nodes died
(a crashed node publishes no DOWN). The peers' records are read when first watched,
after a broker break (events may have been missed) and when a node thought dead
beats again; never on a timer. Timers come in from outside (``call_later``), so a
test drives every transition.
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable

from bushub.broker import Broker
from bushub.brokerhealth import BrokerHealth
from bushub.closecodes import CloseCode
from bushub.connection import Connection
from bushub.membership import Membership
from bushub.outbound import Outbound
from bushub.settings import Settings
from bushub.subscriptions import Subscriptions
from buswire import DecodeError, Dialect, presence_channel, presence_key, registry_message
from buswire.codec import encode_tree
from buswire.presence import record_runner

log = logging.getLogger(__name__)

HUB_SOURCE = "bushub"
# Who holds a peer: (connection, node, the runner it is announced under).
Holder = tuple[str, str, str]
# loop.call_later's shape: (delay, callback, *args) -> a cancellable handle.
CallLater = Callable[..., asyncio.TimerHandle]


def _close_lost(conn: Connection, peer: str, grace: float) -> None:
    """Close ``conn`` with 4002 if it asked for it: its peer was lost for ``grace`` s."""
    if conn.close_on_peer_lost:
        log.info("peer %s of %s lost for %.1fs; closing", peer, conn.agent, grace)
        conn.request_close(CloseCode.PEER_LOST)


def runner_name(agent: str, conn_id: str) -> str:
    """The runner an agent is announced under: one per connection holding it.

    Clients deduplicate agents per runner, so a new connection of the agent (a
    restart) makes ``@agent_ready`` fire again, while re-announcing the same
    connection (a reconnect of the watcher) does not.
    """
    return f"{HUB_SOURCE}:{agent}:{conn_id}"


class Peers:
    """The peers watched by local sockets, their holders and their lost timers.

    Args:
        settings: Peer grace.
        broker: Where the peers' presence records are read.
        subscriptions: The node's shared channel subscriptions.
        outbound: Writes registry announcements to sockets.
        call_later: Schedules the peer-lost timers (``loop.call_later``).
        health: Told of reads Redis refuses.
        membership: Which nodes are dead.
    """

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        subscriptions: Subscriptions,
        outbound: Outbound,
        call_later: CallLater,
        health: BrokerHealth,
        membership: Membership,
    ) -> None:
        self._settings = settings
        self._broker = broker
        self._subscriptions = subscriptions
        self._outbound = outbound
        self._call_later = call_later
        self._health = health
        self._membership = membership
        # Local connections by the peer they serve, and who holds each such peer
        # (its connection), and on which node.
        self._watchers: dict[str, set[Connection]] = {}
        self._holders: dict[str, str | None] = {}
        # The runner each held peer is announced under (its connection or session).
        self._runners: dict[str, str] = {}
        self._holder_nodes: dict[str, str] = {}
        # Bumped by each event about a watched peer: a record read that started
        # before an event is older than it.
        self._version: dict[str, int] = defaultdict(int)
        self._lost_timers: dict[str, asyncio.TimerHandle] = {}
        # Per session socket told of its peer on an earlier socket and finding it absent
        # here: its own lost timer (other watchers of the peer here never saw it go).
        self._seen_timers: dict[Connection, asyncio.TimerHandle] = {}

    def sizes(self) -> dict[str, int]:
        """How many entries each per-peer structure holds (for leak checks)."""
        return {
            "watchers": len(self._watchers),
            "peer_holders": len(self._holders),
            "peer_runners": len(self._runners),
            "peer_holder_nodes": len(self._holder_nodes),
            "peer_version": len(self._version),
            "lost_timers": len(self._lost_timers),
            "seen_timers": len(self._seen_timers),
        }

    async def watch(self, conn: Connection) -> None:
        peer = conn.peer
        assert peer is not None
        first = peer not in self._watchers
        self._watchers.setdefault(peer, set()).add(conn)
        if first:
            await self._subscriptions.acquire(presence_channel(peer))
            version = self._version[peer]
            [record] = await self._broker.get_records([presence_key(peer)])
            holder = _holder_of(record)
            if holder is not None and not self._membership.is_live(holder[1]):
                # On a node last seen dead: ask whether Redis hears it now (it may be
                # back, re-asserting what it holds) rather than leave the peer
                # unannounced until the next beat.
                await self._membership.answers(holder[1])
            if self._version[peer] == version and peer not in self._holders:
                live = self._live(holder)
                self._holders[peer] = live[0] if live else None
                if live:
                    self._holder_nodes[peer] = live[1]
                    self._runners[peer] = live[2]
        self._announce_peer(conn)
        if conn.session is not None and conn.session.peer_seen:
            await self._lost_while_away(conn, peer)

    async def _lost_while_away(self, conn: Connection, peer: str) -> None:
        """A session's socket whose proxy was told of its peer before (on a node that
        may be gone: drained, killed) finds it absent here: a lost timer starts for
        this socket, as on the node that saw the peer go, with the grace of a peer held
        by a session when one of the peer's is kept (it is away, on its way back). Else
        a peer that left while the proxy was reconnecting was waited for in silence for
        good. Only this socket: the peer's other watchers here never saw it."""
        if self._holders.get(peer) is not None or peer in self._lost_timers:
            return
        try:
            away = await self._broker.session_kept(peer)
        except ConnectionError:
            away = True  # the longer wait: a peer on its way back is not cut off
        watching = conn in self._watchers.get(peer, ())
        if self._holders.get(peer) is not None or peer in self._lost_timers or not watching:
            return  # back, taken for lost, or the socket gone, meanwhile
        grace = self._grace(held_by_session=away)
        log.info("peer %s of %s, seen before, is not here; lost in %.1fs", peer, conn.agent, grace)
        self._seen_timers[conn] = self._call_later(grace, self._seen_lost, conn, peer, grace)

    def _seen_lost(self, conn: Connection, peer: str, grace: float) -> None:
        self._seen_timers.pop(conn, None)
        if self._holders.get(peer) is None:
            _close_lost(conn, peer, grace)

    def _cancel_seen(self, conns: Iterable[Connection]) -> None:
        for conn in conns:
            timer = self._seen_timers.pop(conn, None)
            if timer is not None:
                timer.cancel()

    def _live(self, holder: Holder | None) -> Holder | None:
        """A record's (connection, node, runner), unless its node is known dead."""
        return holder if holder is not None and self._membership.is_live(holder[1]) else None

    async def unwatch(self, conn: Connection) -> None:
        peer = conn.peer
        assert peer is not None
        watchers = self._watchers.get(peer)
        if watchers is None or conn not in watchers:
            return
        watchers.discard(conn)
        self._cancel_seen([conn])
        if not watchers:
            del self._watchers[peer]
            self._holders.pop(peer, None)
            self._runners.pop(peer, None)
            self._holder_nodes.pop(peer, None)
            self._version.pop(peer, None)
            timer = self._lost_timers.pop(peer, None)
            if timer is not None:
                timer.cancel()
            await self._subscriptions.release(presence_channel(peer))

    def _announce_peer(self, conn: Connection) -> None:
        """Tell a client its peer exists, once per runner of the peer."""
        peer = conn.peer or ""
        holder = self._runners.get(peer) if self._holders.get(peer) is not None else None
        if conn.peer is None or holder is None or conn.announced_holder == holder:
            return
        conn.announced_holder = holder
        dialects = [conn.dialect] if conn.dialect else [Dialect.SUBAGENTS, Dialect.PIPECAT]
        for dialect in dialects:
            tree = registry_message(
                dialect, source=HUB_SOURCE, runner=runner_name(conn.peer, holder), agent=conn.peer
            )
            self._outbound.announce(conn, encode_tree(tree, conn.format))

    def _peer_up(self, peer: str, holder: str, node: str, runner: str) -> None:
        if peer not in self._watchers:
            return
        self._holder_nodes[peer] = node
        if self._holders.get(peer) == holder:
            return
        self._holders[peer] = holder
        self._runners[peer] = runner
        timer = self._lost_timers.pop(peer, None)
        if timer is not None:
            timer.cancel()
        self._cancel_seen(self._watchers[peer])
        for conn in self._watchers[peer]:
            self._announce_peer(conn)

    def _peer_down(self, peer: str) -> None:
        holder = self._holders.get(peer)
        if peer not in self._watchers or holder is None:
            return
        self._holders[peer] = None
        if peer not in self._lost_timers:
            runner = self._runners.get(peer)
            grace = self._grace(held_by_session=runner is not None and runner != holder)
            self._lost_timers[peer] = self._call_later(grace, self._peer_lost, peer, grace)

    def _grace(self, *, held_by_session: bool) -> float:
        """How long a peer that let go may take to come back before it is lost.

        A peer held by a session (announced under its session, not its connection:
        a reconnecting proxy) is away, not gone, until its session is: its messages
        are kept and a reconnect to any node resumes it, for ``--resume-window``.
        Taking it for lost sooner closes its watchers (4002) while it is on its way
        back, and a reconnecting watcher takes that close as final.
        """
        settings = self._settings
        if held_by_session:
            return max(settings.peer_grace, settings.resume_window)
        return settings.peer_grace

    def _peer_lost(self, peer: str, grace: float) -> None:
        self._lost_timers.pop(peer, None)
        if self._holders.get(peer) is not None:
            return
        for conn in list(self._watchers.get(peer, ())):
            _close_lost(conn, peer, grace)

    def cancel_timers(self) -> None:
        """Forget every pending peer-lost timer (the node is stopping)."""
        for timer in self._lost_timers.values():
            timer.cancel()
        self._lost_timers.clear()
        self._cancel_seen(list(self._seen_timers))

    # ---- what presence tells ------------------------------------------------

    def up(self, agent: str, conn_id: str, node: str, runner: str) -> None:
        """``agent`` is held by ``conn_id`` on ``node`` now, announced as ``runner``
        (an UP event)."""
        if agent in self._watchers:
            self._version[agent] += 1
            self._peer_up(agent, conn_id, node, runner)

    def down(self, agent: str, conn_id: str) -> None:
        """``conn_id`` let go of ``agent`` (a DOWN event)."""
        if agent in self._watchers:
            self._version[agent] += 1
            if self._holders.get(agent) == conn_id:
                self._peer_down(agent)

    async def nodes_changed(self, dead_before: frozenset[str]) -> None:
        """The set of dead nodes changed: peers held on newly dead nodes are gone;
        peers that are down are read again if a node came back."""
        dead = self._membership.dead
        if dead - dead_before:
            for peer, node in list(self._holder_nodes.items()):
                if node in dead:
                    self._peer_down(peer)
        if dead_before - dead:
            await self.reread(only_down=True)

    async def reread(self, *, only_down: bool = False) -> None:
        """Re-read the watched peers' records (after a broker break: events may
        have been missed), or only those of peers that are down."""
        peers = [p for p in self._watchers if not only_down or self._holders.get(p) is None]
        if not peers:
            return
        versions = [self._version[p] for p in peers]
        with self._health.watching("presence_read"):
            records = await self._broker.get_records([presence_key(p) for p in peers])
        for peer, version, record in zip(peers, versions, records, strict=True):
            if self._version.get(peer) != version:
                continue  # an event arrived meanwhile and is fresher than this read
            holder = self._live(_holder_of(record))
            if holder is None:
                self._peer_down(peer)
            else:
                self._peer_up(peer, *holder)


def _holder_of(record: bytes | None) -> Holder | None:
    """The (connection, node, runner) a record names; None when absent or unreadable."""
    if record is None:
        return None
    try:
        return record_runner(record)
    except DecodeError:
        return None
