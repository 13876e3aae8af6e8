"""Whether Redis takes this node's writes: readiness beyond reachability.

A reachable Redis can still refuse every write: an ACL user without ``publish``,
``maxmemory`` reached under ``noeviction``. The node keeps serving what it can
(refused publishes are dropped and counted, presence is retried on every pass) and
reports the refusal: readiness goes false, so the load balancer sends new sockets
elsewhere; ``bushub_redis_errors_total{op,kind}`` counts every error reply; a
WARNING says which. The first write of the same area that goes through clears it,
so the node comes back by itself once Redis relents.
"""

import contextlib
import logging
from collections.abc import Iterator

from prometheus_client import Counter
from redis.exceptions import RedisError

from bushub.broker.base import Broker, PartialPublish
from bushub.broker.refusals import BrokerRefused, ErrorKind, classify, describe

log = logging.getLogger(__name__)

# The metric's ``op`` label, and the area whose next success clears a refusal.
OP_AREAS = {
    "publish": "publish",
    "subscribe": "subscribe",
    "presence_refresh": "presence",
    "presence_read": "presence",
    "presence_write": "presence",
}


class BrokerHealth:
    """Which areas Redis refuses right now, and why.

    Args:
        errors: ``bushub_redis_errors_total``, labelled (op, kind); None counts nothing.
    """

    def __init__(self, errors: Counter | None = None) -> None:
        self._errors = errors
        if errors is not None:
            # The refusals that need an operator, exported at zero from the start so
            # that an alert's increase() sees the first one.
            for op in OP_AREAS:
                for kind in (ErrorKind.NOPERM, ErrorKind.OOM):
                    errors.labels(op, kind.value)
        # Area -> what failed there last, for /readyz and logs.
        self._failing: dict[str, str] = {}

    @property
    def problem(self) -> str | None:
        """Why the node is not ready although Redis is reachable; None when nothing is
        refused."""
        return "; ".join(self._failing.values()) or None

    def count(self, op: str, error: object, replies: int = 1) -> ErrorKind:
        """Count error replies that a retry will deal with; readiness is unchanged."""
        kind = classify(error)
        if self._errors is not None:
            self._errors.labels(op, kind.value).inc(replies)
        return kind

    def refused(self, op: str, error: object, replies: int = 1) -> ErrorKind:
        """Count error replies and take readiness down until ``op``'s area succeeds."""
        kind = self.count(op, error, replies)
        detail = describe(error)
        self._failing[OP_AREAS[op]] = f"redis refused {op} ({kind}): {detail}"
        # One message template per (op, kind): the log handler lets each template
        # through once per 10 s, so a refused publish cannot hide an OOM on presence.
        log.warning(f"redis refused {op} ({kind}): %s; node not ready until it accepts", detail)
        return kind

    @contextlib.contextmanager
    def watching(self, op: str) -> Iterator[None]:
        """Record a refusal (BrokerRefused) of the commands inside as ``op``'s, and let
        it go on to the caller."""
        try:
            yield
        except BrokerRefused as refusal:
            self.refused(op, refusal)
            raise

    def failed(self, area: str, why: str) -> None:
        """Take readiness down for a cause other than an error reply (a crashed task)."""
        self._failing[area] = why

    def accepted(self, area: str) -> None:
        """A write in ``area`` went through: whatever held readiness down there is gone."""
        if self._failing.pop(area, None) is not None:
            log.warning("%s works again", area)

    def is_failing(self, area: str) -> bool:
        return area in self._failing

    async def probe_subscribe(self, broker: Broker) -> None:
        """Retry refused subscriptions: Redis' refusal named no channel, so every
        channel is subscribed again; confirmed, the node is ready again."""
        if not self.is_failing("subscribe"):
            return
        try:
            await broker.confirm_subscriptions()
        except (ConnectionError, TimeoutError):
            return  # the listener reconnects, and subscribes every channel then
        except RedisError as refusal:
            self.refused("subscribe", refusal)
            return
        self.accepted("subscribe")

    async def probe_publish(self, broker: Broker, name: str) -> None:
        """Retry a refused publish on a channel of this node's own: with no traffic,
        nothing else would find out that Redis relented (presence finds out by itself:
        every heartbeat is a write).

        Args:
            name: The node's probe channel.
        """
        if self.is_failing("publish"):
            try:
                await broker.publish_many([(name, b"")])
            except PartialPublish as partial:
                refusals = [e for e in partial.errors if e is not None]
                if refusals:
                    self.refused("publish", refusals[0])
                return
            self.accepted("publish")
