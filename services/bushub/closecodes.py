"""Every WebSocket close code the hub sends, by name.

Codes 4000-4999 make the stock client proxy fire ``on_disconnected`` at once; a
close with 1000/1001 goes unnoticed until its next send, so the hub never uses
those to tell a client something it must act on.
"""

from enum import IntEnum


class CloseCode(IntEnum):
    """Why the hub closed a socket."""

    INVALID_DATA = 1007  # the declared format and the first frame disagree
    POLICY_VIOLATION = 1008  # bad connection parameters
    MESSAGE_TOO_BIG = 1009  # a frame over the transport limit
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # the node is draining; reconnect through the load balancer
    TRY_AGAIN_LATER = 1013  # the node is overloaded or not ready
    TAKEN_OVER = 4001  # a newer connection claimed this agent name
    PEER_LOST = 4002  # the peer left and did not come back within the grace period
    SLOW_CONSUMER = 4008  # the outbound queue passed its bound


# Metric label and log word for each close the hub initiates.
CLOSE_REASONS: dict[CloseCode, str] = {
    CloseCode.INVALID_DATA: "format_mismatch",
    CloseCode.POLICY_VIOLATION: "bad_parameters",
    CloseCode.MESSAGE_TOO_BIG: "too_big",
    CloseCode.INTERNAL_ERROR: "internal_error",
    CloseCode.SERVICE_RESTART: "draining",
    CloseCode.TRY_AGAIN_LATER: "not_ready",
    CloseCode.TAKEN_OVER: "taken_over",
    CloseCode.PEER_LOST: "peer_lost",
    CloseCode.SLOW_CONSUMER: "slow_consumer",
}
