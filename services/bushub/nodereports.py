"""Node reports for the console: what a node is and holds, once a second while watched.

``NodeReporter`` builds this node's report and, while a console's notice holds
(``Watched.console_watching``), publishes it on the console channel every
``REPORT_EVERY`` seconds. ``ConsoleView``, on a node serving ``GET /api/cluster``,
listens to that channel while a console asks and answers with every node's newest
report (docs/protocol.md, Operator API). No console, no reports: the reporter's task is
not even running.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bushub.connection import Connection
from bushub.metrics import Metrics
from bushub.ondemand import OnDemandTask
from bushub.opsnotices import Watched
from buswire.channels import console_channel

REPORT_EVERY = 1.0
# A node's report is shown while it is this recent: a node gone quiet drops out.
REPORT_STALE_AFTER = 3.5
# Sockets one report lists at most: a console of a node with 20,000 sockets would
# otherwise move megabytes a second.
MAX_SOCKETS = 5_000


class NodeState:
    """What the report reads off the node (a narrow view of the hub)."""

    def __init__(
        self,
        node_id: str,
        metrics: Metrics,
        holders: dict[str, Connection],
        connection_count: Callable[[], int],
        status: Callable[[], dict[str, Any]],
    ) -> None:
        self.node_id = node_id
        self.metrics = metrics
        self.holders = holders
        self.connection_count = connection_count
        # ready, broker_up, draining, broker_refuses (the readiness body).
        self.status = status


def socket_row(node_id: str, conn: Connection) -> dict[str, Any]:
    """One socket as the console lists it."""
    return {
        "agent": conn.agent,
        "node": node_id,
        "peer": conn.peer,
        "connected_since": conn.since,
        "format": conn.format.value,
        "dialect": conn.dialect.value if conn.dialect is not None else "auto",
        "session": conn.session is not None,
        "messages_in": conn.messages_in,
        "messages_out": conn.messages_out,
        "dropped": conn.dropped,
    }


class NodeReporter:
    """This node's report, and its publishing while a console watches.

    Args:
        state: What the report is read from.
        watched: Whether a console's notice holds.
        publish: Publishes one report (lossy).
    """

    def __init__(
        self, state: NodeState, watched: Watched, publish: Callable[[str, bytes], object]
    ) -> None:
        self._state = state
        self._watched = watched
        self._publish = publish
        self._task = OnDemandTask(self._run, "reports")
        self._last_counts = (0, 0)
        self._last_at = time.monotonic()
        self._rates = (0.0, 0.0)

    def report(self) -> dict[str, Any]:
        """This node now."""
        state = self._state
        status = state.status()
        traffic = state.metrics.traffic
        counts = (sum(traffic.received.values()), sum(traffic.delivered.values()))
        now = time.monotonic()
        elapsed = now - self._last_at
        if elapsed >= REPORT_EVERY / 2:
            self._rates = (
                (counts[0] - self._last_counts[0]) / elapsed,
                (counts[1] - self._last_counts[1]) / elapsed,
            )
            self._last_counts, self._last_at = counts, now
        holders = list(state.holders.values())
        rows = [socket_row(state.node_id, conn) for conn in holders[:MAX_SOCKETS]]
        if not status["broker_up"]:
            broker = "down"
        elif status["broker_refuses"]:
            broker = "refused"
        else:
            broker = "up"
        return {
            "node": state.node_id,
            "ready": status["ready"],
            "broker": broker,
            "broker_problem": status["broker_refuses"],
            "draining": status["draining"],
            "connections": state.connection_count(),
            "agents": len(holders),
            "received_per_s": round(self._rates[0], 1),
            "delivered_per_s": round(self._rates[1], 1),
            "dropped": _dropped_by_reason(state.metrics),
            "updated": time.time(),
            "sockets": rows,
            "truncated": len(holders) > MAX_SOCKETS,
        }

    def watch_heard(self) -> None:
        """A console notice came: report at once, then every second while it holds."""
        if self._watched.console_watching:
            self._task.ensure()

    async def _run(self) -> None:
        while self._watched.console_watching:
            self._publish(console_channel(), orjson.dumps(self.report()))
            await asyncio.sleep(REPORT_EVERY)

    async def close(self) -> None:
        """Stop reporting."""
        await self._task.close()


def _dropped_by_reason(metrics: Metrics) -> dict[str, float]:
    dropped: dict[str, float] = {}
    for family in metrics.messages_dropped.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                dropped[sample.labels["reason"]] = sample.value
    return dropped


class ConsoleView:
    """The cluster as consoles see it from this node: every node's newest report.

    Args:
        reporter: This node's own report, always fresh in an answer.
        subscribe: Subscribes (True) or unsubscribes (False) the console channel.
        watch: Asks every node to report for so many seconds more.
    """

    # An answer asks for reports this long; a console polls every second.
    WATCH_FOR = 10.0

    def __init__(
        self,
        reporter: NodeReporter,
        subscribe: Callable[[bool], Awaitable[None]],
        watch: Callable[[float], None],
    ) -> None:
        self._reporter = reporter
        self._subscribe = subscribe
        self._watch = watch
        self._reports: dict[str, tuple[float, dict[str, Any]]] = {}
        self._listening_until = 0.0
        self._subscribed = False
        self._task = OnDemandTask(self._stop_listening_later, "console-view")

    def on_report(self, data: bytes) -> None:
        """A report from the console channel."""
        try:
            report = orjson.loads(data)
            node = report["node"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if isinstance(node, str):
            self._reports[node] = (time.monotonic(), report)

    async def answer(self) -> dict[str, Any]:
        """``GET /api/cluster``: every node that reported lately, this one fresh."""
        now = time.monotonic()
        self._watch(self.WATCH_FOR)
        self._listening_until = now + self.WATCH_FOR
        # The task that lets go of the subscription first: a request cancelled while it
        # subscribes must not leave the channel held.
        self._task.ensure()
        if not self._subscribed:
            self._subscribed = True
            await self._subscribe(True)
        own = self._reporter.report()
        reports = {
            node: report
            for node, (at, report) in self._reports.items()
            if now - at <= REPORT_STALE_AFTER
        }
        reports[own["node"]] = own
        nodes, agents, truncated = [], [], False
        for node in sorted(reports):
            report = dict(reports[node])
            agents.extend(report.pop("sockets", ()))
            truncated = truncated or bool(report.pop("truncated", False))
            nodes.append(report)
        agents.sort(key=lambda row: (str(row.get("agent")), str(row.get("node"))))
        return {"node": own["node"], "nodes": nodes, "agents": agents, "truncated": truncated}

    async def _stop_listening_later(self) -> None:
        # A deadline each answer pushes out, not an event to wait for.
        while (left := self._listening_until - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)
        self._reports.clear()
        if self._subscribed:
            self._subscribed = False
            await self._subscribe(False)

    async def close(self) -> None:
        """Stop listening."""
        await self._task.close()
