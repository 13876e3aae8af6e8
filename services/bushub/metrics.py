"""The hub's Prometheus metrics; names are part of the contract (docs/protocol.md, Metrics).

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

from bushub.closecodes import CLIENT_CLOSED, CLOSE_REASONS, SOCKET_CLOSE_REASONS
from bushub.traffic import Traffic
from buswire import DropReason

# The _created series double every counter's cardinality for no operator value.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Reasons known in advance are exported at zero from the start, so a rate() over
# them works before the first drop and dashboards show what can go wrong.
DROP_REASONS = tuple(reason.value for reason in DropReason)
# Refusals exported at zero from the start, for the same reason: those of connections
# that never became a request (bushub.handshake), of paths that name no agent, and of
# a broker that cannot take the claim.
REFUSAL_REASONS = (
    "handshake_timeout",
    "headers_too_large",
    "bad_upgrade",
    "bad_request",
    "bad_path",
    "broker_unreachable",
    "broker_refused",
    "client_gone",
)
API_SEND_RESULTS = (
    "accepted",
    "kept",
    "no_agent",
    "bad_request",
    "forbidden",
    "unauthorized",
    "oversize",
    "broker_down",
)
# bushub_resent_total: marked to go again, or dropped for room in the publish buffer,
# by the publishing node; dropped as a duplicate, or delivered, by a receiving node.
# bushub_operator_refused_total: the operator API off (no --admin-token), a wrong
# admin token, a token /api/send refused.
OPERATOR_REFUSALS = ("off", "bad_admin_token", "bad_token")
RESENT_OUTCOMES = ("marked", "dropped", "duplicate", "delivered")
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
        self.redis_errors = Counter(
            "bushub_redis_errors",
            "Error replies from a reachable Redis (ACL, out of memory...), by operation and kind",
            ["op", "kind"],
            registry=r,
        )
        self.frames_throttled = Counter(
            "bushub_frames_throttled",
            "Frames past a socket's budget of frames that are not messages (four per "
            "message of --rate-messages), by kind: control (pings, pongs), fragment, "
            "refused (dropped over the rate or the size limit); the socket's reading "
            "is held until the budget allows a frame again",
            ["kind"],
            registry=r,
        )
        self.resumes = Counter(
            "bushub_resumes",
            "Session handshakes by how the resume went: new, recovered, gap",
            ["result"],
            registry=r,
        )
        self.relayed_forgotten = Counter(
            "bushub_relayed_forgotten",
            "Sending sessions gone (away past the window, or replaced) that the relay "
            "no longer remembers for the agents they had written to",
            registry=r,
        )
        self.session_messages = Counter(
            "bushub_session_messages",
            "Sessions' messages by what happened: replayed after a resume, kept while "
            "no node was subscribed for the agent (away, or a failover), a resend taken "
            "already, a duplicate position not written twice, positions lost in "
            "transit, an acknowledgement ahead of what was written, a message from a "
            "session held back by its socket's rate, a message Redis did not keep for a "
            "connected session (it had lost it), a message a proxy sent and gave up on "
            "unacknowledged (its resume a gap)",
            ["event"],
            registry=r,
        )
        for result in ("new", "recovered", "gap"):
            self.resumes.labels(result)
        for event in (
            "replayed",
            "kept_away",
            "resent_taken",
            "duplicate",
            "lost",
            "acked_ahead",
            "throttled",
            "unkept",
            "sent_lost",
        ):
            self.session_messages.labels(event)
        self.tap_events = Counter(
            "bushub_tap_events",
            "Tap events by outcome: published by the node where the message entered, "
            "dropped there (over the rate bound, or the broker away), dropped for a slow "
            "tap reader",
            ["outcome"],
            registry=r,
        )
        for outcome in ("published", "dropped", "reader_dropped"):
            self.tap_events.labels(outcome)
        self.resent = Counter(
            "bushub_resent",
            "Messages sent again after a broker break, by outcome: marked by the node "
            "that published them (acknowledged just before the break, or their reply "
            "cut off), dropped there for room in a full publish buffer, dropped as a "
            "duplicate by a receiving node that had delivered them already, delivered "
            "by one that had not",
            ["outcome"],
            registry=r,
        )
        for outcome in RESENT_OUTCOMES:
            self.resent.labels(outcome)
        self.api_sends = Counter(
            "bushub_api_sends", "Messages sent by POST /api/send, by result", ["result"], registry=r
        )
        for result in API_SEND_RESULTS:
            self.api_sends.labels(result)
        self.operator_refused = Counter(
            "bushub_operator_refused",
            "Operator API requests refused for their credentials, by reason",
            ["reason"],
            registry=r,
        )
        for reason in OPERATOR_REFUSALS:
            self.operator_refused.labels(reason)
        self.agents = Gauge("bushub_agents", "Agent names held by sockets on this node", registry=r)
        # Set to functions read at scrape time by bushub.fdlimit.
        self.open_fds = Gauge("bushub_open_fds", "File descriptors open in the process", registry=r)
        self.fd_limit = Gauge(
            "bushub_fd_limit", "Soft limit on open file descriptors (RLIMIT_NOFILE)", registry=r
        )
        for reason in DROP_REASONS:
            self.messages_dropped.labels(reason)
        for close_reason in (
            *CLOSE_REASONS.values(),
            *SOCKET_CLOSE_REASONS.values(),
            CLIENT_CLOSED,
        ):
            self.connections_closed.labels(close_reason)
        for refusal_reason in REFUSAL_REASONS:
            self.connections_refused.labels(refusal_reason)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
