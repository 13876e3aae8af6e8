"""Tests for buswire.presence: presence records and events as bytes."""

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buswire.errors import DecodeError
from buswire.presence import (
    EventKind,
    PresenceEvent,
    PresenceRecord,
    decode_event,
    decode_record,
    encode_event,
    encode_record,
    record_conn,
)

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, database=None)

RECORD = PresenceRecord(
    agent="voice",
    conn="c-123",
    node="node-a",
    since=1700000000.5,
    format="msgpack",
    dialect="subagents",
    peer="main",
)
RECORD_BYTES = (
    b'c-123 {"agent":"voice","conn":"c-123","node":"node-a","since":1700000000.5,'
    b'"format":"msgpack","dialect":"subagents","peer":"main"}'
)
RECORD_NO_PEER = PresenceRecord(
    agent="voice", conn="c-9", node="n", since=2.0, format="json", dialect="pipecat"
)
RECORD_NO_PEER_BYTES = (
    b'c-9 {"agent":"voice","conn":"c-9","node":"n","since":2.0,'
    b'"format":"json","dialect":"pipecat","peer":null}'
)

EVENT = PresenceEvent(kind=EventKind.CLAIM, agent="voice", conn="c-123", node="node-a")
EVENT_BYTES = b'{"kind":"claim","agent":"voice","conn":"c-123","node":"node-a"}'


def record_fields(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "agent": "voice",
        "conn": "c-1",
        "node": "n",
        "since": 1.0,
        "format": "json",
        "dialect": "subagents",
        "peer": None,
    }
    fields.update(overrides)
    return b"c-1 " + orjson.dumps({k: v for k, v in fields.items() if v is not ...})


def event_fields(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {"kind": "up", "agent": "voice", "conn": "c-1", "node": "n"}
    fields.update(overrides)
    return orjson.dumps({k: v for k, v in fields.items() if v is not ...})


# --- Records ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "data"), [(RECORD, RECORD_BYTES), (RECORD_NO_PEER, RECORD_NO_PEER_BYTES)]
)
def test_record_bytes_both_ways(record: PresenceRecord, data: bytes) -> None:
    assert encode_record(record) == data
    assert decode_record(data) == record
    assert record_conn(data) == record.conn


def test_record_without_peer_key_defaults_to_none() -> None:
    assert decode_record(record_fields(peer=...)).peer is None


def test_record_conn_reads_only_the_prefix() -> None:
    # The broker script compares this prefix without parsing JSON.
    assert record_conn(b"c-1 this is not json") == "c-1"
    assert record_conn(b"c-1") == "c-1"
    assert record_conn(b"") == ""


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"c-1", id="conn-only"),
        pytest.param(b"c-1 ", id="conn-and-space"),
        pytest.param(b"c-1 {", id="truncated"),
        pytest.param(RECORD_BYTES[:-1], id="truncated-record"),
        pytest.param(RECORD_BYTES + b"x", id="trailing-garbage"),
        pytest.param(b"c-1 []", id="list"),
        pytest.param(b"c-1 1", id="number"),
        pytest.param(b'c-1 "x"', id="string"),
        pytest.param(b"c-1 null", id="null"),
        pytest.param(b"c-1 {}", id="empty-map"),
        pytest.param(b'c-1 {"agent":"voice"}', id="missing-fields"),
        pytest.param(record_fields(node=...), id="missing-node"),
        pytest.param(record_fields(extra=1), id="unknown-field"),
        pytest.param(b"c-1 " + b"[" * 100_000, id="deep"),
        pytest.param(b'c-1 {"agent":"\xff"}', id="bad-utf8"),
        pytest.param(b'c-1 {"agent":NaN}', id="nan"),
        pytest.param(RECORD_BYTES.replace(b"c-123 ", b"c-123"), id="no-separator"),
    ],
)
def test_malformed_record(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_record(data)
    assert info.value.reason == "bad_presence"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(record_fields(agent=1), id="int-agent"),
        pytest.param(record_fields(conn=None), id="null-conn"),
        pytest.param(record_fields(node=["n"]), id="list-node"),
        pytest.param(record_fields(since="yesterday"), id="str-since"),
        pytest.param(record_fields(format={"f": 1}), id="map-format"),
        pytest.param(record_fields(dialect=False), id="bool-dialect"),
        pytest.param(record_fields(peer=5), id="int-peer"),
    ],
)
def test_record_with_wrongly_typed_field_is_malformed(data: bytes) -> None:
    # "bad_presence when the bytes are not a record": a record whose agent is a
    # number is not one, and must not reach code that treats it as a str.
    with pytest.raises(DecodeError) as info:
        decode_record(data)
    assert info.value.reason == "bad_presence"


def test_record_conn_of_undecodable_bytes_is_decode_error() -> None:
    # A record is bytes from the broker; bad input gets buswire's one error type.
    data = b"\xff\xfe " + RECORD_BYTES.partition(b" ")[2]
    with pytest.raises(DecodeError) as info:
        record_conn(data)
    assert info.value.reason == "bad_presence"


CONN = st.text(
    st.characters(exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=40
)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@PROPERTY_SETTINGS
@given(
    st.builds(
        PresenceRecord,
        agent=TEXT,
        conn=CONN,
        node=TEXT,
        since=st.floats(allow_nan=False, allow_infinity=False),
        format=st.sampled_from(["json", "msgpack"]),
        dialect=st.sampled_from(["subagents", "pipecat", "auto"]),
        peer=st.none() | TEXT,
    )
)
def test_property_record_round_trip(record: PresenceRecord) -> None:
    data = encode_record(record)
    assert data.startswith(record.conn.encode() + b" ")
    assert record_conn(data) == record.conn
    assert decode_record(data) == record


# --- Events -----------------------------------------------------------------------


def test_event_bytes_both_ways() -> None:
    assert encode_event(EVENT) == EVENT_BYTES
    assert decode_event(EVENT_BYTES) == EVENT


@pytest.mark.parametrize("kind", list(EventKind))
def test_event_kinds_round_trip(kind: EventKind) -> None:
    event = PresenceEvent(kind=kind, agent="a", conn="c", node="n")
    data = encode_event(event)
    assert orjson.loads(data)["kind"] == kind.value
    decoded = decode_event(data)
    assert decoded == event
    assert decoded.kind is kind


def test_event_kind_values() -> None:
    assert {k.value for k in EventKind} == {"claim", "up", "down"}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(EVENT_BYTES[:-1], id="truncated-event"),
        pytest.param(EVENT_BYTES + b"x", id="trailing-garbage"),
        pytest.param(b"[]", id="list"),
        pytest.param(b"1", id="number"),
        pytest.param(b'"up"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"{}", id="empty-map"),
        pytest.param(event_fields(kind=...), id="missing-kind"),
        pytest.param(event_fields(agent=...), id="missing-agent"),
        pytest.param(event_fields(conn=...), id="missing-conn"),
        pytest.param(event_fields(node=...), id="missing-node"),
        pytest.param(event_fields(kind="bogus"), id="unknown-kind"),
        pytest.param(event_fields(kind="UP"), id="kind-by-name"),
        pytest.param(event_fields(kind=["up"]), id="list-kind"),
        pytest.param(event_fields(kind={}), id="map-kind"),
        pytest.param(event_fields(kind=None), id="null-kind"),
        pytest.param(b"[" * 100_000, id="deep"),
        pytest.param(b'{"kind":"\xff"}', id="bad-utf8"),
        pytest.param(b"\x81\xa4kind\xa2up", id="msgpack"),
    ],
)
def test_malformed_event(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_event(data)
    assert info.value.reason == "bad_presence"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(event_fields(agent=1), id="int-agent"),
        pytest.param(event_fields(conn=None), id="null-conn"),
        pytest.param(event_fields(node=["n"]), id="list-node"),
    ],
)
def test_event_with_wrongly_typed_field_is_malformed(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_event(data)
    assert info.value.reason == "bad_presence"


@PROPERTY_SETTINGS
@given(st.builds(PresenceEvent, kind=st.sampled_from(EventKind), agent=TEXT, conn=TEXT, node=TEXT))
def test_property_event_round_trip(event: PresenceEvent) -> None:
    assert decode_event(encode_event(event)) == event


@PROPERTY_SETTINGS
@given(st.binary(max_size=128))
def test_property_random_bytes_raise_only_decode_error(data: bytes) -> None:
    for decode in (decode_record, decode_event):
        try:
            decode(data)
        except DecodeError as exc:
            assert exc.reason == "bad_presence"
