"""Every WebSocket close code the hub sends, by name, and how a socket's end is counted.

Codes 4000-4999 make the stock client proxy fire ``on_disconnected`` at once; a
close with 1000/1001 goes unnoticed until its next send, so the hub never uses
those to tell a client something it must act on. The 10xx codes are RFC 6455's,
taken from ``websockets`` so that they cannot drift from the library that sends
them.
"""

from enum import IntEnum

from websockets.frames import CloseCode as Rfc6455


class CloseCode(IntEnum):
    """Why the hub closed a socket."""

    PROTOCOL_ERROR = Rfc6455.PROTOCOL_ERROR  # a frame that breaks RFC 6455
    INVALID_DATA = Rfc6455.INVALID_DATA  # the format and a frame disagree, or text not UTF-8
    POLICY_VIOLATION = Rfc6455.POLICY_VIOLATION  # bad connection parameters
    MESSAGE_TOO_BIG = Rfc6455.MESSAGE_TOO_BIG  # a frame over the transport limit
    INTERNAL_ERROR = Rfc6455.INTERNAL_ERROR  # a bug in the hub while routing a frame
    SERVICE_RESTART = Rfc6455.SERVICE_RESTART  # the node is draining; reconnect elsewhere
    TRY_AGAIN_LATER = Rfc6455.TRY_AGAIN_LATER  # the node is overloaded or not ready
    TAKEN_OVER = 4001  # a newer connection claimed this agent name
    PEER_LOST = 4002  # the peer left and did not come back within the grace period
    SLOW_CONSUMER = 4008  # the outbound queue passed its bound
    KEEPALIVE_TIMEOUT = 4009  # silent through a keepalive interval, and a ping unanswered


# Metric label and log word for each close the hub asks for (``Connection.request_close``).
CLOSE_REASONS: dict[CloseCode, str] = {
    CloseCode.PROTOCOL_ERROR: "protocol_error",
    CloseCode.INVALID_DATA: "format_mismatch",
    CloseCode.POLICY_VIOLATION: "bad_parameters",
    CloseCode.MESSAGE_TOO_BIG: "too_big",
    CloseCode.INTERNAL_ERROR: "internal_error",
    CloseCode.SERVICE_RESTART: "draining",
    CloseCode.TRY_AGAIN_LATER: "not_ready",
    CloseCode.TAKEN_OVER: "taken_over",
    CloseCode.PEER_LOST: "peer_lost",
    CloseCode.SLOW_CONSUMER: "slow_consumer",
    CloseCode.KEEPALIVE_TIMEOUT: "keepalive_timeout",
}

# ... and for each close the hub's WebSocket layer makes on its own, from a frame the
# hub never routed: the same code can mean something else there (1007 is a text frame
# that is not UTF-8, not a format mismatch).
SOCKET_CLOSE_REASONS: dict[CloseCode, str] = {
    CloseCode.PROTOCOL_ERROR: "protocol_error",
    CloseCode.INVALID_DATA: "invalid_data",
    CloseCode.MESSAGE_TOO_BIG: "too_big",
    CloseCode.INTERNAL_ERROR: "internal_error",
}

# A socket that ended without the hub closing it: the client closed or vanished.
CLIENT_CLOSED = "client_closed"


def close_reason(requested: CloseCode | None, sent_by_socket: CloseCode | None) -> str:
    """The reason a socket's end is counted and logged under.

    Args:
        requested: The close the hub asked for, if it did; it wins, being the first.
        sent_by_socket: The close the hub's WebSocket layer sent on its own, if any.
            A code the client closed with never lands here: a client closing with
            1011 is a client closing, not an internal error of the hub.
    """
    if requested is not None:
        return CLOSE_REASONS[requested]
    if sent_by_socket is not None:
        return SOCKET_CLOSE_REASONS.get(sent_by_socket) or CLOSE_REASONS[sent_by_socket]
    return CLIENT_CLOSED
