"""Tests for buswire.codec: envelope decoding and JSON <-> MsgPack translation.

Both ways per wire type (given these bytes, decode gives this envelope; encoding
gives these bytes), real library messages, hostile input, and property tests.
Every failure must surface as DecodeError with a fixed reason, never as anything else.
"""

import base64
import contextlib
import gc
import json
import math
from collections.abc import Callable
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buswire.codec import (
    COUNT_WHILE_PARSING_BYTES,
    convert_tree,
    decode_envelope,
    dump_tree,
    encode_tree,
    envelope_of,
    load_tree,
    sniff_format,
    translate,
)
from buswire.complexity import MAX_DEPTH
from buswire.dialect import Dialect, is_registry_type
from buswire.envelope import Envelope
from buswire.errors import DecodeError
from buswire.formats import Format

JSON = Format.JSON
MSGPACK = Format.MSGPACK
REASONS = {"malformed", "too_complex", "not_a_message", "bad_source", "bad_target", "bad_type"}

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

AUDIO = bytes(range(256)) * 2 + bytes(128)  # 640 bytes: 20 ms of 16 kHz mono s16
assert len(AUDIO) == 640


def only_decode_error(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn``; a DecodeError with a known reason is returned, anything else raised."""
    try:
        return fn(*args)
    except DecodeError as exc:
        assert exc.reason in REASONS, exc.reason
        return exc


def message(data: dict[str, Any], type_name: Any = "app.messages.Ping") -> dict[str, Any]:
    return {"__type__": type_name, "__data__": data}


def json_bytes(tree: Any) -> bytes:
    return orjson.dumps(tree)


def msgpack_bytes(tree: Any) -> bytes:
    return msgpack.packb(tree, use_bin_type=True)


# --- Byte-level round trips -------------------------------------------------------

TASK_TYPE = "pipecat_subagents.bus.messages.BusTaskRequestMessage"
TASK_TREE = {
    "__type__": TASK_TYPE,
    "__data__": {"source": "caller", "target": "worker", "task_id": "t1"},
}
TASK_ENVELOPE = Envelope(
    type_name=TASK_TYPE, source="caller", target="worker", dialect=Dialect.SUBAGENTS
)
TASK_JSON = (
    b'{"__type__":"pipecat_subagents.bus.messages.BusTaskRequestMessage",'
    b'"__data__":{"source":"caller","target":"worker","task_id":"t1"}}'
)
TASK_MSGPACK = (
    b"\x82"  # map of 2
    b"\xa8__type__"
    b"\xd9\x34pipecat_subagents.bus.messages.BusTaskRequestMessage"  # str8, 52 chars
    b"\xa8__data__"
    b"\x83"  # map of 3
    b"\xa6source\xa6caller"
    b"\xa6target\xa6worker"
    b"\xa7task_id\xa2t1"
)

# An untargeted message carrying bytes: base64-tagged in JSON, native bin in MsgPack.
AUDIO_TREE = {
    "__type__": "x.Y",
    "__data__": {"source": "a", "audio": {"__type__": "bytes", "__data__": "AAE="}},
}
AUDIO_ENVELOPE = Envelope(type_name="x.Y", source="a", target=None, dialect=None)
AUDIO_JSON = (
    b'{"__type__":"x.Y","__data__":{"source":"a","audio":{"__type__":"bytes","__data__":"AAE="}}}'
)
AUDIO_MSGPACK = (
    b"\x82"
    b"\xa8__type__\xa3x.Y"
    b"\xa8__data__\x82"
    b"\xa6source\xa1a"
    b"\xa5audio\xc4\x02\x00\x01"  # bin8, 2 bytes
)

WIRE_CASES = [
    pytest.param(TASK_TREE, TASK_ENVELOPE, TASK_JSON, TASK_MSGPACK, id="targeted"),
    pytest.param(AUDIO_TREE, AUDIO_ENVELOPE, AUDIO_JSON, AUDIO_MSGPACK, id="untargeted-bytes"),
]


@pytest.mark.parametrize(("tree", "envelope", "as_json", "as_msgpack"), WIRE_CASES)
def test_bytes_decode_to_envelope(
    tree: Any, envelope: Envelope, as_json: bytes, as_msgpack: bytes
) -> None:
    assert decode_envelope(as_json, JSON) == envelope
    assert decode_envelope(as_msgpack, MSGPACK) == envelope


@pytest.mark.parametrize(("tree", "envelope", "as_json", "as_msgpack"), WIRE_CASES)
def test_tree_encodes_to_bytes(
    tree: Any, envelope: Envelope, as_json: bytes, as_msgpack: bytes
) -> None:
    assert encode_tree(tree, JSON) == as_json
    assert encode_tree(tree, MSGPACK) == as_msgpack


@pytest.mark.parametrize(("tree", "envelope", "as_json", "as_msgpack"), WIRE_CASES)
def test_bytes_translate_to_bytes(
    tree: Any, envelope: Envelope, as_json: bytes, as_msgpack: bytes
) -> None:
    assert translate(as_json, JSON, MSGPACK) == as_msgpack
    assert translate(as_msgpack, MSGPACK, JSON) == as_json


@pytest.mark.parametrize(("tree", "envelope", "as_json", "as_msgpack"), WIRE_CASES)
def test_bytes_load_to_tree(
    tree: Any, envelope: Envelope, as_json: bytes, as_msgpack: bytes
) -> None:
    assert load_tree(as_json, JSON) == tree
    assert convert_tree(load_tree(as_msgpack, MSGPACK), MSGPACK, JSON) == tree
    assert dump_tree(load_tree(as_msgpack, MSGPACK), MSGPACK) == as_msgpack
    assert envelope_of(tree) == envelope


def test_untargeted_message_has_no_target_key() -> None:
    assert b'"target"' not in AUDIO_JSON
    assert decode_envelope(AUDIO_JSON, JSON).target is None


def test_explicit_null_target_is_untargeted() -> None:
    data = b'{"__type__":"a.B","__data__":{"source":"s","target":null}}'
    assert decode_envelope(data, JSON) == Envelope("a.B", "s", None, None)


def test_envelope_ignores_field_order_and_whitespace() -> None:
    data = (
        b' \n{ "__data__" : { "x" : 1 , "target" : "t" , "source" : "s" } , "__type__" : "a.B" }\n'
    )
    assert decode_envelope(data, JSON) == Envelope("a.B", "s", "t", None)


def test_convert_tree_same_format_returns_the_same_object() -> None:
    tree = {"__type__": "a.B", "__data__": {"source": "s"}}
    assert convert_tree(tree, JSON, JSON) is tree
    assert convert_tree(tree, MSGPACK, MSGPACK) is tree


# --- Sniffing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (TASK_JSON, JSON),
        (b" \t\r\n" + TASK_JSON, JSON),
        (b"{", JSON),
        (TASK_MSGPACK, MSGPACK),
        (AUDIO_MSGPACK, MSGPACK),
        (b"\x80", MSGPACK),
        (b"\x8f", MSGPACK),
        (b"\xde\x00\x01", MSGPACK),
        (b"\xdf\x00\x00\x00\x01", MSGPACK),
        (b"", None),
        (b" \n\t\r", None),
        (b"[1]", None),
        (b'"s"', None),
        (b"\x90", None),  # MsgPack array
        (b"\xc0", None),  # MsgPack nil
        (b"\xef\xbb\xbf{}", None),  # UTF-8 BOM
    ],
)
def test_sniff_format(data: bytes, expected: Format | None) -> None:
    assert sniff_format(data) is expected


def test_sniff_format_every_first_byte() -> None:
    maps = {*range(0x80, 0x90), 0xDE, 0xDF}
    for first in range(256):
        got = sniff_format(bytes([first, 0x00]))
        if first == ord("{"):
            assert got is JSON
        elif first in maps:
            assert got is MSGPACK
        else:
            assert got is None, first


# --- Real library messages --------------------------------------------------------


def subagents_messages() -> list[Any]:
    from pipecat.frames.frames import OutputAudioRawFrame
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat_subagents.agents.task_context import TaskStatus
    from pipecat_subagents.bus.messages import (
        BusActivateAgentMessage,
        BusAgentRegistryMessage,
        BusEndAgentMessage,
        BusFrameMessage,
        BusTaskRequestMessage,
        BusTaskResponseMessage,
    )
    from pipecat_subagents.types import AgentRegistryEntry

    frame = OutputAudioRawFrame(audio=AUDIO, sample_rate=16000, num_channels=1)
    return [
        BusTaskRequestMessage(
            source="caller", target="worker", task_id="task-1", payload={"q": "weather"}
        ),
        BusTaskResponseMessage(
            source="worker",
            target="caller",
            task_id="task-1",
            status=TaskStatus.COMPLETED,
            response={"ok": True, "temp": 21.5},
        ),
        BusActivateAgentMessage(source="main", target="voice", args={"lang": "en"}),
        BusEndAgentMessage(source="main", target="voice", reason="done"),
        BusFrameMessage(source="voice", frame=frame, direction=FrameDirection.DOWNSTREAM),
        BusAgentRegistryMessage(
            source="runner-a", runner="runner-a", agents=[AgentRegistryEntry(name="voice")]
        ),
    ]


def pipecat_messages() -> list[Any]:
    from pipecat.bus.messages import (
        BusActivateWorkerMessage,
        BusEndWorkerMessage,
        BusFrameMessage,
        BusJobRequestMessage,
        BusJobResponseMessage,
        BusWorkerRegistryMessage,
    )
    from pipecat.frames.frames import OutputAudioRawFrame
    from pipecat.pipeline.job_context import JobStatus
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.registry.types import WorkerRegistryEntry

    frame = OutputAudioRawFrame(audio=AUDIO, sample_rate=16000, num_channels=1)
    return [
        BusJobRequestMessage(
            source="caller", target="worker", job_id="job-1", payload={"q": "weather"}
        ),
        BusJobResponseMessage(
            source="worker",
            target="caller",
            job_id="job-1",
            status=JobStatus.COMPLETED,
            response={"ok": True},
        ),
        BusActivateWorkerMessage(source="main", target="voice", args={"lang": "en"}),
        BusEndWorkerMessage(source="main", target="voice", reason="done"),
        BusFrameMessage(source="voice", frame=frame, direction=FrameDirection.UPSTREAM),
        BusWorkerRegistryMessage(
            source="runner-a", runner="runner-a", workers=[WorkerRegistryEntry(name="voice")]
        ),
    ]


def real_cases(
    subagents_serializer: Any, pipecat_serializer: Any
) -> list[tuple[Any, Any, bytes, Dialect]]:
    cases = []
    for msg in subagents_messages():
        cases.append(
            (msg, subagents_serializer, subagents_serializer.serialize(msg), Dialect.SUBAGENTS)
        )
    for msg in pipecat_messages():
        cases.append((msg, pipecat_serializer, pipecat_serializer.serialize(msg), Dialect.PIPECAT))
    return cases


def qualified(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__name__}"


def test_real_messages_decode(subagents_serializer: Any, pipecat_serializer: Any) -> None:
    for msg, _, data, dialect in real_cases(subagents_serializer, pipecat_serializer):
        expected = Envelope(
            type_name=qualified(msg), source=msg.source, target=msg.target, dialect=dialect
        )
        assert sniff_format(data) is JSON
        assert decode_envelope(data, JSON) == expected
        packed = translate(data, JSON, MSGPACK)
        assert sniff_format(packed) is MSGPACK
        assert decode_envelope(packed, MSGPACK) == expected


def test_real_registry_messages_are_registry_types(
    subagents_serializer: Any, pipecat_serializer: Any
) -> None:
    registries = [
        data
        for msg, _, data, _ in real_cases(subagents_serializer, pipecat_serializer)
        if "Registry" in type(msg).__name__
    ]
    assert len(registries) == 2
    for data in registries:
        envelope = decode_envelope(data, JSON)
        assert is_registry_type(envelope.type_name)
        assert envelope.target is None


def test_real_messages_survive_translation_byte_for_byte(
    subagents_serializer: Any, pipecat_serializer: Any
) -> None:
    for msg, serializer, data, _ in real_cases(subagents_serializer, pipecat_serializer):
        packed = translate(data, JSON, MSGPACK)
        back = translate(packed, MSGPACK, JSON)
        assert back == data
        restored = serializer.deserialize(back)
        assert type(restored) is type(msg)
        assert (restored.source, restored.target) == (msg.source, msg.target)


@pytest.mark.parametrize("dialect", [Dialect.SUBAGENTS, Dialect.PIPECAT])
def test_real_frame_message(
    dialect: Dialect, subagents_serializer: Any, pipecat_serializer: Any
) -> None:
    if dialect is Dialect.SUBAGENTS:
        serializer, msg = subagents_serializer, subagents_messages()[4]
    else:
        serializer, msg = pipecat_serializer, pipecat_messages()[4]
    assert type(msg).__name__ == "BusFrameMessage"
    data = serializer.serialize(msg)

    # Bridged frames carry no target at all: the hub routes them by pairing.
    tree = orjson.loads(data)
    assert "target" not in tree["__data__"]
    assert decode_envelope(data, JSON) == Envelope(qualified(msg), "voice", None, dialect)
    assert base64.b64encode(AUDIO) in data

    # In MsgPack the audio is native bin (bin16, length 640), not base64.
    packed = translate(data, JSON, MSGPACK)
    assert b"\xc5\x02\x80" + AUDIO in packed
    assert base64.b64encode(AUDIO) not in packed
    native = msgpack.unpackb(packed, raw=False)
    assert native["__data__"]["frame"]["__data__"]["audio"] == AUDIO
    assert len(packed) < len(data)

    restored = serializer.deserialize(translate(packed, MSGPACK, JSON))
    assert restored.frame.audio == AUDIO
    assert restored.frame.sample_rate == 16000


# --- translate --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [JSON, MSGPACK])
def test_same_format_translate_returns_identical_bytes_object(fmt: Format) -> None:
    for data in (TASK_JSON, TASK_MSGPACK, b"", b"\xff not even valid"):
        assert translate(data, fmt, fmt) is data


def test_translate_json_msgpack_json_tree_equal() -> None:
    original = (
        b'{"__type__":"a.B","__data__":{"source":"s","target":"t",'
        b'"blob":{"__type__":"bytes","__data__":"AAECAw=="},'
        b'"nested":[{"__type__":"bytes","__data__":""},1,-2,3.5,true,null,"\xc3\xa9"],'
        b'"enum":{"__type__":"m.E","__data__":"X"},"obj":{"k":{"kk":[]}}}}'
    )
    packed = translate(original, JSON, MSGPACK)
    native = msgpack.unpackb(packed, raw=False)
    assert native["__data__"]["blob"] == b"\x00\x01\x02\x03"
    assert native["__data__"]["nested"][0] == b""
    assert native["__data__"]["enum"] == {"__type__": "m.E", "__data__": "X"}
    assert orjson.loads(translate(packed, MSGPACK, JSON)) == orjson.loads(original)


def test_translate_keeps_extreme_64_bit_integers() -> None:
    for n in (2**64 - 1, -(2**63), 2**53 + 1):
        tree = message({"source": "s", "n": n})
        packed = translate(json_bytes(tree), JSON, MSGPACK)
        assert msgpack.unpackb(packed)["__data__"]["n"] == n
        assert orjson.loads(translate(packed, MSGPACK, JSON)) == tree


def test_translate_does_not_check_message_shape() -> None:
    # Shape is decode_envelope's job; translate only converts encodings.
    assert translate(b"[1]", JSON, MSGPACK) == b"\x91\x01"


# --- Hostile and broken input -----------------------------------------------------

VALID_DATA = {"source": "s", "target": "t"}

HOSTILE_JSON = [
    pytest.param(b"", "malformed", id="empty"),
    pytest.param(b"   ", "malformed", id="whitespace"),
    pytest.param(TASK_JSON[:-1], "malformed", id="truncated"),
    pytest.param(b"{", "malformed", id="open-brace"),
    pytest.param(b"[1, 2]", "not_a_message", id="top-list"),
    pytest.param(b"42", "not_a_message", id="top-number"),
    pytest.param(b'"hello"', "not_a_message", id="top-string"),
    pytest.param(b"null", "not_a_message", id="top-null"),
    pytest.param(b"true", "not_a_message", id="top-bool"),
    pytest.param(b"{}", "not_a_message", id="empty-map"),
    pytest.param(json_bytes({"__data__": VALID_DATA}), "not_a_message", id="no-type"),
    pytest.param(json_bytes({"__type__": "a.B"}), "not_a_message", id="no-data"),
    pytest.param(json_bytes(message(VALID_DATA, "")), "not_a_message", id="empty-type"),
    pytest.param(json_bytes(message(VALID_DATA, 7)), "not_a_message", id="int-type"),
    pytest.param(json_bytes(message(VALID_DATA, None)), "not_a_message", id="null-type"),
    pytest.param(json_bytes({"__type__": "a.B", "__data__": [1]}), "not_a_message", id="data-list"),
    pytest.param(json_bytes({"__type__": "a.B", "__data__": "x"}), "not_a_message", id="data-str"),
    pytest.param(
        json_bytes({"__type__": "a.B", "__data__": None}), "not_a_message", id="data-null"
    ),
    pytest.param(json_bytes(message(VALID_DATA, "Ping")), "bad_type", id="unqualified-type"),
    pytest.param(json_bytes(message({"target": "t"})), "bad_source", id="no-source"),
    pytest.param(json_bytes(message({"source": ""})), "bad_source", id="empty-source"),
    pytest.param(json_bytes(message({"source": None})), "bad_source", id="null-source"),
    pytest.param(json_bytes(message({"source": 5})), "bad_source", id="int-source"),
    pytest.param(json_bytes(message({"source": ["s"]})), "bad_source", id="list-source"),
    pytest.param(json_bytes(message({"source": {"a": 1}})), "bad_source", id="map-source"),
    pytest.param(json_bytes(message({"source": "s", "target": 5})), "bad_target", id="int-target"),
    pytest.param(
        json_bytes(message({"source": "s", "target": ""})), "bad_target", id="empty-target"
    ),
    pytest.param(
        json_bytes(message({"source": "s", "target": ["t"]})), "bad_target", id="list-target"
    ),
    pytest.param(
        json_bytes(message({"source": "s", "target": False})), "bad_target", id="false-target"
    ),
    # Valid JSON, but deeper than any parser here goes: too complex, not malformed.
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "too_complex", id="nested-100k-top"),
    pytest.param(
        b'{"__type__":"a.B","__data__":{"source":"s","x":'
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}}",
        "too_complex",
        id="nested-100k-payload",
    ),
    pytest.param(b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "too_complex", id="nested-maps"),
    pytest.param(b'{"__type__":"a.B","__data__":{"source":"\xff"}}', "malformed", id="bad-utf8"),
    pytest.param(
        b'{"__type__":"a.B","__data__":{"source":"\xc0\x80"}}', "malformed", id="overlong-utf8"
    ),
    pytest.param(TASK_JSON + b"x", "malformed", id="trailing-garbage"),
    pytest.param(TASK_JSON + TASK_JSON, "malformed", id="two-messages"),
    pytest.param(TASK_JSON + b"\x00", "malformed", id="trailing-nul"),
    pytest.param(b"{'__type__': 'a.B'}", "malformed", id="single-quotes"),
    pytest.param(b'{"__type__":"a.B",}', "malformed", id="trailing-comma"),
]


# Odd but valid for the library's own parser (json.loads), which real clients use
# on the receiving end; the hub must not drop what a real client can send.
LIBRARY_ACCEPTS_JSON = [
    pytest.param(b'{"__type__":"a.B","__data__":{"source":"s","n":1e400}}', id="float-overflow"),
    pytest.param(
        b'{"__type__":"a.B","__data__":{"source":"s","n":' + b"9" * 400 + b"}}",
        id="huge-integer",
    ),
    pytest.param(b'{"__type__":"a.B","__data__":{"source":"s","n":-1e400}}', id="neg-overflow"),
    pytest.param(
        b'{"__type__":"a.B","__data__":{"source":"s","x":"\\ud800"}}',
        id="lone-surrogate",
    ),
    pytest.param(b'{"__type__":"a.B","__data__":{"source":"s","n":NaN}}', id="nan"),
    pytest.param(b'{"__type__":"a.B","__data__":{"source":"s","n":Infinity}}', id="infinity"),
    pytest.param(b'{"__type__":"a.B","__data__":{"source":"s","n":-Infinity}}', id="-infinity"),
    pytest.param(b"\xef\xbb\xbf" + TASK_JSON, id="bom"),
]


@pytest.mark.parametrize("data", LIBRARY_ACCEPTS_JSON)
def test_json_the_library_accepts_is_routable(data: bytes) -> None:
    tree = json.loads(data)  # the library's parser takes it
    assert decode_envelope(data, JSON) == envelope_of(tree)


@pytest.mark.parametrize(("data", "reason"), HOSTILE_JSON)
def test_hostile_json(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_envelope(data, JSON)
    assert info.value.reason == reason


@pytest.mark.parametrize(("data", "reason"), HOSTILE_JSON)
def test_hostile_json_translate(data: bytes, reason: str) -> None:
    # translate parses but does not check shape: unparseable input is malformed,
    # parseable input of the wrong shape is converted or refused, never crashes.
    result = only_decode_error(translate, data, JSON, MSGPACK)
    if reason in ("malformed", "too_complex"):
        assert isinstance(result, DecodeError)
        assert result.reason == reason


def mp_map(*pairs: bytes) -> bytes:
    """A MsgPack fixmap from already-encoded key/value byte strings."""
    assert len(pairs) % 2 == 0
    return bytes([0x80 | len(pairs) // 2]) + b"".join(pairs)


HOSTILE_MSGPACK = [
    pytest.param(b"", "malformed", id="empty"),
    pytest.param(TASK_MSGPACK[:-1], "malformed", id="truncated"),
    pytest.param(b"\x82", "malformed", id="map-header-only"),
    pytest.param(b"\xc1", "malformed", id="reserved-byte"),
    pytest.param(msgpack_bytes([1, 2]), "not_a_message", id="top-list"),
    pytest.param(msgpack_bytes(42), "not_a_message", id="top-number"),
    pytest.param(msgpack_bytes("hello"), "not_a_message", id="top-string"),
    pytest.param(msgpack_bytes(b"bin"), "not_a_message", id="top-bin"),
    pytest.param(msgpack_bytes(None), "not_a_message", id="top-nil"),
    pytest.param(msgpack_bytes({}), "not_a_message", id="empty-map"),
    pytest.param(msgpack_bytes({"__data__": VALID_DATA}), "not_a_message", id="no-type"),
    pytest.param(msgpack_bytes({"__type__": "a.B"}), "not_a_message", id="no-data"),
    pytest.param(msgpack_bytes(message(VALID_DATA, b"a.B")), "not_a_message", id="bin-type"),
    pytest.param(
        msgpack_bytes({"__type__": "a.B", "__data__": [1]}), "not_a_message", id="data-list"
    ),
    pytest.param(
        msgpack_bytes({"__type__": "a.B", "__data__": b"x"}), "not_a_message", id="data-bin"
    ),
    pytest.param(
        msgpack_bytes({b"__type__": "a.B", b"__data__": VALID_DATA}),
        "not_a_message",
        id="bin-keys",
    ),
    pytest.param(msgpack_bytes(message(VALID_DATA, "Ping")), "bad_type", id="unqualified-type"),
    pytest.param(msgpack_bytes(message({"target": "t"})), "bad_source", id="no-source"),
    pytest.param(msgpack_bytes(message({"source": ""})), "bad_source", id="empty-source"),
    pytest.param(msgpack_bytes(message({"source": b"s"})), "bad_source", id="bin-source"),
    pytest.param(msgpack_bytes(message({"source": 5})), "bad_source", id="int-source"),
    pytest.param(
        msgpack_bytes(message({"source": "s", "target": b"t"})), "bad_target", id="bin-target"
    ),
    pytest.param(
        msgpack_bytes(message({"source": "s", "target": 1.5})), "bad_target", id="float-target"
    ),
    pytest.param(b"\x91" * 100_000 + b"\x90", "too_complex", id="nested-100k-top"),
    pytest.param(
        b"\x82\xa8__type__\xa3a.B\xa8__data__\x82\xa6source\xa1s\xa1x"
        + b"\x91" * 100_000
        + b"\x90",
        "too_complex",
        id="nested-100k-payload",
    ),
    pytest.param(mp_map(b"\x01", b"\x02"), "malformed", id="int-key"),
    pytest.param(mp_map(b"\xc0", b"\x02"), "malformed", id="nil-key"),
    pytest.param(mp_map(b"\xcb" + b"\x00" * 8, b"\x02"), "malformed", id="float-key"),
    pytest.param(mp_map(b"\x90", b"\x02"), "malformed", id="array-key"),
    pytest.param(mp_map(b"\x80", b"\x02"), "malformed", id="map-key"),
    pytest.param(
        mp_map(b"\xa8__type__", b"\xa3a.B", b"\xa8__data__", mp_map(b"\x07", b"\xa1s")),
        "malformed",
        id="nested-int-key",
    ),
    pytest.param(
        mp_map(b"\xa8__type__", b"\xa3a.B", b"\xa8__data__", mp_map(b"\xa6source", b"\xa1\xff")),
        "malformed",
        id="bad-utf8",
    ),
    pytest.param(
        mp_map(
            b"\xa8__type__", b"\xa3a.B", b"\xa8__data__", mp_map(b"\xa6source", b"\xa3\xed\xa0\x80")
        ),
        "malformed",
        id="surrogate-utf8",
    ),
    pytest.param(TASK_MSGPACK + b"\x00", "malformed", id="trailing-byte"),
    pytest.param(TASK_MSGPACK + TASK_MSGPACK, "malformed", id="two-messages"),
    pytest.param(b"\xdd\xff\xff\xff\xff", "malformed", id="array32-4g"),
    pytest.param(b"\xdf\xff\xff\xff\xff", "malformed", id="map32-4g"),
    pytest.param(b"\xdb\xff\xff\xff\xff", "malformed", id="str32-4g"),
    pytest.param(b"\xc6\xff\xff\xff\xff", "malformed", id="bin32-4g"),
    pytest.param(
        mp_map(
            b"\xa8__type__",
            b"\xa3a.B",
            b"\xa8__data__",
            mp_map(b"\xa6source", b"\xdb\x7f\xff\xff\xff"),
        ),
        "malformed",
        id="str32-2g-in-map",
    ),
]


@pytest.mark.parametrize(("data", "reason"), HOSTILE_MSGPACK)
def test_hostile_msgpack(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_envelope(data, MSGPACK)
    assert info.value.reason == reason


@pytest.mark.parametrize(("data", "reason"), HOSTILE_MSGPACK)
def test_hostile_msgpack_translate(data: bytes, reason: str) -> None:
    result = only_decode_error(translate, data, MSGPACK, JSON)
    if reason in ("malformed", "too_complex"):
        assert isinstance(result, DecodeError)
        assert result.reason == reason


@pytest.mark.parametrize(("fmt", "data"), [(JSON, TASK_JSON), (MSGPACK, TASK_MSGPACK)])
def test_every_truncation_is_malformed(fmt: Format, data: bytes) -> None:
    for end in range(len(data)):
        with pytest.raises(DecodeError) as info:
            decode_envelope(data[:end], fmt)
        assert info.value.reason == "malformed", end


def test_big_integers_do_not_block_routing() -> None:
    # The envelope is all the hub needs; big payload numbers are the client's business.
    for number in (b"18446744073709551616", b"-9223372036854775809", b"9" * 300):
        data = b'{"__type__":"a.B","__data__":{"source":"s","target":"t","n":' + number + b"}}"
        assert decode_envelope(data, JSON) == Envelope("a.B", "s", "t", None)


def test_huge_integer_source_is_bad_source() -> None:
    data = b'{"__type__":"a.B","__data__":{"source":' + b"9" * 300 + b"}}"
    with pytest.raises(DecodeError) as info:
        decode_envelope(data, JSON)
    assert info.value.reason == "bad_source"


@pytest.mark.parametrize(
    "number",
    [
        pytest.param(b"18446744073709551616", id="2**64"),
        pytest.param(b"-9223372036854775809", id="-2**63-1"),
        pytest.param(b"1" + b"0" * 100, id="10**100"),
    ],
)
def test_translate_refuses_integers_msgpack_cannot_hold(number: bytes) -> None:
    # MsgPack integers stop at 64 bits, and the library's json.loads keeps big ints
    # exact. Translating one must fail loudly, not deliver a different number
    # (orjson parses integers beyond 64 bits as float).
    data = b'{"__type__":"a.B","__data__":{"source":"s","n":' + number + b"}}"
    with pytest.raises(DecodeError) as info:
        translate(data, JSON, MSGPACK)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_translate_keeps_non_finite_floats_for_json(value: float) -> None:
    # The library writes and reads NaN/Infinity literals (json allow_nan); they
    # must not silently turn into null on the way from MsgPack.
    data = msgpack_bytes(message({"source": "s", "x": value}))
    assert decode_envelope(data, MSGPACK) == Envelope("app.messages.Ping", "s", None, None)
    restored = json.loads(translate(data, MSGPACK, JSON))["__data__"]["x"]
    assert (math.isnan(restored) and math.isnan(value)) or restored == value


@pytest.mark.parametrize("depth", [100, 254, 255, 256, 300, 500, 700, 900, 1000])
def test_deep_but_parseable_nesting_translates_or_is_refused(depth: int) -> None:
    # Both parsers accept up to ~1,000 levels, so a payload this deep passes
    # decode_envelope (the hub's receipt refuses past MAX_DEPTH, in its type walk);
    # translate must then succeed or raise DecodeError, never RecursionError, and
    # must succeed for anything the hub relays.
    as_json = (
        b'{"__type__":"a.B","__data__":{"source":"s","x":' + b"[" * depth + b"]" * depth + b"}}"
    )
    as_msgpack = (
        b"\x82\xa8__type__\xa3a.B\xa8__data__\x82\xa6source\xa1s\xa1x" + b"\x91" * depth + b"\x90"
    )
    assert decode_envelope(as_json, JSON).source == "s"
    assert decode_envelope(as_msgpack, MSGPACK).source == "s"
    for data, src, dst in ((as_json, JSON, MSGPACK), (as_msgpack, MSGPACK, JSON)):
        result = only_decode_error(translate, data, src, dst)
        if depth + 1 <= MAX_DEPTH:  # the innermost list is depth + 1 below the top
            assert isinstance(result, bytes)
        elif isinstance(result, DecodeError):
            assert result.reason in ("malformed", "too_complex")


@pytest.mark.parametrize(
    "wrapper",
    [
        pytest.param({"__type__": "bytes", "__data__": "!!!"}, id="bad-chars"),
        pytest.param({"__type__": "bytes", "__data__": "AAE"}, id="bad-padding"),
        pytest.param({"__type__": "bytes", "__data__": "A"}, id="one-char"),
        pytest.param({"__type__": "bytes", "__data__": "AA\nE="}, id="newline"),
        pytest.param({"__type__": "bytes", "__data__": "\u00e9\u00e9=="}, id="non-ascii"),
        pytest.param({"__type__": "bytes", "__data__": 5}, id="int"),
        pytest.param({"__type__": "bytes", "__data__": None}, id="null"),
        pytest.param({"__type__": "bytes", "__data__": ["AAE="]}, id="list"),
    ],
)
def test_bad_bytes_wrapper_is_malformed_in_translate(wrapper: dict[str, Any]) -> None:
    data = json_bytes(message({"source": "s", "target": "t", "deep": [{"blob": wrapper}]}))
    # Routing never looks inside the payload ...
    assert decode_envelope(data, JSON).target == "t"
    # ... but translating must convert it, and cannot.
    with pytest.raises(DecodeError) as info:
        translate(data, JSON, MSGPACK)
    assert info.value.reason == "malformed"


def test_bytes_tag_with_extra_keys_is_not_bytes() -> None:
    tree = message({"source": "s", "x": {"__type__": "bytes", "__data__": "!!", "more": 1}})
    packed = translate(json_bytes(tree), JSON, MSGPACK)
    assert msgpack.unpackb(packed)["__data__"]["x"]["__data__"] == "!!"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(msgpack.ExtType(5, b"x"), id="ext"),
        pytest.param(msgpack.Timestamp(1, 0), id="timestamp"),
        pytest.param({b"k": 1}, id="bin-key"),
    ],
)
def test_msgpack_only_values_are_malformed_in_translate(value: Any) -> None:
    data = msgpack_bytes(message({"source": "s", "x": value}))
    with pytest.raises(DecodeError) as info:
        translate(data, MSGPACK, JSON)
    assert info.value.reason == "malformed"


# --- Properties -------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
NAME = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=24)
KEY = TEXT.filter(lambda k: not k.startswith("__"))
PAYLOAD_KEY = KEY.filter(lambda k: k not in ("source", "target"))
BYTES_WRAPPER = st.binary(max_size=48).map(
    lambda b: {"__type__": "bytes", "__data__": base64.b64encode(b).decode("ascii")}
)
LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
    | BYTES_WRAPPER
)
CLASS = st.from_regex(r"[A-Z][A-Za-z0-9_]{0,15}", fullmatch=True)
MODULE = st.from_regex(r"[a-z_][a-z0-9_]{0,8}(\.[a-z_][a-z0-9_]{0,8}){0,3}", fullmatch=True)
TYPE_NAME = st.one_of(
    st.builds("{}.{}".format, MODULE, CLASS),
    st.builds(
        "{}{}".format,
        st.sampled_from(
            [
                "pipecat_subagents.bus.messages.",
                "pipecat.bus.messages.",
                "pipecat.frames.frames.",
                "pipecatx.",
            ]
        ),
        CLASS,
    ),
)


def tagged(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.builds(
        lambda t, d: {"__type__": t, "__data__": d},
        TYPE_NAME,
        st.dictionaries(KEY, children, max_size=3) | TEXT,
    )


TREE = st.recursive(
    LEAF,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(KEY, children, max_size=4)
        | tagged(children)
    ),
    max_leaves=24,
)


def expected_dialect(type_name: str) -> Dialect | None:
    if type_name.startswith("pipecat_subagents."):
        return Dialect.SUBAGENTS
    if type_name.startswith("pipecat."):
        return Dialect.PIPECAT
    return None


@st.composite
def envelopes(draw: st.DrawFn) -> tuple[dict[str, Any], Envelope]:
    type_name = draw(TYPE_NAME)
    source = draw(NAME)
    target = draw(st.none() | NAME)
    data: dict[str, Any] = {"source": source}
    if target is not None:
        data["target"] = target
    data.update(draw(st.dictionaries(PAYLOAD_KEY, TREE, max_size=4)))
    tree = {"__type__": type_name, "__data__": data}
    return tree, Envelope(type_name, source, target, expected_dialect(type_name))


def native(tree: Any) -> Any:
    """The MsgPack view of a JSON-convention tree: bytes wrappers become bytes."""
    if isinstance(tree, dict):
        if set(tree) == {"__type__", "__data__"} and tree["__type__"] == "bytes":
            return base64.b64decode(tree["__data__"])
        return {k: native(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [native(v) for v in tree]
    return tree


@PROPERTY_SETTINGS
@given(envelopes())
def test_property_encode_decode_round_trip(case: tuple[dict[str, Any], Envelope]) -> None:
    tree, envelope = case
    for fmt in (JSON, MSGPACK):
        data = encode_tree(tree, fmt)
        assert sniff_format(data) is fmt
        assert decode_envelope(data, fmt) == envelope
    assert orjson.loads(encode_tree(tree, JSON)) == tree
    assert msgpack.unpackb(encode_tree(tree, MSGPACK), raw=False) == native(tree)


@PROPERTY_SETTINGS
@given(envelopes())
def test_property_translate_round_trip(case: tuple[dict[str, Any], Envelope]) -> None:
    tree, envelope = case
    as_json = encode_tree(tree, JSON)
    as_msgpack = encode_tree(tree, MSGPACK)

    packed = translate(as_json, JSON, MSGPACK)
    assert packed == as_msgpack
    assert decode_envelope(packed, MSGPACK) == envelope

    unpacked = translate(as_msgpack, MSGPACK, JSON)
    assert unpacked == as_json
    assert decode_envelope(unpacked, JSON) == envelope

    assert orjson.loads(translate(packed, MSGPACK, JSON)) == tree
    assert translate(translate(unpacked, JSON, MSGPACK), MSGPACK, JSON) == as_json


def assert_only_decode_errors(data: bytes) -> None:
    fmt = sniff_format(data)
    assert fmt is None or isinstance(fmt, Format)
    for fmt in (JSON, MSGPACK):
        result = only_decode_error(decode_envelope, data, fmt)
        assert isinstance(result, Envelope | DecodeError)
        if isinstance(result, Envelope):
            assert isinstance(result.source, str) and result.source
    for src, dst in ((JSON, MSGPACK), (MSGPACK, JSON)):
        result = only_decode_error(translate, data, src, dst)
        assert isinstance(result, bytes | DecodeError)


@PROPERTY_SETTINGS
@given(st.binary(max_size=512))
def test_property_random_bytes_raise_only_decode_error(data: bytes) -> None:
    assert_only_decode_errors(data)


@PROPERTY_SETTINGS
@given(
    st.sampled_from([b"{", b"\x81", b"\x82", b"\x8f", b"\xde", b"\xdf"]), st.binary(max_size=256)
)
def test_property_plausible_prefix_raises_only_decode_error(prefix: bytes, rest: bytes) -> None:
    assert_only_decode_errors(prefix + rest)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    tree, _ = draw(envelopes())
    data = bytearray(encode_tree(tree, draw(st.sampled_from([JSON, MSGPACK]))))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(min_value=0, max_value=255))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif data:
            del data[pos]
    return bytes(data)


@PROPERTY_SETTINGS
@given(mutated_messages())
def test_property_mutated_messages_raise_only_decode_error(data: bytes) -> None:
    assert_only_decode_errors(data)


# --- Complexity ---------------------------------------------------------------------


def msgpack_lists(count: int, pad: bytes = b"") -> bytes:
    """A message whose ``v`` is ``count`` empty arrays (0x90, one byte each)."""
    tree = message({"source": "s", "target": "t", "pad": pad, "v": None})
    head = msgpack_bytes(tree)
    assert head.endswith(b"\xa1v\xc0")
    return head[:-1] + b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count


def test_big_msgpack_frames_are_counted_while_parsed() -> None:
    data = msgpack_lists(200_000)
    assert len(data) >= COUNT_WHILE_PARSING_BYTES
    # 200,004 containers: the top map, __data__, the payload list, its lists.
    assert len(load_tree(data, MSGPACK)["__data__"]["v"]) == 200_000  # no bound asked
    assert len(load_tree(data, MSGPACK, 200_003)["__data__"]["v"]) == 200_000
    with pytest.raises(DecodeError) as info:
        load_tree(data, MSGPACK, 200_002)
    assert info.value.reason == "too_complex"


@pytest.mark.parametrize("marker", [0x80, 0x8F, 0x90, 0x9F, 0xDC, 0xDD, 0xDE, 0xDF])
def test_container_marker_bytes_inside_bytes_are_not_containers(marker: int) -> None:
    # Bytes that look like map and array headers make the cheap bound say "maybe";
    # the exact count then says no.
    data = msgpack_lists(10, pad=bytes([marker]) * (64 << 10))
    # 13 containers: the top map, __data__, v and its 10 lists.
    assert load_tree(data, MSGPACK, 13)["__data__"]["pad"][:1] == bytes([marker])
    with pytest.raises(DecodeError) as info:
        load_tree(data, MSGPACK, 12)
    assert info.value.reason == "too_complex"


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        pytest.param(MSGPACK, msgpack_lists(100_000), id="msgpack-bomb"),
        pytest.param(MSGPACK, msgpack_lists(100_000)[:-1], id="msgpack-truncated"),
        pytest.param(JSON, b"[" * 20_000 + b"]" * 20_000, id="json-deep"),
        pytest.param(JSON, b'{"a":[' + b"[]," * 20_000 + b"]}", id="json-bad"),
    ],
)
def test_the_collector_is_back_on_after_a_big_frame(fmt: Format, data: bytes) -> None:
    # Big frames are parsed with the collector paused: it must come back on,
    # whatever the frame did, and stay off if it was off.
    for enabled in (True, False):
        if not enabled:
            gc.disable()
        try:
            other = JSON if fmt is MSGPACK else MSGPACK
            with contextlib.suppress(DecodeError):
                load_tree(data, fmt, 1000)
            assert gc.isenabled() is enabled
            with contextlib.suppress(DecodeError):
                translate(data, fmt, other)
            assert gc.isenabled() is enabled
        finally:
            gc.enable()


@pytest.mark.parametrize(
    ("blob", "number"),
    [
        pytest.param(b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", 1.5, id="float64-nan-bytes"),
        pytest.param(b"\xca\xff\x80\x00\x00", 1.5, id="float32-minus-inf-bytes"),
        # A finite float whose last bytes and the next key read as a float32 NaN.
        pytest.param(b"", 6.231498825703935e16, id="float-then-key"),
    ],
)
def test_non_finite_look_alikes_translate_as_orjson_writes_them(blob: bytes, number: float) -> None:
    # Bytes that only look like a NaN or an infinity are no reason to leave orjson:
    # the output is exactly what encoding the same tree to JSON writes (the other
    # encoder escapes "\x7f" and "é").
    data = msgpack_bytes(message({"source": "s", "blob": blob, "n": number, "\x7f": "é"}))
    out = translate(data, MSGPACK, JSON)
    wrapped = {"__type__": "bytes", "__data__": base64.b64encode(blob).decode()}
    assert out == encode_tree(
        message({"source": "s", "blob": wrapped, "n": number, "\x7f": "é"}), JSON
    )


@given(
    st.recursive(
        st.none() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.binary(max_size=8),
        lambda kids: st.lists(kids, max_size=6) | st.dictionaries(KEY, kids, max_size=6),
        max_leaves=60,
    )
)
@PROPERTY_SETTINGS
def test_property_translation_in_c_matches_the_tree_walk(payload: Any) -> None:
    # translate converts bytes with the encoders' hooks; convert_tree walks the tree.
    # Both must agree, NaN and infinities included.
    native = message({"source": "s", "v": payload})
    data = msgpack_bytes(native)
    as_json = translate(data, MSGPACK, JSON)
    expected = convert_tree(native, MSGPACK, JSON)
    assert json.dumps(json.loads(as_json), sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert msgpack.unpackb(translate(as_json, JSON, MSGPACK), raw=False) == msgpack.unpackb(
        data, raw=False
    ) or _has_nan(payload)


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False
