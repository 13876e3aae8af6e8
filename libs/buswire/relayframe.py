"""The frames hubs put on a broker channel: a fixed header and the client's bytes.

    byte 0      version: 1, or 2 when a session sent it
    byte 1      format of the payload (0 json, 1 msgpack); bit 7 set: transient (a
                bridged frame the hub delivers at most once, not kept for sessions);
                bit 6 set: sent again after a broker break (receivers that already
                delivered the same frame drop it; see ``as_resent``)
    bytes 2-9   receive time on the publishing node, float64 seconds (wall clock)
    version 2 only:
    bytes 10-17 the sender's position, float64 (an integer below 2**53)
    byte 18     length of the sending session's id, then the id
    then        the frame exactly as the client sent it

The payload is never re-encoded on the way through the broker, so same-format
delivery sends the client's own bytes. The sender's session and position let the
broker relay a message a reconnecting session sends again only once (the delivery
script reads them at these offsets).

A message kept for a session comes off the channel wrapped once more, by the
broker's delivery script: byte 0 is 3, bytes 1-8 its position in the receiving
agent's stream (float64), then the relay frame as published.
"""

import struct
from typing import NamedTuple

from buswire.errors import DecodeError
from buswire.formats import Format
from buswire.reasons import DropReason

VERSION = 1
SESSION_VERSION = 2
STORED = 3
_HEADER = struct.Struct("!BBd")
_ORIGIN = struct.Struct("!dB")
_SESSION_HEADER = struct.Struct("!BBddB")  # _HEADER and _ORIGIN in one
# The sending session's agent and id, as a relay frame carries them (a length byte).
MAX_SENDER_BYTES = 255
_POSITION = struct.Struct("!Bd")
# Offsets for the receiving node's per-message read (module constants: an attribute
# lookup each is a tenth of what the read costs).
_KEPT_HEAD = _POSITION.size
_HEADER_SIZE = _HEADER.size
_SENDER_AT = _HEADER.size + _ORIGIN.size
_position_at = struct.Struct("!d").unpack_from
_FORMAT_CODES = {Format.JSON: 0, Format.MSGPACK: 1}
TRANSIENT = 0x80
RESENT = 0x40
_CODE_FORMATS = {code: fmt for fmt, code in _FORMAT_CODES.items()}


class RelayFrame(NamedTuple):
    """One message in transit between hub nodes (a named tuple: built for every
    delivery, in half the time of a frozen dataclass).

    Attributes:
        position: Its position in the receiving agent's stream; 0 when not kept.
        resent: Sent again after a broker break (``as_resent``).
    """

    fmt: Format
    received_at: float
    payload: bytes
    position: int = 0
    resent: bool = False


def pack_relay(
    fmt: Format, received_at: float, payload: bytes, *, transient: bool = False
) -> bytes:
    """Prefix ``payload`` with the relay header."""
    code = _FORMAT_CODES[fmt] | (TRANSIENT if transient else 0)
    return _HEADER.pack(VERSION, code, received_at) + payload


def pack_session_relay(
    fmt: Format,
    received_at: float,
    payload: bytes,
    session: bytes,
    position: int,
    *,
    transient: bool = False,
) -> bytes:
    """A relay frame that names the sending session and its position.

    Args:
        session: The sender (``sender_of``), at most MAX_SENDER_BYTES.
    """
    code = _FORMAT_CODES[fmt] | (TRANSIENT if transient else 0)
    head = _SESSION_HEADER.pack(SESSION_VERSION, code, received_at, position, len(session))
    return head + session + payload


def sender_of(agent: str, session: str) -> bytes:
    """The sender a session's relay frames name: its agent and session id."""
    return f"{agent} {session}".encode()


def pack_stored(position: int, relay: bytes) -> bytes:
    """What the delivery script publishes for a kept message (tests, in-process broker)."""
    return _POSITION.pack(STORED, position) + relay


def as_resent(data: bytes) -> bytes:
    """``data`` marked as sent again: a publish whose outcome is in doubt after a
    broker break (Redis may have acknowledged it and died before writing its copy to
    the subscribing node). Anything shorter than a header is returned as is."""
    if len(data) < _HEADER.size or data[1] & RESENT:
        return data
    return b"%c%c%s" % (data[0], data[1] | RESENT, data[2:])


def is_kept(data: bytes) -> bool:
    """Whether ``data`` came wrapped as kept: a session's stream holds it."""
    return data[:1] == b"\x03"


def relay_of(data: bytes) -> bytes:
    """The relay frame as published, from a frame that may be wrapped as kept."""
    return data[_POSITION.size :] if data[:1] == b"\x03" else data


def as_first_sent(data: bytes) -> bytes:
    """A resent relay frame (as published) as it was first published: what a
    receiving node may have delivered already."""
    return b"%c%c%s" % (data[0], data[1] & ~RESENT, data[2:])


def session_origin(data: bytes) -> tuple[bytes, int] | None:
    """(sender, position) of a relay frame a session sent (as published, not wrapped
    as kept); None for any other frame, or one too short to hold them."""
    if len(data) < _SENDER_AT or data[0] != SESSION_VERSION:
        return None
    sender = data[_SENDER_AT : _SENDER_AT + data[_SENDER_AT - 1]]
    return sender, int(_position_at(data, _HEADER_SIZE)[0])


def origin_key(data: bytes) -> tuple[bytes, bytes] | None:
    """(sender, position) of a relay frame a session sent, as published or wrapped
    as kept, with the position as its 8 bytes: big-endian float64s of positive
    numbers order as the numbers do, so they compare without being decoded (the
    receiving node's per-message check); None for any other frame."""
    base = _KEPT_HEAD if data[:1] == b"\x03" else 0
    start = base + _SENDER_AT
    if len(data) < start or data[base] != SESSION_VERSION:
        return None
    return data[start : start + data[start - 1]], data[base + _HEADER_SIZE : start - 1]


def unpack_relay(data: bytes) -> RelayFrame:
    """Split a relay frame (kept or not) into header fields and payload.

    Raises:
        DecodeError: ``bad_relay_frame`` for a short frame, an unknown version or format.
    """
    position = 0
    # Read at an offset past a kept frame's position: no copy but the payload's.
    base = 0
    if data[:1] == b"\x03":
        if len(data) < _POSITION.size:
            raise DecodeError(DropReason.BAD_RELAY_FRAME, "short")
        position = int(_POSITION.unpack_from(data)[1])
        base = _POSITION.size
    if len(data) < base + _HEADER.size:
        raise DecodeError(DropReason.BAD_RELAY_FRAME, "short")
    version, code, received_at = _HEADER.unpack_from(data, base)
    fmt = _CODE_FORMATS.get(code & ~(TRANSIENT | RESENT))
    start = base + _HEADER.size
    if version == SESSION_VERSION:
        if len(data) < start + _ORIGIN.size:
            raise DecodeError(DropReason.BAD_RELAY_FRAME, "short")
        start += _ORIGIN.size + data[start + _ORIGIN.size - 1]
    elif version != VERSION:
        fmt = None
    if fmt is None or len(data) < start:
        raise DecodeError(DropReason.BAD_RELAY_FRAME, f"version {version} format {code}")
    # Positional: keywords cost a named tuple a third more.
    return RelayFrame(fmt, received_at, data[start:], position, bool(code & RESENT))
