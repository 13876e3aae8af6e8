"""``POST /api/send``: a bus message from a backend that is no pipecat process.

The message goes through the checks a socket's message does (size, envelope, registry
types, type policy, target name, the grant) and is published to its target's channel
as a relay frame like one from a socket, so sessions keep it and taps see it. Unlike a
socket's, the answer says whether it arrived: the publish's reply is how many nodes
took it (or that a session away within its window kept it), so "no agent of that name
anywhere" is a 404 rather than a silent drop, and nothing is published on any error
(docs/protocol.md, Operator API).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from bushub.auth import OPEN_GRANT, Grant
from bushub.broker import Broker
from bushub.broker.base import PartialPublish
from bushub.settings import Settings
from bushub.taps import TapRecorder
from buswire import DecodeError, Format, is_registry_type, message_channel, validate_agent_name
from buswire.codec import envelope_of, load_tree
from buswire.complexity import container_budget
from buswire.relayframe import pack_relay

# A DELIVER reply: nobody subscribed, but the session holding the name kept it.
_KEPT_AWAY = -2


@dataclass(frozen=True, slots=True)
class SendAnswer:
    """The HTTP status and JSON body of one send."""

    status: int
    body: dict[str, Any]


class ApiSender:
    """Checks and publishes messages sent over HTTP.

    Args:
        settings: Size limit and type policy, as for sockets.
        broker: Where the message is published.
        taps: Told of every message accepted.
        sends: ``bushub_api_sends_total``, labelled by result
            (``bushub.metrics.API_SEND_RESULTS``).
    """

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        taps: TapRecorder,
        sends: Counter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._max_message_bytes = settings.max_message_bytes
        self._bytes_per_container = settings.bytes_per_container
        self._policy = settings.type_policy()
        self._broker = broker
        self._taps = taps
        self._sends = sends
        self._clock = clock

    async def send(self, data: bytes, grant: Grant = OPEN_GRANT) -> SendAnswer:
        """Check ``data`` (one message in the libraries' JSON) and publish it.

        Args:
            grant: An agent token's grant; the open grant for the admin token.
        """
        if len(data) > self._max_message_bytes:
            return self.oversize(len(data))
        budget = container_budget(len(data), self._bytes_per_container)
        try:
            tree = load_tree(data, Format.JSON, budget)
            envelope = envelope_of(tree)
            if is_registry_type(envelope.type_name):
                return self._refused(400, "bad_request", "registry messages are the hub's own")
            self._policy.check(tree, budget)
            target = envelope.target
            if target is None:
                return self._refused(400, "bad_request", "no target: name one in __data__.target")
            validate_agent_name(target)
        except DecodeError as exc:
            detail = f": {exc.detail}" if exc.detail else ""
            return self._refused(400, "bad_request", f"{exc.reason}{detail}")
        if grant is not OPEN_GRANT:
            if not grant.may_address(target):
                return self._refused(403, "forbidden", f"the token may not address {target!r}")
            if not grant.may_hold(envelope.source):
                return self._refused(
                    403, "forbidden", f"the token may not send as {envelope.source!r}"
                )
        if not self._broker.up:
            return self._refused(503, "broker_down", "the broker is unreachable")
        relay = pack_relay(Format.JSON, self._clock(), data)
        try:
            (count,) = await self._broker.publish_many([(message_channel(target), relay)])
        except (PartialPublish, ConnectionError, OSError, TimeoutError) as exc:
            return self._refused(503, "broker_down", f"not published: {exc}")
        if count == 0:
            return self._refused(404, "no_agent", f"no agent named {target!r} is connected")
        self._taps.seen(
            None, envelope.type_name, envelope.source, target, tree, len(data), Format.JSON
        )
        if count == _KEPT_AWAY:
            self._sends.labels("kept").inc()
            return SendAnswer(202, {"accepted": True, "target": target, "kept": True})
        self._sends.labels("accepted").inc()
        return SendAnswer(202, {"accepted": True, "target": target, "nodes": count})

    def unauthorized(self) -> None:
        """Count a send refused for its credentials (answered by the route)."""
        self._sends.labels("unauthorized").inc()

    def oversize(self, size: int) -> SendAnswer:
        """The answer to a body of ``size`` bytes, over the limit."""
        return self._refused(
            413, "oversize", f"{size} bytes is over --max-message-bytes ({self._max_message_bytes})"
        )

    def _refused(self, status: int, result: str, error: str) -> SendAnswer:
        self._sends.labels(result).inc()
        return SendAnswer(status, {"error": error})
