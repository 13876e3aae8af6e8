"""Tests for buswire.relayframe: the header hubs put around a client's frame."""

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buswire.errors import DecodeError
from buswire.formats import Format
from buswire.relayframe import (
    RESENT,
    VERSION,
    RelayFrame,
    as_first_sent,
    as_resent,
    origin_key,
    pack_relay,
    pack_session_relay,
    pack_stored,
    session_origin,
    unpack_relay,
)

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, database=None)
PAYLOAD = b'{"__type__":"a.B","__data__":{"source":"s"}}'

# version 1, format 0 (json), 1.5 as a big-endian float64, then the payload untouched.
JSON_FRAME = b"\x01\x00\x3f\xf8\x00\x00\x00\x00\x00\x00" + PAYLOAD
# version 1, format 1 (msgpack), 1700000000.25, then the payload.
MSGPACK_FRAME = b"\x01\x01\x41\xd9\x54\xfc\x40\x10\x00\x00" + b"\x80"


def test_version_is_one() -> None:
    assert VERSION == 1


def test_pack_bytes() -> None:
    assert pack_relay(Format.JSON, 1.5, PAYLOAD) == JSON_FRAME
    assert pack_relay(Format.MSGPACK, 1_700_000_000.25, b"\x80") == MSGPACK_FRAME


def test_unpack_bytes() -> None:
    assert unpack_relay(JSON_FRAME) == RelayFrame(Format.JSON, 1.5, PAYLOAD)
    assert unpack_relay(MSGPACK_FRAME) == RelayFrame(Format.MSGPACK, 1_700_000_000.25, b"\x80")


@pytest.mark.parametrize("fmt", [Format.JSON, Format.MSGPACK])
@pytest.mark.parametrize("payload", [b"", b"x", PAYLOAD, bytes(range(256)) * 40])
def test_round_trip(fmt: Format, payload: bytes) -> None:
    frame = unpack_relay(pack_relay(fmt, 12.75, payload))
    assert frame.fmt is fmt
    assert frame.received_at == 12.75
    assert frame.payload == payload


def test_header_only_frame_has_empty_payload() -> None:
    assert unpack_relay(JSON_FRAME[:10]) == RelayFrame(Format.JSON, 1.5, b"")


def test_payload_may_look_like_a_header() -> None:
    frame = unpack_relay(pack_relay(Format.JSON, 0.0, JSON_FRAME))
    assert frame.payload == JSON_FRAME


@pytest.mark.parametrize("length", range(10))
def test_short_frame(length: int) -> None:
    with pytest.raises(DecodeError) as info:
        unpack_relay(JSON_FRAME[:length])
    assert info.value.reason == "bad_relay_frame"


@pytest.mark.parametrize("version", [0, 2, 0x7B, 255])
def test_unknown_version(version: int) -> None:
    with pytest.raises(DecodeError) as info:
        unpack_relay(bytes([version]) + JSON_FRAME[1:])
    assert info.value.reason == "bad_relay_frame"


@pytest.mark.parametrize("code", [2, 3, 0x7B, 255])
def test_unknown_format(code: int) -> None:
    with pytest.raises(DecodeError) as info:
        unpack_relay(JSON_FRAME[:1] + bytes([code]) + JSON_FRAME[2:])
    assert info.value.reason == "bad_relay_frame"


def test_client_frame_is_not_a_relay_frame() -> None:
    # A raw client frame put on a channel by mistake must not pass as a relay frame.
    with pytest.raises(DecodeError) as info:
        unpack_relay(PAYLOAD)
    assert info.value.reason == "bad_relay_frame"


@PROPERTY_SETTINGS
@given(
    st.sampled_from([Format.JSON, Format.MSGPACK]),
    st.floats(allow_nan=False),
    st.binary(max_size=2048),
)
def test_property_round_trip(fmt: Format, received_at: float, payload: bytes) -> None:
    data = pack_relay(fmt, received_at, payload)
    assert len(data) == 10 + len(payload)
    assert data.endswith(payload)
    assert unpack_relay(data) == RelayFrame(fmt, received_at, payload)


@PROPERTY_SETTINGS
@given(st.binary(max_size=64))
def test_property_random_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        frame = unpack_relay(data)
    except DecodeError as exc:
        assert exc.reason == "bad_relay_frame"
    else:
        assert data[0] == VERSION and data[1] in (0, 1)
        assert frame.payload == data[10:]
        (expected,) = struct.unpack("!d", data[2:10])
        assert frame.received_at == expected or (
            math.isnan(frame.received_at) and math.isnan(expected)
        )


@pytest.mark.parametrize("frame", [JSON_FRAME, MSGPACK_FRAME])
def test_a_resent_frame_differs_by_one_bit_and_reads_the_same(frame: bytes) -> None:
    resent = as_resent(frame)
    assert resent[1] == frame[1] | RESENT and resent[:1] + resent[2:] == frame[:1] + frame[2:]
    assert unpack_relay(resent) == unpack_relay(frame)._replace(resent=True)
    assert not unpack_relay(frame).resent
    assert as_resent(resent) == resent  # marked once
    assert as_first_sent(resent) == frame


def test_a_resent_session_or_transient_frame_keeps_its_other_bits() -> None:
    frame = pack_session_relay(Format.MSGPACK, 2.0, b"\x80", b"a/s1", 9, transient=True)
    resent = as_resent(frame)
    read = unpack_relay(resent)
    assert (read.fmt, read.payload, read.resent) == (Format.MSGPACK, b"\x80", True)
    assert session_origin(resent) == (b"a/s1", 9)
    assert as_first_sent(resent) == frame


@PROPERTY_SETTINGS
@given(
    st.binary(min_size=1, max_size=40),
    st.lists(st.integers(min_value=1, max_value=2**53), min_size=2, max_size=8),
    st.integers(min_value=0, max_value=2**53),
)
def test_origin_key_reads_the_sender_and_orders_positions_as_numbers(
    sender: bytes, positions: list[int], kept_at: int
) -> None:
    keys = []
    for position in positions:
        frame = pack_session_relay(Format.JSON, 1.0, PAYLOAD, sender, position)
        key = origin_key(frame)
        assert key is not None and key[0] == sender
        # Wrapped as kept (at a position in the receiving stream): the same key.
        assert origin_key(pack_stored(kept_at, frame)) == key
        keys.append(key[1])
    order = sorted(range(len(positions)), key=lambda i: positions[i])
    assert [keys[i] for i in order] == sorted(keys)


def test_origin_key_is_none_for_frames_no_session_sent() -> None:
    assert origin_key(JSON_FRAME) is None
    assert origin_key(pack_stored(3, JSON_FRAME)) is None
    assert origin_key(b"\x02\x00") is None  # too short to hold a sender
    assert origin_key(b"") is None
