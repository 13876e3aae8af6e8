"""The node's side of the operator API: taps, the console's reports, sends by HTTP.

Put together by the hub; the HTTP routes are in ``bushub.opsapi``. Every part here is
idle (no task, no subscription but the ops channel's, nothing per message but an empty
dict's truth test in the relay) until an operator opens a tap or a console.
"""

from collections.abc import Callable
from typing import Any

from bushub.apisend import ApiSender
from bushub.broker import Broker
from bushub.connection import Connection
from bushub.metrics import Metrics
from bushub.nodereports import ConsoleView, NodeReporter, NodeState
from bushub.opsnotices import Announcer, Watched, tap_notice
from bushub.settings import Settings
from bushub.sidepublisher import SidePublisher
from bushub.subscriptions import Subscriptions
from bushub.taps import TAP_PREFIX, TapRecorder, TapStreams
from buswire.channels import console_channel, ops_channel

# Operators' messages queued for the broker at most (tap events, reports, notices).
SIDE_CAPACITY = 2_000

_OPS = ops_channel()
_CONSOLE = console_channel()


class Operators:
    """Taps, console reports and HTTP sends of one node.

    Args:
        settings: The node's settings.
        broker: The node's broker.
        subscriptions: The node's channel subscriptions.
        metrics: Where tap events and sends are counted.
        holders: The local socket holding each agent name.
        connection_count: Sockets open on this node.
        status: The node's readiness body.
    """

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        subscriptions: Subscriptions,
        metrics: Metrics,
        holders: dict[str, Connection],
        connection_count: Callable[[], int],
        status: Callable[[], dict[str, Any]],
    ) -> None:
        self.node_id = settings.node_id
        self._subscriptions = subscriptions
        tap_events = metrics.tap_events
        self.watched = Watched()
        self.side = SidePublisher(
            broker, SIDE_CAPACITY, lambda n: tap_events.labels("dropped").inc(n)
        )
        self.recorder = TapRecorder(
            self.node_id,
            self.watched,
            self.side,
            lambda outcome, n: tap_events.labels(outcome).inc(n),
        )
        self.announcer = Announcer(self.side.publish)
        self.streams = TapStreams(
            subscriptions,
            self.announcer.set_taps,
            self.side.flushed,
            lambda agent: self.watched.heard(tap_notice(agent)),
            lambda n: tap_events.labels("reader_dropped").inc(n),
        )
        self.reporter = NodeReporter(
            NodeState(self.node_id, metrics, holders, connection_count, status),
            self.watched,
            self.side.publish,
        )
        self.console = ConsoleView(
            self.reporter, self._listen_console, self.announcer.watch_console
        )
        self.sender = ApiSender(settings, broker, self.recorder, metrics.api_sends)

    async def start(self) -> None:
        """Listen for operators' notices (the one standing subscription)."""
        await self._subscriptions.acquire(_OPS)

    async def stop(self) -> None:
        """End every task of the operator views."""
        await self.announcer.close()
        await self.reporter.close()
        await self.console.close()
        await self.side.close()

    def on_message(self, channel: str, data: bytes) -> bool:
        """Take a broker message meant for the operator views; False if it is not."""
        if channel.startswith(TAP_PREFIX):
            self.streams.on_event(channel[len(TAP_PREFIX) + 1 : -1], data)
        elif channel == _OPS:
            self.watched.heard(data)
            self.reporter.watch_heard()
        elif channel == _CONSOLE:
            self.console.on_report(data)
        else:
            return False
        return True

    def sizes(self) -> dict[str, int]:
        """What the operator views hold (for leak checks)."""
        return {
            "tap streams": self.streams.open_count,
            "tapped": len(self.watched.tapped),
            "operator messages queued": self.side.pending,
        }

    async def _listen_console(self, on: bool) -> None:
        if on:
            await self._subscriptions.acquire(_CONSOLE)
        else:
            await self._subscriptions.release(_CONSOLE)
