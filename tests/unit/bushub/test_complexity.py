"""``--bytes-per-container``: how many maps and lists a frame may hold for its size.

A frame of 2,000 empty lists in about 8 KB holds one container per four bytes: over
the default budget (64 + size/8), within one of 64 + size/2.
"""

import pytest

from tests.support.messages import encode, task_request
from tests.unit.bushub.conftest import running_hub, small_settings
from tests.unit.bushub.helpers import BRIEF, as_json, assert_silent, recv_bytes

DENSE = as_json(task_request("a", "b", seq=1, v=[[] for _ in range(2000)]))


@pytest.mark.parametrize(("bytes_per_container", "relayed"), [(None, False), (2, True)])
async def test_the_budget_follows_the_setting(
    bytes_per_container: int | None, relayed: bool
) -> None:
    overrides = {} if bytes_per_container is None else {"bytes_per_container": bytes_per_container}
    after = as_json(task_request("a", "b", seq=2))
    async with running_hub(small_settings(**overrides)) as node:
        async with node.connect("a") as a, node.connect("b") as b:
            await a.send(DENSE)
            await a.send(after)
            if relayed:
                assert await recv_bytes(b) == DENSE
            assert await recv_bytes(b) == after
            await assert_silent(b, BRIEF)
        assert node.metric("bushub_messages_dropped_total", reason="too_complex") == (
            0 if relayed else 1
        )


@pytest.mark.parametrize(
    "payload",
    [
        {"items": [{"i": n} for n in range(300)]},
        {"points": [[n, n + 1] for n in range(300)]},
        {"tools": [{"name": "f", "params": {"a": [1], "b": {}}} for _ in range(100)]},
    ],
    ids=["small-maps", "pairs", "nested-maps"],
)
async def test_a_message_has_the_same_budget_in_either_format(payload: dict[str, object]) -> None:
    """Counted by its own size, a MsgPack frame (about half the JSON's) got half the
    budget: these were relayed from JSON and dropped ``too_complex`` from MsgPack."""
    tree = task_request("a", "b", seq=1, **payload)
    async with running_hub(small_settings()) as node:
        for fmt in ("json", "msgpack"):
            frame = encode(tree, fmt)
            async with node.connect("a", format=fmt) as a, node.connect("b", format=fmt) as b:
                await a.send(frame)
                assert await recv_bytes(b) == frame, fmt
        assert node.metric("bushub_messages_dropped_total", reason="too_complex") == 0
