"""Why a frame was not delivered: the ``reason`` label of ``bushub_messages_dropped_total``.

One enum for every drop, whether the wire protocol refuses a frame (``DecodeError``)
or the hub gives up on it, so that the metric's label set is known in advance and
a new reason cannot be counted without being pre-registered (the hub exports every
member at zero). One member per line.
"""

from enum import StrEnum


class DropReason(StrEnum):
    """A fixed, low-cardinality metric label."""

    # Refused on receipt, before routing.
    OVERSIZE = "oversize"
    RATE_LIMITED = "rate_limited"
    MALFORMED = "malformed"
    TOO_COMPLEX = "too_complex"
    FORMAT_MISMATCH = "format_mismatch"
    NOT_A_MESSAGE = "not_a_message"
    BAD_TYPE = "bad_type"
    BAD_SOURCE = "bad_source"
    BAD_TARGET = "bad_target"
    BAD_AGENT = "bad_agent"
    TYPE_NOT_ALLOWED = "type_not_allowed"
    NESTED_TYPE_NOT_ALLOWED = "nested_type_not_allowed"
    REGISTRY = "registry"
    NO_ROUTE = "no_route"
    # Refused by the socket's grant.
    TARGET_NOT_ALLOWED = "target_not_allowed"
    SOURCE_NOT_ALLOWED = "source_not_allowed"
    # Lost between nodes or on delivery.
    PUBLISH_BUFFER_FULL = "publish_buffer_full"
    SHUTDOWN = "shutdown"
    BROKER_REFUSED = "broker_refused"  # Redis refused the publish for good (ACL, OOM)
    UNDELIVERABLE = "undeliverable"
    BAD_RELAY_FRAME = "bad_relay_frame"
    BAD_PRESENCE = "bad_presence"
    NO_LOCAL_AGENT = "no_local_agent"
    SLOW_CONSUMER = "slow_consumer"
    UNCONFIRMED = "unconfirmed"  # after a broker break, before the claim is re-confirmed
    CLOSING = "closing"
