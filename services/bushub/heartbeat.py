"""The node's periodic presence pass: one heartbeat, and per agent nothing unless
something was lost.

Every ``--presence-ttl``/3 the node beats (``bushub.membership``); peers held on
nodes that died are lost, and nodes back from the dead are read again. The records
are re-asserted, and every peer re-read, only when something may have been lost: after
a broker break, or when the registry did not know this node as alive (a stall or
a partition longer than the TTL, a Redis that lost its data); then every holder is
announced again, since the other nodes may have dropped it.
"""

import asyncio
import logging
from collections.abc import Callable

from bushub.broker import Broker
from bushub.broker.nodes import BeatStatus
from bushub.broker.refusals import BrokerRefused
from bushub.brokerhealth import BrokerHealth
from bushub.lightsync import wait_at_most
from bushub.presence import Presence
from bushub.settings import Settings

log = logging.getLogger(__name__)

# Bound on deregistering at shutdown: Redis may be the reason for it.
_LEAVE_SECONDS = 2.0
# How often a node whose writes Redis refuses tries again.
REFUSED_RETRY = 0.5


class Heartbeat:
    """The presence loop of one node.

    Args:
        settings: Node id, presence TTL and refresh period.
        broker: Checked for reachability; probed when it refused writes.
        presence: Whose records are re-asserted and peers re-read.
        health: Probed each pass.
    """

    def __init__(
        self, settings: Settings, broker: Broker, presence: Presence, health: BrokerHealth
    ) -> None:
        self._settings = settings
        self._broker = broker
        self._presence = presence
        self._membership = presence.membership
        self._health = health
        # Where the node checks that Redis takes publishes again after refusing them.
        self._probe_name = f"bushub:probe:{{{settings.node_id}}}"
        self._now = asyncio.Event()
        # Re-assert every record and re-read every peer on the next pass (a broker
        # break: events and writes may have been lost).
        self._full_pass = False
        self._left = False
        self._joined = False
        # Told once the node's records are re-asserted after another node took it for
        # dead (and released its sessions): the hub holds them again.
        self.on_lapsed: Callable[[], None] = lambda: None
        self._lapsed = False

    def reconcile_soon(self) -> None:
        """Re-assert records and re-read peers now (the broker is back)."""
        self._full_pass = True
        self._now.set()

    async def join(self) -> None:
        """The first heartbeat, before the node takes sockets (best effort: the loop
        retries)."""
        try:
            await self._membership.join()
            self._joined = True
        except (ConnectionError, OSError) as exc:
            log.warning("first heartbeat failed: %s", exc)

    async def leave(self) -> None:
        """Deregister once every claim is withdrawn; with claims left (no drain), let
        the heartbeat lapse instead, so that another node cleans up after this one."""
        await self._membership.stop()
        if self._left or self._presence.connection_count or not self._broker.up:
            return
        self._left = True
        try:
            await asyncio.wait_for(self._membership.leave(), _LEAVE_SECONDS)
        except (ConnectionError, OSError, TimeoutError) as exc:
            # A TimeoutError says nothing of itself: its type does.
            log.warning("could not deregister the node: %s", str(exc) or type(exc).__name__)

    async def run(self) -> None:
        """Beat every ``presence_refresh`` seconds, and at once when asked; while
        Redis refuses this node's writes, every ``REFUSED_RETRY`` seconds at most, so
        that the node is ready again soon after Redis relents."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            period = self._settings.presence_refresh
            if self._health.problem is not None:
                period = min(period, REFUSED_RETRY)
            due = last + period - loop.time()
            if due > 0 and not self._now.is_set():
                # Woken every REFUSED_RETRY at least: a refusal met elsewhere (a
                # claim, a publish) shortens the wait already under way.
                await wait_at_most(self._now, min(due, REFUSED_RETRY))
                continue
            self._now.clear()
            last = loop.time()
            if not self._broker.up:
                continue
            try:
                await self._pass()
            except BrokerRefused:
                pass  # counted, logged and readiness taken down where it was refused
            except (ConnectionError, OSError) as exc:
                log.warning("presence pass failed: %s", exc)

    async def _pass(self) -> None:
        dead_before = self._membership.dead
        if not self._joined:
            await self._membership.join()  # what join() at start could not do
            self._joined = True
        status = await self._membership.beat()
        if status is not BeatStatus.LIVE:
            self._lapsed = True
        if status is BeatStatus.COLLECTING:
            log.warning("the cluster took this node for dead and is cleaning up after it")
            self._full_pass = True  # re-assert once it is done
        elif status is not BeatStatus.LIVE or self._full_pass:
            # Unknown or lapsed: other nodes may have dropped this node's agents.
            await self._presence.reconcile(announce=status is not BeatStatus.LIVE)
            self._full_pass = False
            if self._lapsed:
                # After the cleanup (a session held again before it would be released
                # again by it).
                self._lapsed = False
                self.on_lapsed()
        await self._presence.peers.nodes_changed(dead_before)
        # The beat was a write that went through: presence works.
        self._health.accepted("presence")
        await self._health.probe_publish(self._broker, self._probe_name)
        await self._health.probe_subscribe(self._broker)
