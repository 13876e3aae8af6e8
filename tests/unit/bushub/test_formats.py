"""Serializers on the wire (docs/protocol.md, Routing and Serializers): a declared
format is enforced, an undeclared one is learned from the first frame, and the hub
translates between a JSON and a MsgPack client but never re-encodes same-format
traffic."""

import json

import msgpack

from tests.support.messages import native_bytes, tagged_bytes, task_request
from tests.unit.bushub.conftest import RunningHub
from tests.unit.bushub.helpers import as_json, close_code, frame_message, recv_bytes, recv_msgpack

WS_1007_INVALID_DATA = 1007
_AUDIO = bytes(range(256)) * 5


async def test_declared_msgpack_with_json_first_frame_is_closed_1007(node: RunningHub) -> None:
    async with node.connect("a", format="msgpack") as a:
        await a.send(as_json(task_request("a", "b")))
        assert await close_code(a) == WS_1007_INVALID_DATA
        await node.wait_metric("bushub_connections_closed_total", 1, reason="format_mismatch")
        assert node.metric("bushub_messages_dropped_total", reason="format_mismatch") == 1
        # Nothing of the mismatched frame was relayed.
        assert node.metric("bushub_messages_delivered_total", format="json") == 0


async def test_undeclared_format_learns_msgpack_and_translates(node: RunningHub) -> None:
    json_tree = frame_message("j", _AUDIO)
    json_tree["__data__"]["target"] = "m"
    mp_tree = {
        "__type__": "pipecat_subagents.bus.messages.BusFrameMessage",
        "__data__": {"source": "m", "target": "j", "frame": {"audio": _AUDIO, "n": 1}},
    }
    async with node.connect("j") as j, node.connect("m") as m:
        # The MsgPack client's first frame is MsgPack; it is accepted and routed.
        await m.send(msgpack.packb(mp_tree, use_bin_type=True))
        assert json.loads(await recv_bytes(j)) == tagged_bytes(mp_tree)
        # From now on frames to the MsgPack client are MsgPack, bytes as bin.
        await j.send(as_json(json_tree))
        received = await recv_msgpack(m)
        assert received == native_bytes(json_tree)
        assert received["__data__"]["frame"]["__data__"]["audio"] == _AUDIO
        assert node.metric("bushub_messages_received_total", format="msgpack") == 1
        assert node.metric("bushub_messages_delivered_total", format="msgpack") == 1


async def test_msgpack_to_msgpack_relay_is_byte_identical(node: RunningHub) -> None:
    tree = {
        "__type__": "pipecat_subagents.bus.messages.BusTaskRequestMessage",
        "__data__": {"source": "a", "target": "b", "ratio": 0.5, "blob": b"\x00\xff" * 40},
    }
    # Single-precision floats: a re-encode would write them as doubles.
    frame = msgpack.packb(tree, use_bin_type=True, use_single_float=True)
    assert frame != msgpack.packb(msgpack.unpackb(frame), use_bin_type=True)
    async with node.connect("a", format="msgpack") as a, node.connect("b", format="msgpack") as b:
        await a.send(frame)
        assert await recv_bytes(b) == frame


async def test_json_to_json_relay_is_byte_identical_even_if_not_canonical(
    node: RunningHub,
) -> None:
    # Integers past 64 bits and out-of-range floats are valid to Python's json.
    frame = (
        b'{"__type__":"pipecat_subagents.bus.messages.BusTaskRequestMessage","__data__":{"source":"a",'
        b'"target":"b","big":123456789012345678901234567890,"f":1e400}}'
    )
    async with node.connect("a") as a, node.connect("b") as b:
        await a.send(frame)
        assert await recv_bytes(b) == frame
