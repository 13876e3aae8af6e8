"""The one exception tree of the wire protocol.

    WireError
    └── DecodeError      a frame that cannot be routed; ``reason`` is a metric label

Callers map these to drop counters or close codes in one place; details never
travel back to a client.
"""

from buswire.reasons import DropReason


class WireError(Exception):
    """Base of every error raised by buswire."""


class DecodeError(WireError):
    """A frame that is not a routable bus message.

    Args:
        reason: Why (``malformed``, ``too_complex``, ``not_a_message``, ...): the
            label the frame is counted under when dropped.
        detail: Free text for logs only.
    """

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
