"""A reader pauses while the publish buffer is past its high-water mark and the broker
is up (a slow broker, not an absent one): the sender meets TCP backpressure and nothing
is dropped, where reading on would overflow the buffer and count drops."""

import asyncio
import json
from collections.abc import Sequence

from websockets.asyncio.client import ClientConnection

from bushub.broker import MemoryBroker
from tests.support.messages import task_request
from tests.unit.bushub.conftest import running_hub, small_settings
from tests.unit.bushub.helpers import TIMEOUT, as_json, recv_bytes

PUBLISH_BUFFER = 64  # high-water mark: 32
SENT = 400


class SlowBroker(MemoryBroker):
    """The in-process broker, whose publishes wait until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        await self.gate.wait()
        return await super().publish_many(items)


async def test_reader_waits_for_room_in_the_publish_buffer_and_drops_nothing() -> None:
    broker = SlowBroker()
    settings = small_settings(publish_buffer=PUBLISH_BUFFER, rate_messages=0, rate_bytes=0)
    async with (
        running_hub(settings, broker) as node,
        node.connect("b") as b,
        node.connect("a") as a,
    ):
        await node.wait_metric("bushub_connections", 2)
        broker.gate.clear()
        frames = [as_json(task_request("a", "b", seq=i)) for i in range(SENT)]
        # The client's writes back up once the hub stops reading: send from a task.
        sending = asyncio.create_task(_send_all(a, frames))
        await asyncio.sleep(0.5)
        held = node.hub.publisher.pending
        # Publishes filled the buffer up to its high-water mark (the reader was held
        # there), and no further: the bound was never reached.
        assert held == PUBLISH_BUFFER // 2, held
        broker.gate.set()
        await asyncio.wait_for(sending, TIMEOUT)
        got = [json.loads(await recv_bytes(b)) for _ in range(SENT)]
        assert [m["__data__"]["payload"]["seq"] for m in got] == list(range(SENT))
        assert node.metric("bushub_messages_dropped_total", reason="publish_buffer_full") == 0


async def _send_all(ws: ClientConnection, frames: list[bytes]) -> None:
    for frame in frames:
        await ws.send(frame)
