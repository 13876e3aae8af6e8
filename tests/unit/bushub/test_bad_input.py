"""Bad frames on a live connection (docs/protocol.md, Routing step 1): each is dropped and
counted by reason, is never delivered, and the connection keeps working."""

import json

import pytest

from tests.support.messages import TASK_REQUEST, task_request
from tests.unit.bushub.conftest import RunningHub
from tests.unit.bushub.helpers import (
    BRIEF,
    as_json,
    assert_silent,
    recv_bytes,
    registry_from_client,
)

# The harness allows 64 KiB messages and 128 KiB WebSocket frames: this frame is
# over the hub's limit but under the transport's, so the hub itself must drop it.
_OVERSIZE = as_json(task_request("a", "b", seq=99, pad=80 << 10))

BAD_FRAMES = {
    "oversize": _OVERSIZE,
    "malformed": b"\x00\x01\x02 not a bus message",
    "malformed_json": b'{"__type__": "x.Y", "__data__": {"source": "a", "target": "b"',
    "not_a_message": json.dumps([task_request("a", "b", seq=99)]).encode(),
    "bad_source": json.dumps({"__type__": TASK_REQUEST, "__data__": {"target": "b"}}).encode(),
    "registry": as_json(registry_from_client("a", "b", "a")),
    # 20 KB holding 5,000 empty lists: more maps and lists than its size allows.
    "too_complex": as_json(task_request("a", "b", seq=99, v=[[] for _ in range(5000)])),
    # Valid JSON nested 300 deep: too complex too, not malformed.
    "too_deep": as_json(task_request("a", "b", seq=99, v=json.loads("[" * 300 + "]" * 300))),
}
EXPECTED_REASON = {"malformed_json": "malformed", "too_deep": "too_complex"}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
async def test_bad_frame_is_dropped_and_connection_keeps_working(
    node: RunningHub, case: str
) -> None:
    reason = EXPECTED_REASON.get(case, case)
    before = as_json(task_request("a", "b", seq=1))
    after = as_json(task_request("a", "b", seq=2))
    async with node.connect("a") as a, node.connect("b") as b:
        await a.send(before)
        assert await recv_bytes(b) == before
        await a.send(BAD_FRAMES[case])
        await node.wait_metric("bushub_messages_dropped_total", 1, reason=reason)
        await a.send(after)
        # Delivery is in order, so a relayed bad frame would arrive first.
        assert await recv_bytes(b) == after
        await assert_silent(b, BRIEF)
        assert node.metric_sum("bushub_messages_dropped_total") == 1
        assert node.metric("bushub_connections") == 2


async def test_garbage_first_frame_is_malformed_and_connection_keeps_working(
    node: RunningHub,
) -> None:
    valid = as_json(task_request("a", "b"))
    async with node.connect("a") as a, node.connect("b") as b:
        await a.send(b"\xc1 garbage before anything valid")
        await node.wait_metric("bushub_messages_dropped_total", 1, reason="malformed")
        await a.send(valid)
        assert await recv_bytes(b) == valid


async def test_registry_message_from_a_client_is_never_delivered(node: RunningHub) -> None:
    # The peer itself would accept a registry message with any target.
    registry = as_json(registry_from_client("a", "b", "a"))
    async with node.connect("b", dialect="subagents") as b, node.connect("a", peer="b") as a:
        await a.send(registry)
        await a.send(as_json(task_request("a", "b")))
        data = json.loads(await recv_bytes(b))
        assert data["__type__"] == TASK_REQUEST
        await assert_silent(b, BRIEF)
    assert node.metric("bushub_messages_dropped_total", reason="registry") == 1
