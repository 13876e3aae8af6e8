"""Map keys inside adapter output are strings in MsgPack, as json.dumps makes them.

The libraries' ``ToolsSchema`` adapters put the tool definitions into the tree as they
are (``FunctionSchema.to_default_dict()``, pipecat's ``custom_tools``), without calling
back into ``_serialize_value``. JSON stringifies any int/float/bool/None key there when
it encodes; the MsgPack serializer must too, or it writes integer map keys that its own
decoder and the hub (``strict_map_key``) refuse, while the same message works in JSON.
"""

from typing import Any

import pytest
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import AdapterType, ToolsSchema
from pipecat.frames.frames import LLMContextFrame, LLMSetToolsFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection

from buswire import Format, decode_envelope, translate
from tests.unit.busclient.catalog import (
    PIPECAT,
    SUBAGENTS,
    Dialect,
    assert_same,
    case_id,
    outcome,
)

# A JSON-schema extension keyed by the enum's integer values: legal in Python, and
# json.dumps writes the keys as "1" and "2".
LEVEL = {"type": "integer", "enum": [1, 2], "x-labels": {1: "low", 2: "high"}}


def tools_schemas(dialect: Dialect) -> list[ToolsSchema]:
    schemas = [
        ToolsSchema(
            standard_tools=[
                FunctionSchema(
                    name="set_level", description="", properties={"level": LEVEL}, required=[]
                )
            ]
        )
    ]
    if dialect is PIPECAT:  # only pipecat core's adapter carries provider-native tools
        schemas.append(
            ToolsSchema(
                standard_tools=[],
                custom_tools={AdapterType.GEMINI: [{"function_declarations": [{0: "x"}]}]},
            )
        )
    return schemas


def frame_messages(dialect: Dialect) -> list[Any]:
    frame_message = next(c for c in dialect.message_types() if c.__name__ == "BusFrameMessage")
    found = []
    for tools in tools_schemas(dialect):
        for frame in [
            LLMSetToolsFrame(tools=tools),
            LLMContextFrame(
                context=LLMContext(messages=[{"role": "user", "content": "hi"}], tools=tools),
                speculation=False,
            ),
        ]:
            found.append(
                frame_message(source="voice", frame=frame, direction=FrameDirection.DOWNSTREAM)
            )
    return found


@pytest.mark.parametrize("dialect", [SUBAGENTS, PIPECAT], ids=case_id)
def test_non_string_keys_in_tool_definitions_round_trip_like_json(dialect: Dialect) -> None:
    for message in frame_messages(dialect):
        json_rt = outcome(dialect.json.deserialize, dialect.json.serialize(message))
        msgpack_bytes = dialect.msgpack.serialize(message)
        msgpack_rt = outcome(dialect.msgpack.deserialize, msgpack_bytes)
        assert_same(json_rt, msgpack_rt)


@pytest.mark.parametrize("dialect", [SUBAGENTS, PIPECAT], ids=case_id)
def test_the_hub_routes_and_relays_tool_definitions_with_non_string_keys(
    dialect: Dialect,
) -> None:
    for message in frame_messages(dialect):
        json_bytes = dialect.json.serialize(message)
        msgpack_bytes = dialect.msgpack.serialize(message)
        assert decode_envelope(msgpack_bytes, Format.MSGPACK) == decode_envelope(
            json_bytes, Format.JSON
        )
        assert translate(json_bytes, Format.JSON, Format.MSGPACK) == msgpack_bytes
