"""The hub's relay between a JSON and a MsgPack connection loses nothing.

A message a MsgPack client sends, translated by the hub for a JSON client, must decode
with the library's JSON serializer to what the MsgPack serializer decodes from the
original bytes, and the other way round. Translating the JSON encoding of a message
must also give exactly the bytes the MsgPack serializer writes for it, so a relayed
frame is indistinguishable from one the MsgPack client would have sent itself.
"""

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pipecat.processors.frame_processor import FrameDirection

from buswire import Format, decode_envelope, translate
from tests.unit.busclient.catalog import (
    FRAME_TYPES,
    NAMES,
    PIPECAT,
    PROPERTY_SETTINGS,
    SUBAGENTS,
    Dialect,
    all_message_types,
    assert_same,
    case_id,
    frames_of,
    messages,
    outcome,
)

ALL_TYPES = all_message_types()


def check_translation(dialect: Dialect, message: Any) -> None:
    """Both directions of the relay, and the envelope the hub routes by."""
    json_bytes = dialect.json.serialize(message)
    msgpack_bytes = dialect.msgpack.serialize(message)

    # A MsgPack client's message, relayed to a JSON client.
    to_json = translate(msgpack_bytes, Format.MSGPACK, Format.JSON)
    assert_same(
        outcome(dialect.json.deserialize, to_json),
        outcome(dialect.msgpack.deserialize, msgpack_bytes),
    )
    # A JSON client's message, relayed to a MsgPack client.
    to_msgpack = translate(json_bytes, Format.JSON, Format.MSGPACK)
    assert_same(
        outcome(dialect.msgpack.deserialize, to_msgpack),
        outcome(dialect.json.deserialize, json_bytes),
    )
    assert to_msgpack == msgpack_bytes
    assert translate(to_json, Format.JSON, Format.MSGPACK) == msgpack_bytes

    # Same format is relayed untouched.
    assert translate(json_bytes, Format.JSON, Format.JSON) is json_bytes
    assert translate(msgpack_bytes, Format.MSGPACK, Format.MSGPACK) is msgpack_bytes

    # The hub routes every encoding of a message the same way (or refuses it alike).
    envelope = outcome(decode_envelope, json_bytes, Format.JSON)
    assert outcome(decode_envelope, msgpack_bytes, Format.MSGPACK) == envelope
    assert outcome(decode_envelope, to_json, Format.JSON) == envelope
    assert outcome(decode_envelope, to_msgpack, Format.MSGPACK) == envelope


@pytest.mark.parametrize(("dialect", "cls"), ALL_TYPES, ids=case_id)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_translation_decodes_like_the_other_format(
    dialect: Dialect, cls: type, data: st.DataObject
) -> None:
    check_translation(dialect, data.draw(messages(cls), label="message"))


@pytest.mark.parametrize("frame_type", FRAME_TYPES, ids=case_id)
@pytest.mark.parametrize("dialect", [SUBAGENTS, PIPECAT], ids=case_id)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_frame_translation_decodes_like_the_other_format(
    dialect: Dialect, frame_type: type, data: st.DataObject
) -> None:
    frame_message = next(c for c in dialect.message_types() if c.__name__ == "BusFrameMessage")
    message = frame_message(
        source=data.draw(NAMES, label="source"),
        frame=data.draw(frames_of((frame_type,)), label="frame"),
        direction=data.draw(st.sampled_from(FrameDirection), label="direction"),
    )
    check_translation(dialect, message)
