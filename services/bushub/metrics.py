"""The hub's Prometheus metrics; names are part of the contract (DESIGN.md §7).

Each hub owns its registry, so several hubs can live in one test process. Agent
names are never labels: they are unbounded.
"""

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)

from bushub.closecodes import CLOSE_REASONS
from bushub.traffic import Traffic

# The _created series double every counter's cardinality for no operator value.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Reasons known in advance are exported at zero from the start, so a rate() over
# them works before the first drop and dashboards show what can go wrong.
DROP_REASONS = (
    "oversize",
    "malformed",
    "not_a_message",
    "bad_type",
    "bad_source",
    "bad_target",
    "bad_agent",
    "type_not_allowed",
    "nested_type_not_allowed",
    "target_not_allowed",
    "rate_limited",
    "format_mismatch",
    "registry",
    "no_route",
    "undeliverable",
    "no_local_agent",
    "slow_consumer",
    "closing",
    "unconfirmed",
    "publish_buffer_full",
    "shutdown",
)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric a node exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "bushub_connections", "Open agent sockets on this node", registry=r
        )
        self.connections_opened = Counter(
            "bushub_connections_opened", "Agent sockets accepted", registry=r
        )
        self.connections_closed = Counter(
            "bushub_connections_closed", "Agent sockets closed, by reason", ["reason"], registry=r
        )
        self.connections_refused = Counter(
            "bushub_connections_refused",
            "Handshakes refused before a socket opened, by reason",
            ["reason"],
            registry=r,
        )
        # Received/delivered messages, bytes and relay latency: see traffic.py.
        self.traffic = Traffic(LATENCY_BUCKETS)
        r.register(self.traffic)
        self.messages_dropped = Counter(
            "bushub_messages_dropped", "Frames not delivered, by reason", ["reason"], registry=r
        )
        self.redis_up = Gauge("bushub_redis_up", "1 while the broker is reachable", registry=r)
        self.redis_reconnects = Counter(
            "bushub_redis_reconnects", "Times the broker connection was re-established", registry=r
        )
        self.agents = Gauge("bushub_agents", "Agent names held by sockets on this node", registry=r)
        for reason in DROP_REASONS:
            self.messages_dropped.labels(reason)
        for close_reason in (
            *CLOSE_REASONS.values(),
            "client_closed",
            "protocol_error",
            "invalid_data",
        ):
            self.connections_closed.labels(close_reason)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
