"""The frame hubs put on a broker channel: a fixed header and the client's bytes.

    byte 0      version (1)
    byte 1      format of the payload (0 json, 1 msgpack)
    bytes 2-9   receive time on the publishing node, float64 seconds (wall clock)
    bytes 10-   the frame exactly as the client sent it

The payload is never re-encoded on the way through the broker, so same-format
delivery sends the client's own bytes.
"""

import struct
from dataclasses import dataclass

from buswire.errors import DecodeError
from buswire.formats import Format
from buswire.reasons import DropReason

VERSION = 1
_HEADER = struct.Struct("!BBd")
_FORMAT_CODES = {Format.JSON: 0, Format.MSGPACK: 1}
_CODE_FORMATS = {code: fmt for fmt, code in _FORMAT_CODES.items()}


@dataclass(frozen=True, slots=True)
class RelayFrame:
    """One message in transit between hub nodes."""

    fmt: Format
    received_at: float
    payload: bytes


def pack_relay(fmt: Format, received_at: float, payload: bytes) -> bytes:
    """Prefix ``payload`` with the relay header."""
    return _HEADER.pack(VERSION, _FORMAT_CODES[fmt], received_at) + payload


def unpack_relay(data: bytes) -> RelayFrame:
    """Split a relay frame into header fields and payload.

    Raises:
        DecodeError: ``bad_relay_frame`` for a short frame, an unknown version or format.
    """
    if len(data) < _HEADER.size:
        raise DecodeError(DropReason.BAD_RELAY_FRAME, "short")
    version, code, received_at = _HEADER.unpack_from(data)
    fmt = _CODE_FORMATS.get(code)
    if version != VERSION or fmt is None:
        raise DecodeError(DropReason.BAD_RELAY_FRAME, f"version {version} format {code}")
    return RelayFrame(fmt=fmt, received_at=received_at, payload=data[_HEADER.size :])
