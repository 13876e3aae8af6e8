"""The node's ordered publisher against a fake in-memory broker: order across
batches, a bounded buffer that drops the oldest with a count, and messages held
and retried in order while the broker fails; with a fast path, order across both
paths, lost and refused fast-path messages retried ahead of newer ones."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import cast

import hiredis

from bushub.broker import Broker
from bushub.broker.base import PartialPublish, PublishDone
from bushub.brokerhealth import BrokerHealth
from bushub.metrics import Metrics
from bushub.publisher import HIGH_WATER_BYTES, QUEUE_BYTES, Publisher
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

    def publish_nowait(self, channel: str, data: bytes, done: object) -> bool:
        return False  # the queued path only, as MemoryBroker and Redis Cluster

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
        self.key_refused: list[tuple[str, bytes, str]] = []

    def on_published(self, channel: str, data: bytes, receivers: int) -> None:
        self.delivered.append((channel, receivers))

    def on_dropped(self, reason: str, count: int) -> None:
        self.dropped.append((reason, count))

    def on_key_refused(self, channel: str, data: bytes, error: object) -> None:
        self.key_refused.append((channel, data, str(error)))


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


class FastBroker(FakeBroker):
    """Also has a fast path; the test answers what it took (or fails it), in order.

    ``wire`` is what reached the broker in order, by either path, retries included.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fast_open = True
        self.taken: list[tuple[str, bytes, PublishDone]] = []
        self.wire: list[tuple[str, bytes]] = []

    def publish_nowait(self, channel: str, data: bytes, done: object) -> bool:
        if not self.fast_open:
            return False
        self.taken.append((channel, data, cast(PublishDone, done)))
        self.wire.append((channel, data))
        return True

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        self.wire.extend(items)
        return await super().publish_many(items)

    def answer(self, count: int | None = None, refuse: int | None = None) -> None:
        """Reply to the oldest ``count`` taken (all by default); None for ``refuse``."""
        count = len(self.taken) if count is None else count
        answered, self.taken = self.taken[:count], self.taken[count:]
        for n, (_, data, done) in enumerate(answered):
            done(None if n == refuse else len(data) % 3)

    def lose(self) -> None:
        """The connection fails: every unanswered one is reported not known out."""
        self.fast_open = False
        lost, self.taken = self.taken, []
        for _, _, done in lost:
            done(None)


def fast_publisher(broker: FastBroker, calls: Recorder, capacity: int = 100) -> Publisher:
    return Publisher(cast(Broker, broker), capacity, calls.on_published, calls.on_dropped)


def expected(sent: list[tuple[str, bytes]]) -> list[tuple[str, int]]:
    return [(c, len(d) % 3) for c, d in sent]


async def test_fast_path_takes_steady_traffic_and_flushed_waits_for_replies() -> None:
    broker, calls = FastBroker(), Recorder()
    publisher = fast_publisher(broker, calls)
    sent = items(20)
    async with running(publisher):
        for channel, data in sent:
            publisher.publish(channel, data)
        assert broker.calls == 0 and len(broker.taken) == 20
        assert publisher.pending == 20
        flushed = asyncio.create_task(publisher.flushed())
        await asyncio.sleep(TIMEOUT / 20)
        assert not flushed.done()  # taken is not acknowledged
        broker.answer(5)
        assert calls.delivered == expected(sent[:5]) and publisher.pending == 15
        broker.answer()
        await asyncio.wait_for(flushed, TIMEOUT)
    assert calls.delivered == expected(sent)
    assert broker.calls == 0 and calls.dropped == []


async def test_once_anything_is_queued_new_messages_queue_until_the_fast_path_settles() -> None:
    broker, calls = FastBroker(), Recorder()
    publisher = fast_publisher(broker, calls)
    first, second, third = items(3), items(3, start=3), items(3, start=6)
    async with running(publisher):
        for channel, data in first:
            publisher.publish(channel, data)
        broker.fast_open = False  # e.g. the connection is retiring
        for channel, data in second:
            publisher.publish(channel, data)
        broker.fast_open = True
        publisher.publish(*third[0])  # the queue is not empty: queued too
        await asyncio.sleep(TIMEOUT / 20)
        # The queue waits for the replies of the fast-path messages ahead of it.
        assert broker.calls == 0 and publisher.pending == 7
        broker.answer()
        await wait_until(lambda: broker.calls == 1, "the queued batch")
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
        # Queue empty and nothing unacknowledged: the fast path again.
        for channel, data in third[1:]:
            publisher.publish(channel, data)
        assert broker.calls == 1 and len(broker.taken) == 2
        broker.answer()
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert broker.batches == [second + third[:1]]
    assert broker.wire == first + second + third
    assert calls.delivered == expected(first + second + third)


async def test_a_lost_connection_puts_its_unacknowledged_back_at_the_head_in_order() -> None:
    broker, calls = FastBroker(), Recorder()
    publisher = fast_publisher(broker, calls)
    sent = items(6)
    async with running(publisher):
        for channel, data in sent[:4]:
            publisher.publish(channel, data)
        broker.answer(1)
        broker.fast_open = False
        for channel, data in sent[4:]:
            publisher.publish(channel, data)  # queued behind the three unanswered
        broker.lose()
        assert publisher.pending == 5
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    # Retried in one batch, the lost ones first, in their order.
    assert broker.batches == [sent[1:]]
    assert calls.delivered == expected(sent)
    assert calls.dropped == []


async def test_a_refused_fast_path_message_is_retried_before_anything_newer() -> None:
    broker, calls = FastBroker(), Recorder()
    publisher = fast_publisher(broker, calls)
    sent = items(5)
    async with running(publisher):
        for channel, data in sent[:3]:
            publisher.publish(channel, data)
        broker.answer(2, refuse=1)  # sent[1] refused, sent[2] still unanswered
        publisher.publish(*sent[3])  # not overtaking the refused one: queued
        assert len(broker.taken) == 1
        broker.answer()
        publisher.publish(*sent[4])
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert broker.batches == [[sent[1], sent[3], sent[4]]]
    assert calls.delivered == expected([sent[0], sent[2], sent[1], sent[3], sent[4]])


async def test_no_fast_path_while_held_or_down_and_unacknowledged_count_toward_the_bound() -> None:
    broker, calls = FastBroker(), Recorder()
    publisher = fast_publisher(broker, calls, capacity=4)
    publisher.hold(TIMEOUT / 10)
    publisher.publish(*items(1)[0])
    assert broker.taken == [] and publisher.pending == 1
    async with running(publisher):
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
        broker.up = False
        publisher.publish(*items(1, start=1)[0])
        assert broker.taken == []
        broker.up = True
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
        assert broker.calls == 2
        sent = items(5, start=2)
        for channel, data in sent:
            publisher.publish(channel, data)
        # Four unacknowledged fill the buffer: the fifth is dropped, as when queued.
        assert len(broker.taken) == 4 and calls.dropped == [("publish_buffer_full", 1)]
        assert publisher.crowded
        broker.answer()
        assert not publisher.crowded
    publisher.publish(*items(1, start=9)[0])
    publisher.close()
    assert calls.dropped == [("publish_buffer_full", 1), ("shutdown", 1)]
    broker.answer()  # a late reply after close is ignored
    assert publisher.pending == 0


# ---- error replies ------------------------------------------------------------------

NOPERM = "NOPERM this user has no permissions to run the 'publish' command"


def reply_error(text: str) -> Exception:
    """An error reply as the raw publish connection hands it over."""
    reader = hiredis.Reader(replyError=hiredis.ReplyError)
    reader.feed(b"-" + text.encode() + b"\r\n")
    error = reader.gets()
    assert isinstance(error, hiredis.ReplyError)
    return error


def watched_publisher(
    broker: FakeBroker, calls: Recorder, capacity: int = 100
) -> tuple[Publisher, BrokerHealth, Metrics]:
    metrics = Metrics()
    health = BrokerHealth(metrics.redis_errors)
    publisher = Publisher(
        cast(Broker, broker),
        capacity,
        calls.on_published,
        calls.on_dropped,
        health=health,
        on_key_refused=calls.on_key_refused,
    )
    return publisher, health, metrics


def errors_counted(metrics: Metrics, kind: str) -> float:
    value = metrics.registry.get_sample_value(
        "bushub_redis_errors_total", {"op": "publish", "kind": kind}
    )
    return value or 0.0


async def test_a_fast_path_message_refused_for_good_is_dropped_and_nothing_waits_on_it() -> None:
    broker, calls = FastBroker(), Recorder()
    publisher, health, metrics = watched_publisher(broker, calls)
    sent = items(4)
    async with running(publisher):
        for channel, data in sent[:2]:
            publisher.publish(channel, data)
        refused = broker.taken.pop(0)
        refused[2](reply_error(NOPERM))
        # Dropped and counted at once; readiness down, saying why.
        assert calls.dropped == [("broker_refused", 1)]
        assert errors_counted(metrics, "noperm") == 1
        assert health.problem is not None and NOPERM in health.problem
        broker.answer()
        # Not handed back: later messages still take the fast path, nothing queues.
        for channel, data in sent[2:]:
            publisher.publish(channel, data)
        assert publisher.pending == 2 and len(broker.taken) == 2
        broker.answer()
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert broker.calls == 0
    assert calls.delivered == expected([sent[1], *sent[2:]])
    # A publish went through after the refusal: the node is ready again.
    assert health.problem is None


WRONGTYPE = (
    "WRONGTYPE Operation against a key holding the wrong kind of value "
    "script: 0afd6381b7bc7e087629b058a114888865e2f312, on @user_script:1."
)


def publish_all(publisher: Publisher, sent: list[tuple[str, bytes]]) -> None:
    for channel, data in sent:
        publisher.publish(channel, data)


async def test_a_fast_path_message_refused_for_its_keys_costs_only_itself() -> None:
    # A key of one target's written by hand with another type: that message is handed
    # over as refused for its keys, counted, and readiness stays.
    broker, calls = FastBroker(), Recorder()
    publisher, health, metrics = watched_publisher(broker, calls)
    sent = items(3)
    async with running(publisher):
        publish_all(publisher, sent)
        broker.answer(1)
        refused = broker.taken.pop(0)  # replies come in order: the second's
        refused[2](reply_error(WRONGTYPE))
        broker.answer()
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert calls.key_refused == [(sent[1][0], sent[1][1], WRONGTYPE)]
    assert calls.dropped == []
    assert errors_counted(metrics, "wrongtype") == 1
    assert health.problem is None
    assert broker.calls == 0  # not sent again
    assert calls.delivered == expected([sent[0], sent[2]])


async def test_a_batch_message_refused_for_its_keys_costs_only_itself() -> None:
    sent = [(f"c:{i}", b"m%d" % i) for i in range(4)]
    broker = RefusingBroker({"c:2": [WRONGTYPE]})
    calls = Recorder()
    publisher, health, metrics = watched_publisher(broker, calls)
    publish_all(publisher, sent)
    async with running(publisher):
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert calls.key_refused == [("c:2", b"m2", WRONGTYPE)]
    assert calls.dropped == []
    assert broker.published == [sent[0], sent[1], sent[3]]
    assert broker.calls == 1
    assert errors_counted(metrics, "wrongtype") == 1
    assert health.problem is None


async def test_without_a_handler_a_key_refusal_is_counted_dropped_and_readiness_stays() -> None:
    sent = [(f"c:{i}", b"m%d" % i) for i in range(2)]
    broker = RefusingBroker({"c:0": [WRONGTYPE]})
    calls = Recorder()
    metrics = Metrics()
    health = BrokerHealth(metrics.redis_errors)
    publisher = Publisher(
        cast(Broker, broker), 10, calls.on_published, calls.on_dropped, health=health
    )
    publish_all(publisher, sent)
    async with running(publisher):
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert calls.dropped == [("broker_refused", 1)]
    assert health.problem is None


async def test_a_retryable_fast_path_refusal_is_retried_in_order_and_not_dropped() -> None:
    broker, calls = FastBroker(), Recorder()
    publisher, health, metrics = watched_publisher(broker, calls)
    sent = items(3)
    async with running(publisher):
        publish_all(publisher, sent)
        first = broker.taken.pop(0)
        first[2](reply_error("TRYAGAIN Multiple keys request during rehashing of slot"))
        broker.answer()
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert broker.batches == [[sent[0]]]
    assert calls.dropped == []
    assert errors_counted(metrics, "tryagain") == 1
    assert health.problem is None


class RefusingBroker(FakeBroker):
    """Refuses chosen channels with chosen replies, message by message, as Redis
    answers each command of a batch on its own."""

    def __init__(self, refusals: dict[str, list[str]]) -> None:
        super().__init__()
        self.refusals = refusals  # channel -> replies to give, one per attempt

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        batch = list(items)
        self.calls += 1
        counts: list[int | None] = []
        errors: list[object | None] = []
        for channel, data in batch:
            replies = self.refusals.get(channel)
            if replies:
                counts.append(None)
                errors.append(reply_error(replies.pop(0)))
            else:
                counts.append(len(data) % 3)
                errors.append(None)
                self.batches.append([(channel, data)])
        if any(c is None for c in counts):
            raise PartialPublish(counts, "refused", errors)
        return [c for c in counts if c is not None]


async def test_a_batch_drops_what_cannot_succeed_and_retries_only_the_rest() -> None:
    sent = [(f"c:{i}", b"m%d" % i) for i in range(6)]
    broker = RefusingBroker(
        {
            "c:1": [NOPERM],
            "c:2": ["OOM command not allowed when used memory > 'maxmemory'."],
            "c:4": ["MOVED 3999 127.0.0.1:6381"],
        }
    )
    calls = Recorder()
    publisher, health, metrics = watched_publisher(broker, calls)
    for channel, data in sent:
        publisher.publish(channel, data)
    async with running(publisher):
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    # Two given up on, counted; the MOVED one retried and out, after the first batch.
    assert sorted(calls.dropped) == [("broker_refused", 1), ("broker_refused", 1)]
    assert broker.published == [sent[0], sent[3], sent[5], sent[4]]
    assert broker.calls == 2
    assert errors_counted(metrics, "noperm") == 1
    assert errors_counted(metrics, "oom") == 1
    assert errors_counted(metrics, "redirect") == 1
    # The retried batch went through: readiness is back.
    assert health.problem is None


async def test_a_queue_refused_for_good_keeps_flowing_and_counts_every_drop() -> None:
    # Every publish refused (an ACL without publish): the queue must not stall.
    sent = items(1500)
    broker = RefusingBroker({channel: [NOPERM] * 1500 for channel, _ in sent})
    calls = Recorder()
    publisher, health, metrics = watched_publisher(broker, calls, capacity=2000)
    for channel, data in sent:
        publisher.publish(channel, data)
    async with running(publisher):
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
        assert publisher.pending == 0 and not publisher.crowded
    assert sum(n for reason, n in calls.dropped if reason == "broker_refused") == 1500
    assert errors_counted(metrics, "noperm") == 1500
    assert broker.published == []
    assert health.problem is not None and "publish" in health.problem


def parked_publisher(broker: FakeBroker, calls: Recorder, settle: float) -> Publisher:
    return Publisher(
        cast(Broker, broker),
        100,
        calls.on_published,
        calls.on_dropped,
        settle=settle,
        health=BrokerHealth(Metrics().redis_errors),
    )


MIGRATING = "ASK 3999 127.0.0.1:6381"


async def test_a_channel_refused_retryably_waits_and_the_others_go_on() -> None:
    # One slot stuck mid-migration (ASK on every try): only its agent's messages wait;
    # a hold of the whole queue kept every other agent's waiting the settle each round.
    stuck, free = "bushub:msg:{stuck}", "bushub:msg:{free}"
    broker = RefusingBroker({stuck: [MIGRATING] * 1000})
    calls = Recorder()
    publisher = parked_publisher(broker, calls, settle=60.0)
    first = [(stuck, b"s0"), (free, b"f0"), (stuck, b"s1"), (free, b"f1")]
    async with running(publisher):
        publish_all(publisher, first)
        await wait_until(lambda: broker.published == [first[1], first[3]], "the free ones")
        later = [(free, b"f2"), (stuck, b"s2"), (free, b"f3")]
        publish_all(publisher, later)
        # Out well within the stuck channel's 60 s wait.
        await wait_until(lambda: len(broker.published) == 4, "the later free ones")
        assert broker.published == [first[1], first[3], later[0], later[2]]
        assert publisher.pending == 3  # s0, s1, s2, waiting their turn
        assert broker.calls == 2  # the stuck ones were not sent again meanwhile
    publisher.close()
    assert calls.dropped == [("shutdown", 3)]


class MigratingBroker(RefusingBroker):
    """Refuses every message of one channel in each of its first calls that hold
    any (a slot mid-migration refuses all of its commands alike)."""

    def __init__(self, channel: str, replies: list[str]) -> None:
        super().__init__({})
        self.channel = channel
        self.replies = replies

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        count = sum(1 for channel, _ in items if channel == self.channel)
        if count and self.replies:
            self.refusals[self.channel] = [self.replies.pop(0)] * count
        return await super().publish_many(items)


async def test_a_parked_channel_goes_again_in_order_once_its_wait_is_over() -> None:
    stuck, free = "bushub:msg:{stuck}", "bushub:msg:{free}"
    broker = MigratingBroker(stuck, [MIGRATING, MIGRATING, "MOVED 3999 127.0.0.1:6381"])
    calls = Recorder()
    publisher = parked_publisher(broker, calls, settle=0.05)
    sent = [(stuck if i % 3 else free, b"m%d" % i) for i in range(12)]
    async with running(publisher):
        for n, item in enumerate(sent):
            publisher.publish(*item)
            if n % 4 == 3:
                await asyncio.sleep(0.03)
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert calls.dropped == []
    for channel in (stuck, free):
        assert [i for i in broker.published if i[0] == channel] == [
            i for i in sent if i[0] == channel
        ]
    assert publisher.pending == 0
    assert not broker.replies  # refused three times over


async def test_a_retryable_fast_path_refusal_parks_only_its_channel() -> None:
    broker, calls = FastBroker(), Recorder()
    publisher = parked_publisher(broker, calls, settle=60.0)
    stuck, free = "bushub:msg:{stuck}", "bushub:msg:{free}"
    async with running(publisher):
        publisher.publish(stuck, b"s0")
        publisher.publish(free, b"f0")
        refused = broker.taken.pop(0)
        refused[2](reply_error(MIGRATING))
        broker.answer()
        # Queued now (something is parked), and out at once.
        publisher.publish(free, b"f1")
        publisher.publish(stuck, b"s1")
        await wait_until(lambda: broker.published == [(free, b"f1")], "the free one")
        assert publisher.pending == 2
    publisher.close()
    assert calls.dropped == [("shutdown", 2)]


async def test_the_queue_is_bounded_in_bytes_too_and_flushed_in_batches_of_bounded_bytes() -> None:
    # 10,000 messages of 1 MiB held through a Redis outage took a node past 1.5 GB,
    # and its flush wrote 512 of them as one buffer.
    broker, calls = FakeBroker(), Recorder()
    broker.up = False
    publisher = make_publisher(broker, calls, 10_000)
    big = b"x" * (1 << 20)
    count = QUEUE_BYTES // len(big) + 100
    for n in range(count):
        publisher.publish(f"bushub:msg:{{a{n % 7}}}", big + str(n).encode())
    # Summed every 64 messages queued: at most 63 over between two sums.
    assert (publisher.pending - 63) * len(big) <= QUEUE_BYTES
    dropped = sum(n for reason, n in calls.dropped if reason == "publish_buffer_full")
    assert dropped == count - publisher.pending > 0
    held = publisher.pending
    broker.up = True
    async with running(publisher):
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert len(broker.published) == held
    # The newest kept, in order.
    assert [d[len(big) :] for _, d in broker.published] == [
        str(n).encode() for n in range(count - held, count)
    ]
    assert max(sum(len(d) for _, d in batch) for batch in broker.batches) <= 8 << 20


async def test_readers_pause_at_the_high_water_in_bytes_while_redis_is_behind() -> None:
    # A fast sender of 64 KiB messages held 5,000 of them unacknowledged (a node at
    # 470 MB) with Redis up and merely behind: the count's high-water mark alone
    # let that many through.
    broker, calls = FastBroker(), Recorder()
    publisher = fast_publisher(broker, calls, capacity=10_000)
    message = b"x" * (64 << 10)
    for n in range(HIGH_WATER_BYTES // len(message)):
        assert not publisher.crowded
        publisher.publish(f"bushub:msg:{{a{n % 7}}}", message)
    assert publisher.crowded and publisher.held_bytes == HIGH_WATER_BYTES
    assert publisher.pending == HIGH_WATER_BYTES // len(message) < 10_000 // 2
    async with running(publisher):
        waiting = asyncio.create_task(publisher.room())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        broker.answer(1)
        await asyncio.wait_for(waiting, TIMEOUT)
        assert not publisher.crowded
        broker.answer()
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
    assert publisher.held_bytes == 0 and calls.dropped == []


async def test_the_bytes_held_follow_every_path_a_message_leaves_by() -> None:
    # Published by either path, refused for good or for its keys, retried after a
    # retryable refusal or a lost connection, sent again after a break, dropped for
    # room, counted at shutdown: what is held comes back to nothing each time.
    broker, calls = FastBroker(), Recorder()
    publisher = Publisher(
        cast(Broker, broker),
        8,
        calls.on_published,
        calls.on_dropped,
        resend_prefix="bushub:msg:",
        on_key_refused=calls.on_key_refused,
    )
    sent = items(40)
    refusals = [
        reply_error(NOPERM),
        reply_error("WRONGTYPE Operation against a key holding the wrong kind of value"),
        reply_error("TRYAGAIN Multiple keys request during rehashing of slot"),
    ]
    async with running(publisher):
        publish_all(publisher, sent[:6])
        for error in refusals:
            broker.taken.pop(0)[2](error)
        broker.lose()  # the other three in doubt, back to the queue
        broker.fast_open = True
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
        assert publisher.held_bytes == 0
        broker.up = False
        assert publisher.broker_lost() > 0
        publish_all(publisher, sent[6:30])  # past the bound of 8: the oldest dropped
        assert 0 < publisher.held_bytes == sum(len(d) for _, d in sent[22:30])
        broker.up = True
        await asyncio.wait_for(publisher.flushed(), TIMEOUT)
        assert publisher.held_bytes == 0
        publish_all(publisher, sent[30:])
    publisher.close()
    assert publisher.held_bytes == 0 and publisher.pending == 0
