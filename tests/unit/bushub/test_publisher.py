"""The node's ordered publisher against a fake in-memory broker: order across
batches, a bounded buffer that drops the oldest with a count, and messages held
and retried in order while the broker fails."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import cast

from bushub.broker import Broker
from bushub.publisher import Publisher
from tests.unit.bushub.helpers import TIMEOUT, wait_until


class FakeBroker:
    """Records every batch; can fail, be down, or stall a publish until opened."""

    def __init__(self) -> None:
        self.up = True
        self.batches: list[list[tuple[str, bytes]]] = []
        self.failed: list[list[tuple[str, bytes]]] = []
        self.failures = 0
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        batch = list(items)
        self.calls += 1
        await self.gate.wait()
        if self.failures > 0:
            self.failures -= 1
            self.failed.append(batch)
            raise ConnectionError("broker unreachable")
        self.batches.append(batch)
        return [len(data) % 3 for _, data in batch]

    @property
    def published(self) -> list[tuple[str, bytes]]:
        return [item for batch in self.batches for item in batch]


class Recorder:
    """The publisher's callbacks, recorded."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, int]] = []
        self.dropped: list[tuple[str, int]] = []

    def on_published(self, channel: str, receivers: int) -> None:
        self.delivered.append((channel, receivers))

    def on_dropped(self, reason: str, count: int) -> None:
        self.dropped.append((reason, count))


def make_publisher(broker: FakeBroker, calls: Recorder, capacity: int) -> Publisher:
    return Publisher(cast(Broker, broker), capacity, calls.on_published, calls.on_dropped)


def items(count: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [
        (f"bushub:msg:{{a{i % 7}}}", b"m" * (i % 11) + str(i).encode())
        for i in range(start, start + count)
    ]


@asynccontextmanager
async def running(publisher: Publisher) -> AsyncIterator[None]:
    task = asyncio.create_task(publisher.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_order_is_preserved_across_batches() -> None:
    broker, calls = FakeBroker(), Recorder()
    publisher = make_publisher(broker, calls, 10_000)
    first, second = items(1300), items(700, start=1300)
    for channel, data in first:
        publisher.publish(channel, data)
    async with running(publisher):
        # More arrive while batches are going out.
        for n, (channel, data) in enumerate(second):
            publisher.publish(channel, data)
            if n % 50 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert len(broker.batches) >= 3  # more than one pipeline's worth
    assert broker.published == first + second
    assert calls.delivered == [(c, len(d) % 3) for c, d in first + second]
    assert calls.dropped == []
    assert publisher.pending == 0


async def test_overflow_drops_the_oldest_and_counts_them() -> None:
    broker, calls = FakeBroker(), Recorder()
    publisher = make_publisher(broker, calls, 3)
    sent = items(5)
    for channel, data in sent:
        publisher.publish(channel, data)
    assert calls.dropped == [("publish_buffer_full", 1)] * 2
    assert publisher.pending == 3
    async with running(publisher):
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert broker.published == sent[2:]


async def test_connection_error_holds_messages_and_retries_them_in_order() -> None:
    broker, calls = FakeBroker(), Recorder()
    broker.failures = 3
    broker.gate.clear()
    publisher = make_publisher(broker, calls, 100)
    before, during = items(5), items(3, start=5)
    for channel, data in before:
        publisher.publish(channel, data)
    async with running(publisher):
        await wait_until(lambda: broker.calls == 1, "the first publish")
        # These arrive while the first batch is in the broker's hands and fails.
        for channel, data in during:
            publisher.publish(channel, data)
        broker.gate.set()
        await wait_until(lambda: bool(broker.failed), "a failed publish")
        # Held, not dropped, while the broker fails.
        assert publisher.pending == 8
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert len(broker.failed) == 3
    # Every retry starts again from the oldest message, in order.
    assert broker.failed[0] == before
    assert all(batch == before + during for batch in broker.failed[1:])
    assert broker.published == before + during
    assert calls.delivered == [(c, len(d) % 3) for c, d in before + during]
    assert calls.dropped == []


async def test_nothing_is_published_while_the_broker_is_down() -> None:
    broker, calls = FakeBroker(), Recorder()
    broker.up = False
    publisher = make_publisher(broker, calls, 100)
    sent = items(4)
    async with running(publisher):
        for channel, data in sent:
            publisher.publish(channel, data)
        await asyncio.sleep(TIMEOUT / 10)
        assert broker.batches == [] and broker.failed == []
        assert publisher.pending == 4
        broker.up = True
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert broker.published == sent


async def test_flushed_waits_for_the_broker_and_close_counts_what_is_left() -> None:
    broker, calls = FakeBroker(), Recorder()
    broker.gate.clear()
    publisher = make_publisher(broker, calls, 100)
    for channel, data in items(3):
        publisher.publish(channel, data)
    async with running(publisher):
        flushed = asyncio.create_task(publisher.flushed())
        await asyncio.sleep(TIMEOUT / 20)
        assert not flushed.done()  # the batch is still in the broker's hands
        flushed.cancel()
    publisher.close()
    assert calls.dropped == [("shutdown", 3)]
    assert publisher.pending == 0
