"""The one exception tree of the wire protocol.

    WireError
    └── DecodeError      a frame that cannot be routed; ``reason`` is a metric label

Callers map these to drop counters or close codes in one place; details never
travel back to a client.
"""


class WireError(Exception):
    """Base of every error raised by buswire."""


class DecodeError(WireError):
    """A frame that is not a routable bus message.

    Args:
        reason: Short, fixed label (``malformed``, ``not_a_message``, ``bad_source``,
            ``bad_target``, ``bad_type``) safe to use as a metric label.
        detail: Free text for logs only.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
