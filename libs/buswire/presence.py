"""Presence records and presence events, as bytes.

A presence record says which connection currently holds an agent name:
``<conn> <json>``. The connection id comes first so a broker script can compare it
without parsing JSON.

Events travel on the agent's presence channel:
- ``claim``: a new connection wants the name; holders elsewhere must close.
- ``up``: a connection now holds the name (peers announce it under a runner
  named after its ``runner``: the connection, or the session it resumes, so that a
  resumed session is not announced anew).
- ``down``: a connection let go of the name.
"""

from dataclasses import asdict, dataclass
from enum import StrEnum

import orjson

from buswire.errors import DecodeError
from buswire.reasons import DropReason


class EventKind(StrEnum):
    """What happened to an agent name."""

    CLAIM = "claim"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class PresenceRecord:
    """Who holds an agent name, as stored under its presence key."""

    agent: str
    conn: str
    node: str
    since: float
    format: str
    dialect: str
    peer: str | None = None
    runner: str | None = None


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A change of holder of an agent name."""

    kind: EventKind
    agent: str
    conn: str
    node: str
    runner: str = ""


def encode_record(record: PresenceRecord) -> bytes:
    """Serialize a record, connection id first (the owner prefix the broker reads)."""
    fields = asdict(record)
    if record.runner is None:
        del fields["runner"]  # a socket without a session: the record as it always was
    return record.conn.encode() + b" " + orjson.dumps(fields)


_RECORD_TEXT_FIELDS = ("agent", "conn", "node", "format", "dialect")


def decode_record(data: bytes) -> PresenceRecord:
    """Parse a stored record.

    Raises:
        DecodeError: ``bad_presence`` when the bytes are not a record, or its fields
            have the wrong types.
    """
    try:
        _, _, body = data.partition(b" ")
        fields = orjson.loads(body)
        record = PresenceRecord(**fields)
    except (ValueError, TypeError) as exc:
        raise DecodeError(DropReason.BAD_PRESENCE, type(exc).__name__) from None
    if (
        any(not isinstance(getattr(record, name), str) for name in _RECORD_TEXT_FIELDS)
        or not isinstance(record.since, int | float)
        or isinstance(record.since, bool)
        or not (record.peer is None or isinstance(record.peer, str))
        or not (record.runner is None or isinstance(record.runner, str))
    ):
        raise DecodeError(DropReason.BAD_PRESENCE, "field types")
    return record


def record_conn(data: bytes) -> str:
    """The connection id of a stored record, without parsing the rest.

    Raises:
        DecodeError: ``bad_presence`` when the id is not text.
    """
    try:
        return data.partition(b" ")[0].decode()
    except UnicodeDecodeError:
        raise DecodeError(DropReason.BAD_PRESENCE, "connection id is not UTF-8") from None


def record_holder(data: bytes) -> tuple[str, str]:
    """The connection and node of a stored record.

    Raises:
        DecodeError: ``bad_presence`` when the bytes are not a record.
    """
    record = decode_record(data)
    return record.conn, record.node


def record_runner(data: bytes) -> tuple[str, str, str]:
    """The connection, node and runner (the connection when it names none) of a record.

    Raises:
        DecodeError: ``bad_presence`` when the bytes are not a record.
    """
    record = decode_record(data)
    return record.conn, record.node, record.runner or record.conn


def encode_event(event: PresenceEvent) -> bytes:
    """Serialize a presence event."""
    fields = asdict(event)
    if not event.runner:
        del fields["runner"]  # announced as its connection, as it always was
    return orjson.dumps(fields)


def decode_event(data: bytes) -> PresenceEvent:
    """Parse a presence event.

    Raises:
        DecodeError: ``bad_presence`` when the bytes are not an event.
    """
    try:
        fields = orjson.loads(data)
        event = PresenceEvent(
            kind=EventKind(fields["kind"]),
            agent=fields["agent"],
            conn=fields["conn"],
            node=fields["node"],
            runner=fields.get("runner") or "",
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise DecodeError(DropReason.BAD_PRESENCE, type(exc).__name__) from None
    if not all(isinstance(v, str) for v in (event.agent, event.conn, event.node, event.runner)):
        raise DecodeError(DropReason.BAD_PRESENCE, "field types")
    return event
