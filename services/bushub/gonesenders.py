"""Forgetting the sending sessions that are gone from the relay's record of them.

The delivery step remembers, per agent, the newest position relayed from each
sending session (``bushub:relayed:{agent}``), so that what a session sends again
after a reconnect is relayed once. The record lives at least a window (at most
two) past the last message relayed to the agent, so an agent that is never that long without one (a
worker serving clients that come and go, each client process a session of its own)
would keep a sender for every session that ever wrote to it.

A sender is no longer needed once its session is gone: away past the window (its
proxy resumes with a gap, and sends nothing older than the window again) or
replaced by a newer session of its agent (a restarted process; the old one never
comes back). Every ``--resume-forget-every`` seconds the node asks, for the agents
of its sockets written to since its last pass (or with senders it found gone then),
which senders' sessions are gone, and forgets those found gone on two passes in a
row at the same position: a session that Redis lost in a failover is put back by
its node within seconds, so it is not gone on the next pass, and a sender that
relayed again in between keeps its record.
"""

import asyncio
import logging
import random
from collections.abc import Callable

from bushub.broker import Broker
from bushub.connection import Connection
from bushub.metrics import Metrics

log = logging.getLogger(__name__)

# Senders found gone per agent and pass at most: a record that grew for long before
# this node came is worked off over several passes.
MOST = 10_000


class GoneSenders:
    """The node's passes over its agents' relay records.

    Args:
        broker: Where the records are (``relayed_senders_gone``, ``forget_relayed``).
        connections: The node's sockets, as presence lists them.
        every: Seconds between passes.
    """

    def __init__(
        self,
        broker: Broker,
        connections: Callable[[], list[Connection]],
        metrics: Metrics,
        every: float,
    ) -> None:
        self._broker = broker
        self._connections = connections
        self._metrics = metrics
        self._every = every
        # Each socket's messages written as of the last pass, by socket id.
        self._written: dict[str, int] = {}
        # Per agent, the senders found gone on the last pass, with their positions.
        self._suspects: dict[str, dict[bytes, bytes]] = {}

    async def run(self) -> None:
        """Pass every ``every`` seconds (the first at a random point of the first
        interval, so that nodes started together do not pass together)."""
        await asyncio.sleep(self._every * random.random())
        while True:
            await self.pass_once()
            await asyncio.sleep(self._every)

    async def pass_once(self) -> int:
        """One pass over the agents written to since the last, and those with senders
        suspected gone by it; senders forgotten."""
        written, self._written = self._written, {}
        suspects, self._suspects = self._suspects, {}
        agents = []
        for conn in self._connections():
            self._written[conn.id] = conn.messages_out
            if conn.messages_out != written.get(conn.id, 0) or conn.agent in suspects:
                agents.append(conn.agent)
        forgotten = 0
        for agent in agents:
            try:
                forgotten += await self._pass_agent(agent, suspects.get(agent, {}))
            except ConnectionError as exc:
                # Redis away or refusing: the next pass asks again, with the same suspects.
                log.debug("relay record of %s not read: %s", agent, exc)
                if agent in suspects:
                    self._suspects[agent] = suspects[agent]
        if forgotten:
            self._metrics.relayed_forgotten.inc(forgotten)
            log.info("forgot %d sending sessions gone from relay records", forgotten)
        return forgotten

    async def _pass_agent(self, agent: str, suspected: dict[bytes, bytes]) -> int:
        gone = await self._broker.relayed_senders_gone(agent, MOST)
        confirmed = {s: p for s, p in gone.items() if suspected.get(s) == p}
        new = {s: p for s, p in gone.items() if s not in confirmed}
        if new:
            self._suspects[agent] = new
        if not confirmed:
            return 0
        return await self._broker.forget_relayed(agent, confirmed)
