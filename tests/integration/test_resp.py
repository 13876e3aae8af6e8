"""The raw publish connection against a real redis-server, on asyncio and uvloop: the
fast path keeps order and coalesces one iteration's commands into one write, error
replies answer only their own command, a command answered by a callback is answered
as its reply is read, a lost connection hands every unacknowledged
message back in order, a stalled Redis is given up on, and a retired connection gets
its replies before it closes."""

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bushub.broker.base import PartialPublish
from bushub.broker.refusals import ErrorKind, classify
from bushub.broker.resp import FastItem, PublishConnection
from bushub.broker.subscriber import Subscriber
from tests.integration.realredis import LOOPS, off_loop, run, running_redis
from tests.reliability.harness import FaultRedis
from tests.unit.bushub.helpers import wait_until as until

pytestmark = pytest.mark.parametrize("loop", LOOPS)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[FaultRedis]:
    yield from running_redis(tmp_path)


class CountingTransport:
    """Stands in for the connection's transport, counting writes (uvloop's
    transports cannot be patched)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def connection(redis: FaultRedis, **auth: str) -> tuple[PublishConnection, list[list[FastItem]]]:
    """A publish connection to ``redis`` and the hand-backs of its lost messages."""
    conn = PublishConnection("127.0.0.1", redis.port, **auth)
    lost: list[list[FastItem]] = []
    conn.on_lost = lost.append
    return conn, lost


async def subscribed(redis: FaultRedis, *channels: str) -> tuple[Subscriber, list[Any]]:
    got: list[tuple[str, bytes]] = []
    sub = await Subscriber.open("127.0.0.1", redis.port, lambda c, d: got.append((c, d)))
    sub.subscribe(channels)
    await sub.ping()
    return sub, got


def test_fast_path_keeps_order_and_coalesces_an_iteration_into_one_write(
    redis: FaultRedis, loop: str
) -> None:
    async def scenario() -> None:
        conn, lost = connection(redis)
        assert not conn.publish_nowait("c:1", b"x", lambda n: None)  # not open yet
        await conn.connect()
        sub, got = await subscribed(redis, "c:1", "c:2")
        assert conn._conn is not None
        counting = CountingTransport(conn._conn.transport)
        conn._conn.transport = counting  # type: ignore[assignment]
        done: list[tuple[int, int | None]] = []
        for i in range(5):
            assert conn.publish_nowait(f"c:{i % 3}", b"m%d" % i, lambda n, i=i: done.append((i, n)))
        assert counting.writes == []  # written once the iteration ends
        await asyncio.sleep(0)
        assert len(counting.writes) == 1
        await until(lambda: len(done) == 5, "five replies")
        for i in range(5, 400):
            channel: str | bytes = f"c:{i % 3}" if i % 2 else f"c:{i % 3}".encode()
            conn.publish_nowait(channel, b"m%d" % i, lambda n, i=i: done.append((i, n)))
            if i % 37 == 0:
                await asyncio.sleep(0)
        await until(lambda: len(done) == 400, "every reply")
        assert done == [(i, 0 if i % 3 == 0 else 1) for i in range(400)]
        await until(lambda: len(got) == 266, "every message")
        assert got == [(f"c:{i % 3}", b"m%d" % i) for i in range(400) if i % 3]
        assert len(counting.writes) < 30
        assert lost == []
        # Batches share the FIFO: a batch after buffered fast-path commands.
        conn.publish_nowait("c:1", b"fast", lambda n: done.append((-1, n)))
        assert await conn.publish_many([("c:2", b"batch"), ("c:0", b"none")]) == [1, 0]
        assert done[-1] == (-1, 1)
        await until(lambda: len(got) == 268, "both")
        assert got[-2:] == [("c:1", b"fast"), ("c:2", b"batch")]
        sub.close()
        await conn.close()

    run(loop, scenario())


def test_an_error_reply_answers_only_its_own_command(redis: FaultRedis, loop: str) -> None:
    async def scenario() -> None:
        # An ACL user who may publish on ok:* only: PUBLISH elsewhere is refused.
        await off_loop(
            lambda: redis.cli(
                "ACL", "SETUSER", "pub", "on", ">secret", "+publish", "resetchannels", "&ok:*"
            )
        )
        bad, _ = connection(redis, username="pub", password="wrong")
        with pytest.raises(ConnectionError, match="AUTH"):
            await bad.connect()
        conn, lost = connection(redis, username="pub", password="secret")
        await conn.connect()
        done: list[int | Exception | None] = []
        for channel in ("ok:1", "no:1", "ok:2"):
            assert conn.publish_nowait(channel, b"x", done.append)
        await until(lambda: len(done) == 3, "three replies")
        # The refused one gets its error reply, for the caller to retry or drop by kind.
        assert done[0] == done[2] == 0
        assert classify(done[1]) is ErrorKind.NOPERM
        with pytest.raises(PartialPublish) as partial:
            await conn.publish_many([("ok:1", b"a"), ("no:2", b"b"), ("ok:3", b"c")])
        assert partial.value.counts == [0, None, 0]
        assert "NOPERM" in str(partial.value)
        assert [classify(e) if e else None for e in partial.value.errors] == [
            None,
            ErrorKind.NOPERM,
            None,
        ]
        # Still in step: the connection stays up and answers the next batch.
        assert await conn.publish_many([("ok:4", b"d")]) == [0]
        assert conn.is_open and lost == []
        await conn.close()

    run(loop, scenario())


def test_a_command_answered_by_a_callback_is_answered_in_order_as_read(
    redis: FaultRedis, loop: str
) -> None:
    """``command_nowait``: the reply reaches the callback in the order written, from
    the read itself (a future's done callback would run a turn of the loop later,
    after the publish written behind it); an error reply and the connection's end
    reach it too, and a callback that raises leaves the connection in step."""

    async def scenario() -> None:
        conn, lost = connection(redis)
        await conn.connect()
        order: list[object] = []
        assert conn.command_nowait(b"*1\r\n$4\r\nPING\r\n", order.append)
        assert conn.publish_nowait("c", b"x", lambda n: order.append(("published", n)))
        await until(lambda: len(order) == 2, "both replies")
        assert order == [b"PONG", ("published", 0)]

        def boom(_: object) -> None:
            raise RuntimeError("the owner's bug")

        assert conn.command_nowait(b"*1\r\n$4\r\nNOPE\r\n", order.append)
        assert conn.command_nowait(b"*1\r\n$4\r\nPING\r\n", boom)
        assert conn.publish_nowait("c", b"y", lambda n: order.append(("published", n)))
        await until(lambda: len(order) == 4, "the error reply and the publish behind")
        assert classify(order[2]) is ErrorKind.OTHER and "unknown command" in str(order[2])
        assert order[3] == ("published", 0) and conn.is_open

        redis.signal(signal.SIGSTOP)
        ended: list[object] = []
        assert conn.command_nowait(b"*1\r\n$4\r\nPING\r\n", ended.append)
        await asyncio.sleep(0.1)
        redis.signal(signal.SIGKILL)
        await off_loop(redis.wait)
        await until(lambda: bool(ended), "the end of the connection")
        assert isinstance(ended[0], ConnectionError)
        assert all(batch == [] for batch in lost), "no publish was owed"
        assert not conn.command_nowait(b"*1\r\n$4\r\nPING\r\n", ended.append)
        await off_loop(redis.restart)
        await conn.close()

    run(loop, scenario())


def test_a_lost_connection_hands_back_every_unacknowledged_message_in_order(
    redis: FaultRedis, loop: str
) -> None:
    async def scenario() -> None:
        conn, lost = connection(redis)
        await conn.connect()
        acked: list[int | None] = []
        assert conn.publish_nowait("c", b"0", acked.append)
        await until(lambda: acked == [0], "the first reply")
        redis.signal(signal.SIGSTOP)  # nothing is answered from here on
        for i in range(1, 6):
            assert conn.publish_nowait("c", b"%d" % i, acked.append)
        batch = asyncio.create_task(conn.publish_many([("c", b"batch")]))
        await asyncio.sleep(0.1)  # all written, none answered
        redis.signal(signal.SIGKILL)
        await off_loop(redis.wait)
        await until(lambda: bool(lost), "the hand-back")
        assert [(c, d) for c, d, _ in lost[0]] == [("c", b"%d" % i) for i in range(1, 6)]
        assert len(lost) == 1 and acked == [0]  # done is not called for those
        with pytest.raises(ConnectionError):
            await batch
        assert not conn.is_open
        assert not conn.publish_nowait("c", b"late", acked.append)
        await off_loop(redis.restart)
        # The next batch reconnects, and the fast path is open again.
        assert await conn.publish_many([("c", b"again")]) == [0]
        assert conn.publish_nowait("c", b"fast", acked.append)
        await until(lambda: acked == [0, 0], "a reply on the new connection")
        await conn.close()

    run(loop, scenario())


def test_a_stalled_redis_is_given_up_on_and_its_messages_handed_back(
    redis: FaultRedis, loop: str
) -> None:
    async def scenario() -> None:
        conn, lost = connection(redis)
        conn.stall_seconds = 0.6
        await conn.connect()
        await asyncio.sleep(0.5)  # idle time does not count as a stall
        redis.signal(signal.SIGSTOP)
        started = asyncio.get_running_loop().time()
        for i in range(3):
            assert conn.publish_nowait("c", b"%d" % i, lambda n: None)
        await until(lambda: bool(lost), "the stall to be noticed", timeout=3.0)
        took = asyncio.get_running_loop().time() - started
        assert 0.3 <= took < 1.5, took
        assert [d for _, d, _ in lost[0]] == [b"0", b"1", b"2"]
        redis.signal(signal.SIGCONT)
        assert await conn.publish_many([("c", b"x")]) == [0]
        await conn.close()

    run(loop, scenario())


def test_retire_closes_once_the_replies_owed_are_in(redis: FaultRedis, loop: str) -> None:
    async def scenario() -> None:
        conn, lost = connection(redis)
        await conn.connect()
        first = conn._conn
        conn.retire()  # idle: closed at once
        assert not conn.is_open
        await until(lambda: first is not None and first.lost.done(), "the idle one to close")
        await conn.connect()
        second = conn._conn
        assert second is not None and second is not first
        redis.signal(signal.SIGSTOP)
        done: list[int | None] = []
        for i in range(3):
            assert conn.publish_nowait("c", b"%d" % i, done.append)
        await asyncio.sleep(0.05)
        conn.retire()
        assert not conn.is_open
        assert not conn.publish_nowait("c", b"refused", done.append)
        redis.signal(signal.SIGCONT)
        await until(second.lost.done, "the retired one to close")
        assert done == [0, 0, 0] and lost == []
        assert await conn.publish_many([("c", b"new")]) == [0]
        await conn.close()

    run(loop, scenario())
