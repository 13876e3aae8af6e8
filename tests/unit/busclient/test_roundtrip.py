"""The MsgPack serializers give back what the libraries' JSON serializers give back.

For every networked bus message type of both dialects, ``M.deserialize(M.serialize(m))``
must equal ``J.deserialize(J.serialize(m))`` field by field, and the MsgPack bytes must
carry byte strings as native ``bin``.
"""

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    InputAudioRawFrame,
    LLMContextFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    TextFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext, LLMSpecificMessage
from pipecat.processors.frame_processor import FrameDirection

from tests.unit.busclient.catalog import (
    DICTS,
    FRAME_TYPES,
    LLM_CONTEXTS,
    LLM_CONTEXTS_WITH_TOOLS,
    NAMES,
    PIPECAT,
    PROPERTY_SETTINGS,
    SUBAGENTS,
    TOOLS_SCHEMAS,
    Dialect,
    Raised,
    all_message_types,
    assert_same,
    bytes_leaves,
    case_id,
    frames_of,
    is_bytes_tag,
    messages,
    outcome,
    raw_msgpack_tree,
    walk,
)

ALL_TYPES = all_message_types()


def round_trips(dialect: Dialect, message: Any) -> tuple[Any, Any, bytes, bytes]:
    """JSON round trip, MsgPack round trip (each a value or a Raised), and the encodings.

    Both serializers must encode every generated message; decoding may fail (see
    LLM_CONTEXTS_WITH_TOOLS), and then it must fail the same way in both.
    """
    json_bytes = dialect.json.serialize(message)
    msgpack_bytes = dialect.msgpack.serialize(message)
    json_rt = outcome(dialect.json.deserialize, json_bytes)
    msgpack_rt = outcome(dialect.msgpack.deserialize, msgpack_bytes)
    return json_rt, msgpack_rt, json_bytes, msgpack_bytes


def check_message(dialect: Dialect, message: Any) -> None:
    """Every claim about one message: equal round trips, bytes native and complete."""
    json_rt, msgpack_rt, json_bytes, msgpack_bytes = round_trips(dialect, message)
    assert isinstance(json_rt, Raised | type(message))
    assert_same(json_rt, msgpack_rt)

    tree = raw_msgpack_tree(msgpack_bytes)
    assert not any(is_bytes_tag(node) for node in walk(tree)), "bytes left base64-tagged"
    assert bytes_leaves(tree) == bytes_leaves(
        json.loads(json_bytes), decode_tag=lambda tag: base64.b64decode(tag["__data__"])
    ), "MsgPack must carry the same byte strings, in the same places, as JSON"


def test_catalog_covers_both_dialects() -> None:
    names = {(dialect.name, cls.__name__) for dialect, cls in ALL_TYPES}
    for expected in [
        ("subagents", "BusFrameMessage"),
        ("subagents", "BusAgentRegistryMessage"),
        ("subagents", "BusTaskRequestMessage"),
        ("subagents", "BusActivateAgentMessage"),
        ("pipecat", "BusFrameMessage"),
        ("pipecat", "BusWorkerRegistryMessage"),
        ("pipecat", "BusJobRequestMessage"),
        ("pipecat", "BusUIEventMessage"),
    ]:
        assert expected in names
    for local in ["BusAddAgentMessage", "BusAgentLocalErrorMessage", "BusAddWorkerMessage"]:
        assert all(cls.__name__ != local for _, cls in ALL_TYPES)
    assert sum(1 for d, _ in ALL_TYPES if d is SUBAGENTS) >= 20
    assert sum(1 for d, _ in ALL_TYPES if d is PIPECAT) >= 25


@pytest.mark.parametrize(("dialect", "cls"), ALL_TYPES, ids=case_id)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_every_message_type_round_trips_like_json(
    dialect: Dialect, cls: type, data: st.DataObject
) -> None:
    check_message(dialect, data.draw(messages(cls), label="message"))


@pytest.mark.parametrize("frame_type", FRAME_TYPES, ids=case_id)
@pytest.mark.parametrize("dialect", [SUBAGENTS, PIPECAT], ids=case_id)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_frame_messages_round_trip_like_json(
    dialect: Dialect, frame_type: type, data: st.DataObject
) -> None:
    frame_message = next(c for c in dialect.message_types() if c.__name__ == "BusFrameMessage")
    message = frame_message(
        source=data.draw(NAMES, label="source"),
        frame=data.draw(frames_of((frame_type,)), label="frame"),
        direction=data.draw(st.sampled_from(FrameDirection), label="direction"),
        bridge=data.draw(st.none() | NAMES, label="bridge"),
    )
    check_message(dialect, message)


@pytest.mark.parametrize(
    ("dialect", "request_type", "id_field"),
    [
        (SUBAGENTS, "BusTaskRequestMessage", "task_id"),
        (PIPECAT, "BusJobRequestMessage", "job_id"),
    ],
    ids=["subagents", "pipecat"],
)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_adapter_types_inside_payloads_round_trip_like_json(
    dialect: Dialect, request_type: str, id_field: str, data: st.DataObject
) -> None:
    cls = next(c for c in dialect.message_types() if c.__name__ == request_type)
    payload = data.draw(DICTS, label="payload")
    contexts = LLM_CONTEXTS_WITH_TOOLS if dialect is SUBAGENTS else LLM_CONTEXTS
    payload["context"] = data.draw(contexts, label="context")
    payload["tools"] = data.draw(TOOLS_SCHEMAS, label="tools")
    message = cls(source="voice", target="worker", payload=payload, **{id_field: "t-1"})
    json_rt, msgpack_rt, _, _ = round_trips(dialect, message)
    assert isinstance(json_rt.payload["context"], LLMContext)
    assert_same(json_rt, msgpack_rt)


@pytest.mark.parametrize("dialect", [SUBAGENTS, PIPECAT], ids=case_id)
def test_a_failing_json_decode_fails_alike_in_msgpack(dialect: Dialect) -> None:
    """A context without tools: subagents 0.6.0 cannot decode it with either format."""
    frame_message = next(c for c in dialect.message_types() if c.__name__ == "BusFrameMessage")
    context = LLMContext(messages=[{"role": "user", "content": "hi"}])
    message = frame_message(
        source="voice",
        frame=LLMContextFrame(context=context, speculation=False),
        direction=FrameDirection.DOWNSTREAM,
    )
    json_rt, msgpack_rt, _, _ = round_trips(dialect, message)
    assert isinstance(json_rt, Raised) is (dialect is SUBAGENTS)
    assert_same(json_rt, msgpack_rt)


@pytest.mark.parametrize("dialect", [SUBAGENTS, PIPECAT], ids=case_id)
@pytest.mark.parametrize("frame_type", [InputAudioRawFrame, OutputAudioRawFrame])
def test_audio_is_native_bin_in_the_msgpack_tree(dialect: Dialect, frame_type: type) -> None:
    audio = bytes(range(256)) * 2 + bytes(128)  # 640 bytes: 20 ms of 16 kHz mono
    frame_message = next(c for c in dialect.message_types() if c.__name__ == "BusFrameMessage")
    message = frame_message(
        source="voice",
        frame=frame_type(audio=audio, sample_rate=16000, num_channels=1),
        direction=FrameDirection.DOWNSTREAM,
    )
    json_rt, msgpack_rt, json_bytes, msgpack_bytes = round_trips(dialect, message)

    frame_tree = raw_msgpack_tree(msgpack_bytes)["__data__"]["frame"]
    assert frame_tree["__type__"] == f"pipecat.frames.frames.{frame_type.__name__}"
    assert type(frame_tree["__data__"]["audio"]) is bytes
    assert frame_tree["__data__"]["audio"] == audio
    assert audio in msgpack_bytes  # raw, not base64
    assert base64.b64encode(audio) not in msgpack_bytes
    assert len(msgpack_bytes) < len(json_bytes) - 640 // 3
    assert msgpack_rt.frame.audio == audio
    assert msgpack_rt.frame.num_frames == 320
    assert_same(json_rt, msgpack_rt)


@pytest.mark.parametrize("dialect", [SUBAGENTS, PIPECAT], ids=case_id)
def test_examples_of_each_frame_kind(dialect: Dialect) -> None:
    frame_message = next(c for c in dialect.message_types() if c.__name__ == "BusFrameMessage")
    context = LLMContext(
        messages=[
            {"role": "user", "content": "hi"},
            LLMSpecificMessage(llm="google", message={"inline": b"\x00\xff", 1: None}),
        ],
        tools=ToolsSchema(
            standard_tools=[FunctionSchema(name="f", description="", properties={}, required=[])]
        ),
    )
    for frame in [
        OutputImageRawFrame(image=b"\x89PNG" + bytes(300), size=(10, 10), format="PNG"),
        TextFrame(text="héllo ☃"),
        LLMContextFrame(context=context, speculation=False),
    ]:
        frame.metadata = {"k": b"\x01", 2: [1.5, -0.0, float("inf")]}
        message = frame_message(source="voice", frame=frame, direction=FrameDirection.UPSTREAM)
        check_message(dialect, message)


def test_assert_same_sees_differences() -> None:
    """The equality helper is not vacuous: it notices each kind of difference."""
    a = TextFrame(text="x")
    b = TextFrame(text="x")
    b.id, b.name = a.id, a.name
    assert_same(a, b)
    for left, right in [
        ({"a": b"\x00"}, {"a": b"\x01"}),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ([0.0], [-0.0]),
        ([1], [1.0]),
        ([True], [1]),
        (FrameDirection.UPSTREAM, FrameDirection.DOWNSTREAM),
        ("completed", "completed "),
    ]:
        with pytest.raises(AssertionError):
            assert_same(left, right)
    c = TextFrame(text="x")
    c.name = a.name
    with pytest.raises(AssertionError, match=r"\$\.id"):
        assert_same(a, c)
    d = TextFrame(text="x")
    d.id, d.name, d.pts = a.id, a.name, 5
    with pytest.raises(AssertionError, match=r"\$\.pts"):
        assert_same(a, d)
