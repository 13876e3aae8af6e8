"""The framing of a session socket (docs/protocol.md, Sessions), both ends' one codec.

Every frame on a session socket begins with a kind byte: a bus message at a position,
a bus message with no position (hub to proxy only), an acknowledgement of every
position up to one, or a bus message at a position that acknowledges as well (inline
acknowledgements, sent only to a peer that said it takes them). Positions are 8-byte
big-endian unsigned integers.
"""

import re
import struct
from enum import IntEnum
from typing import NamedTuple

from buswire.errors import DecodeError
from buswire.reasons import DropReason

_POSITION = struct.Struct("!Q")
# A bus message at a position: its kind byte and position, then the message.
_MESSAGE_HEAD = struct.Struct("!BQ")
MESSAGE_HEAD = _MESSAGE_HEAD.size
# The same with an acknowledgement: kind byte, position, the position acknowledged.
_ACKED_HEAD = struct.Struct("!BQQ")
ACKED_HEAD = _ACKED_HEAD.size
# The highest position a message may carry: hubs pass a sender's position on as a
# float64 (relayframe.py) and Redis' scripts read it as a Lua number, both exact only
# up to 2**53. A proxy numbering from 1 never gets there.
MAX_POSITION = 2**53
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# The protocol's acknowledgement policy, both ends: what was taken or settled is
# acknowledged at least every ACK_EVERY messages or ACK_DELAY seconds.
ACK_EVERY = 64
ACK_DELAY = 0.2

# The handshake's query parameters and the upgrade's response header.
SESSION_PARAM = "session"
RECEIVED_PARAM = "received"
RESUME_HEADER = "bushub-resume"
# Inline acknowledgements (kind 0x04): the proxy asks with ``acks=inline`` in the
# query, the hub says it takes them with the word ``acks=inline`` after the window in
# ``bushub-resume``. Each side sends them only to a peer that said so: an older peer
# would drop the frame as malformed.
ACKS_PARAM = "acks"
INLINE = "inline"
INLINE_ACKS = f"{ACKS_PARAM}={INLINE}"
# How many messages the proxy sent and gave up on before the hub acknowledged them
# (its send log over its bounds, or written longer ago than the window), not yet told
# to a hub: the resume is then a gap, so that the session's peers announce it anew.
SENT_LOST_PARAM = "sent_lost"
# ``peer_seen=1``: the proxy was told of its peer (a registry message naming it) on an
# earlier socket of the session. A resume on a node where the peer is absent then
# starts the peer's lost timer, as if that node had seen it go: its previous socket's
# node, which had, may be the one that went (drained, killed), and a peer that left
# meanwhile would otherwise be waited for in silence for good.
PEER_SEEN_PARAM = "peer_seen"


class Kind(IntEnum):
    """What a session frame carries."""

    MESSAGE = 1  # a bus message at a position
    UNNUMBERED = 2  # a bus message with no position (hub to proxy)
    ACK = 3  # every position up to this one is taken
    # 4 on the wire: a message at a position that also acknowledges; decoded as
    # MESSAGE with ``acked`` set.


_MESSAGE, _UNNUMBERED, _ACK = Kind.MESSAGE, Kind.UNNUMBERED, Kind.ACK
_ACKED = 4
# The first byte of a message with an inline acknowledgement: a per-message path
# tells it from the rest by it before reading either (``acked_message``).
ACKED_MESSAGE_KIND = bytes([_ACKED])


class ResumeResult:
    """The first word of the ``bushub-resume`` header."""

    NEW = "new"
    RECOVERED = "recovered"
    GAP = "gap"


class SessionFrame(NamedTuple):
    """One decoded frame: ``position`` is 0 for an unnumbered message; ``acked`` is
    the position a message acknowledged inline (0: none). (A named tuple: built for
    every frame a session socket sends, in half the time of a frozen dataclass.)"""

    kind: Kind
    position: int
    payload: bytes
    acked: int = 0


def message(position: int, payload: bytes) -> bytes:
    """A bus message at ``position``."""
    return _MESSAGE_HEAD.pack(1, position) + payload


def message_acked(position: int, acked: int, payload: bytes) -> bytes:
    """A bus message at ``position`` that also acknowledges every position up to
    ``acked`` of the other direction (only to a peer that takes inline acks)."""
    return _ACKED_HEAD.pack(_ACKED, position, acked) + payload


def unnumbered(payload: bytes) -> bytes:
    """A bus message with no position."""
    return b"\x02" + payload


def ack(position: int) -> bytes:
    """An acknowledgement of every position up to ``position``."""
    return b"\x03" + _POSITION.pack(position)


def message_position(data: bytes) -> int:
    """The position of a bus message at a position (the frame a session socket sends
    for every message); 0 for any other frame, which ``decode`` splits or refuses.
    The hub's per-message path: no tuple is built."""
    if len(data) >= MESSAGE_HEAD and data[0] == 1:
        position: int = _POSITION.unpack_from(data, 1)[0]
        if 0 < position <= MAX_POSITION:
            return position
    return 0


def acked_message(data: bytes) -> tuple[int, int]:
    """(position, position acknowledged) of a message with an inline acknowledgement;
    (0, 0) for any other frame or one out of range. The per-message path, as
    ``message_position``."""
    if len(data) >= ACKED_HEAD and data[0] == _ACKED:
        _, position, acked = _ACKED_HEAD.unpack_from(data)
        if 0 < position <= MAX_POSITION and 0 < acked <= MAX_POSITION:
            return position, acked
    return 0, 0


def decode(data: bytes) -> SessionFrame:
    """Split a session frame.

    Raises:
        DecodeError: ``malformed`` for an empty or short frame or an unknown kind.
    """
    if not data:
        raise DecodeError(DropReason.MALFORMED, "empty session frame")
    # Plain ints and members bound once: an enum attribute lookup per comparison
    # was half of what this cost, for every frame a session socket sends.
    kind = data[0]
    if kind == _MESSAGE and len(data) >= MESSAGE_HEAD:
        position = message_position(data)
        if position:
            return SessionFrame(_MESSAGE, position, data[MESSAGE_HEAD:])
        out_of_range = _POSITION.unpack_from(data, 1)[0]
        raise DecodeError(DropReason.MALFORMED, f"session message at position {out_of_range}")
    if kind == _ACKED and len(data) >= ACKED_HEAD:
        position, acked = acked_message(data)
        if position:
            return SessionFrame(_MESSAGE, position, data[ACKED_HEAD:], acked)
        raise DecodeError(DropReason.MALFORMED, "session message or acknowledgement out of range")
    if kind == _ACK and len(data) >= 9:
        return SessionFrame(_ACK, _POSITION.unpack_from(data, 1)[0], b"")
    if kind == _UNNUMBERED:
        return SessionFrame(_UNNUMBERED, 0, data[1:])
    raise DecodeError(DropReason.MALFORMED, f"session frame kind {kind}, {len(data)} bytes")


def valid_session_id(value: str) -> bool:
    """True for a session id the hub takes (1-64 of ``[A-Za-z0-9_-]``)."""
    return _SESSION_ID.fullmatch(value) is not None


def resume_header(result: str, epoch: str, window: float) -> str:
    """The ``bushub-resume`` header's value: result, epoch, the window in seconds, and
    that the hub takes inline acknowledgements."""
    return f"{result} {epoch} {window:g} {INLINE_ACKS}"


def takes_inline_acks(header: str) -> bool:
    """Whether a ``bushub-resume`` header says the hub takes inline acknowledgements."""
    return INLINE_ACKS in header.split()[3:]


def parse_resume_header(value: str) -> tuple[str, str]:
    """(result, epoch) from a ``bushub-resume`` header; unknown results read as gap."""
    words = value.split()
    result = words[0] if words else ""
    epoch = words[1] if len(words) > 1 else ""
    if result not in (ResumeResult.NEW, ResumeResult.RECOVERED, ResumeResult.GAP):
        result = ResumeResult.GAP
    return result, epoch


def resume_window(value: str) -> float | None:
    """The window a ``bushub-resume`` header names, in seconds; None if it names none.

    A session's resend is relayed once only while the hub remembers it: for the
    window after it was relayed. What a proxy sent longer ago than that cannot be sent
    again safely.
    """
    words = value.split()
    try:
        window = float(words[2])
    except (IndexError, ValueError):
        return None
    return window if window > 0 else None
