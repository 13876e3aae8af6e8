"""The session socket's framing: each kind round-trips, anything else is malformed."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buswire import sessionframe
from buswire.errors import DecodeError
from buswire.reasons import DropReason
from buswire.sessionframe import Kind, SessionFrame

POSITIONS = st.integers(min_value=1, max_value=sessionframe.MAX_POSITION)


@given(POSITIONS, POSITIONS, st.binary(max_size=64))
def test_every_kind_round_trips(position: int, acked: int, payload: bytes) -> None:
    assert sessionframe.decode(sessionframe.message(position, payload)) == SessionFrame(
        Kind.MESSAGE, position, payload
    )
    assert sessionframe.decode(
        sessionframe.message_acked(position, acked, payload)
    ) == SessionFrame(Kind.MESSAGE, position, payload, acked)
    assert sessionframe.decode(sessionframe.ack(position)) == SessionFrame(Kind.ACK, position, b"")
    assert sessionframe.decode(sessionframe.unnumbered(payload)) == SessionFrame(
        Kind.UNNUMBERED, 0, payload
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x01" + bytes(7),
        b"\x03" + bytes(7),
        b"\x04" + bytes(16),
        b"\x00" + bytes(17),
        b"\x05" + bytes(17),
    ],
    ids=[
        "empty",
        "message-kind-only",
        "short-message",
        "short-ack",
        "short-acked-message",
        "kind-0",
        "kind-5",
    ],
)
def test_short_frames_and_unknown_kinds_are_malformed(data: bytes) -> None:
    with pytest.raises(DecodeError) as refused:
        sessionframe.decode(data)
    assert refused.value.reason is DropReason.MALFORMED


@pytest.mark.parametrize("position", [0, sessionframe.MAX_POSITION + 1, 2**64 - 1])
def test_a_message_position_a_float64_cannot_carry_is_malformed(position: int) -> None:
    """Positions travel on as float64 and Lua numbers: 2**53 + 1 would come back as
    2**53 and never settle (each later message then waited behind it)."""
    with pytest.raises(DecodeError) as refused:
        sessionframe.decode(sessionframe.message(position, b"{}"))
    assert refused.value.reason is DropReason.MALFORMED


@pytest.mark.parametrize(
    ("position", "acked"),
    [(0, 1), (1, 0), (sessionframe.MAX_POSITION + 1, 1), (1, sessionframe.MAX_POSITION + 1)],
)
def test_an_acked_message_out_of_range_is_malformed(position: int, acked: int) -> None:
    """Either position past what a float64 carries, or 0 (an inline acknowledgement of
    nothing is not sent: the message goes as a plain one)."""
    framed = sessionframe.message_acked(position, acked, b"{}")
    assert sessionframe.acked_message(framed) == (0, 0)
    with pytest.raises(DecodeError) as refused:
        sessionframe.decode(framed)
    assert refused.value.reason is DropReason.MALFORMED


@given(st.binary(max_size=32))
def test_any_bytes_decode_or_are_refused_as_malformed(data: bytes) -> None:
    try:
        frame = sessionframe.decode(data)
    except DecodeError as exc:
        assert exc.reason is DropReason.MALFORMED
    else:
        assert frame.kind in (Kind.MESSAGE, Kind.ACK, Kind.UNNUMBERED)
        assert frame.kind is not Kind.ACK or frame.payload == b""


@given(st.binary(max_size=32))
def test_the_fast_position_read_agrees_with_decode(data: bytes) -> None:
    """``message_position`` (the hub's per-message path) names a position exactly when
    ``decode`` reads a message at one, and it is that position; the message follows
    the MESSAGE_HEAD bytes."""
    position = sessionframe.message_position(data)
    try:
        frame = sessionframe.decode(data)
    except DecodeError:
        assert position == 0
        return
    if frame.kind is Kind.MESSAGE and not frame.acked:
        assert position == frame.position
        assert data[sessionframe.MESSAGE_HEAD :] == frame.payload
    else:
        assert position == 0


@given(
    st.one_of(
        st.binary(max_size=40), st.binary(min_size=17, max_size=40).map(lambda b: b"\x04" + b)
    )
)
def test_the_fast_acked_read_agrees_with_decode(data: bytes) -> None:
    """``acked_message`` names a position and the one acknowledged exactly when
    ``decode`` reads a message carrying an acknowledgement; the message follows."""
    position, acked = sessionframe.acked_message(data)
    try:
        frame = sessionframe.decode(data)
    except DecodeError:
        assert (position, acked) == (0, 0)
        return
    if frame.acked:
        assert (position, acked) == (frame.position, frame.acked)
        assert data[sessionframe.ACKED_HEAD :] == frame.payload
    else:
        assert (position, acked) == (0, 0)


def test_the_resume_header_says_the_hub_takes_inline_acknowledgements() -> None:
    header = sessionframe.resume_header("recovered", "e1", 120.0)
    assert header == "recovered e1 120 acks=inline"
    assert sessionframe.parse_resume_header(header) == ("recovered", "e1")
    assert sessionframe.resume_window(header) == 120.0
    assert sessionframe.takes_inline_acks(header)
    # An older hub's header, and the word anywhere but after the window.
    assert not sessionframe.takes_inline_acks("recovered e1 120")
    assert not sessionframe.takes_inline_acks("acks=inline e1 120")


@pytest.mark.parametrize("position", [1, 2**32 + 5, sessionframe.MAX_POSITION])
def test_a_message_frame_gives_its_position_without_decoding(position: int) -> None:
    framed = sessionframe.message(position, b"{}")
    assert sessionframe.message_position(framed) == position
    assert sessionframe.message_position(sessionframe.ack(position)) == 0
    assert sessionframe.message_position(sessionframe.unnumbered(framed)) == 0
