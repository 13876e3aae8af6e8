"""Values JSON carries and MsgPack cannot: refused loudly, never altered.

Python's json writes integers of any size and lone surrogates (as ``\\udXXX``
escapes); MsgPack holds integers in [-2**63, 2**64) and UTF-8 strings only. For such
a value the MsgPack serializer, and the hub translating JSON to MsgPack, must raise
rather than deliver a message that differs from what JSON would give.
"""

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buswire import DecodeError, Format, translate
from tests.unit.busclient.catalog import (
    PIPECAT,
    PROPERTY_SETTINGS,
    SUBAGENTS,
    Dialect,
    Raised,
    assert_same,
    case_id,
    outcome,
)

ANY_INT = st.integers() | st.integers(min_value=2**64) | st.integers(max_value=-(2**63) - 1)
ANY_TEXT = st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(), max_size=8
)
EDGE_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), ANY_INT, st.floats(allow_nan=False), ANY_TEXT),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)
REFUSALS = (OverflowError, ValueError)  # UnicodeEncodeError is a ValueError


def task_request(dialect: Dialect, payload: dict[str, Any]) -> Any:
    if dialect is SUBAGENTS:
        from pipecat_subagents.bus.messages import BusTaskRequestMessage

        return BusTaskRequestMessage(source="voice", target="worker", task_id="t", payload=payload)
    from pipecat.bus.messages import BusJobRequestMessage

    return BusJobRequestMessage(source="voice", target="worker", job_id="j", payload=payload)


@pytest.mark.parametrize("dialect", [SUBAGENTS, PIPECAT], ids=case_id)
@PROPERTY_SETTINGS
@given(payload=st.dictionaries(ANY_TEXT, EDGE_VALUES, max_size=4))
def test_msgpack_refuses_what_it_cannot_hold(dialect: Dialect, payload: dict[str, Any]) -> None:
    message = task_request(dialect, payload)
    json_bytes = dialect.json.serialize(message)
    json_rt = dialect.json.deserialize(json_bytes)

    packed = outcome(dialect.msgpack.serialize, message)
    if isinstance(packed, Raised):
        assert issubclass(packed.type, REFUSALS), packed
    else:
        assert_same(dialect.msgpack.deserialize(packed), json_rt)

    relayed = outcome(translate, json_bytes, Format.JSON, Format.MSGPACK)
    if isinstance(relayed, Raised):
        assert relayed.type is DecodeError
        assert isinstance(packed, Raised), "the hub refused what the client could encode"
    else:
        assert_same(dialect.msgpack.deserialize(relayed), json_rt)


@pytest.mark.parametrize("dialect", [SUBAGENTS, PIPECAT], ids=case_id)
@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30, "\ud800", "a\udfffb"])
def test_examples_json_carries_and_msgpack_refuses(dialect: Dialect, value: Any) -> None:
    message = task_request(dialect, {"v": value})
    json_bytes = dialect.json.serialize(message)
    assert dialect.json.deserialize(json_bytes).payload == {"v": value}
    with pytest.raises(REFUSALS):
        dialect.msgpack.serialize(message)
    with pytest.raises(DecodeError) as refused:
        translate(json_bytes, Format.JSON, Format.MSGPACK)
    assert refused.value.reason == "malformed"


@pytest.mark.parametrize("dialect", [SUBAGENTS, PIPECAT], ids=case_id)
@pytest.mark.parametrize("value", [2**64 - 1, -(2**63), 2**63, "\U0001f600", "\u2603"])
def test_the_edges_of_what_msgpack_holds(dialect: Dialect, value: Any) -> None:
    message = task_request(dialect, {"v": value})
    json_rt = dialect.json.deserialize(dialect.json.serialize(message))
    msgpack_rt = dialect.msgpack.deserialize(dialect.msgpack.serialize(message))
    assert msgpack_rt.payload == {"v": value}
    assert_same(json_rt, msgpack_rt)
