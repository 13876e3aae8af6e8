"""The raw pub/sub connection and the single-Redis broker against a real redis-server,
on asyncio and uvloop: messages dispatched from the read callback, in order, for the
subscribed channels only; a subscriber Redis cuts off for its output buffer, or a
Redis killed and restarted, noticed at once and every channel resubscribed; the
publisher's fast path carrying steady traffic with no batch at all; error replies
(ACL, out of memory) handed to the caller classified, on either publish path; and
unix-socket URLs still served by redis-py's PubSub."""

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from bushub.broker.base import RECORDS_PER_READ, Broker, PartialPublish
from bushub.broker.memory import MemoryBroker
from bushub.broker.redis import RedisBroker
from bushub.broker.refusals import BrokerRefused, ErrorKind, classify
from bushub.broker.resp import PublishConnection
from bushub.broker.sessionscripts import Reasserted, SessionLimits
from bushub.broker.subscriber import SUBSCRIBE_BATCH, Subscriber
from bushub.publisher import Publisher
from buswire import Format, message_channel
from buswire.channels import session_key, stream_key
from buswire.relayframe import as_resent, pack_relay, pack_session_relay, sender_of, unpack_relay
from tests.integration.realredis import LOOPS, off_loop, run, running_redis
from tests.reliability.harness import FaultRedis
from tests.unit.bushub.helpers import TIMEOUT
from tests.unit.bushub.helpers import wait_until as until

pytestmark = pytest.mark.parametrize("loop", LOOPS)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[FaultRedis]:
    yield from running_redis(tmp_path)


def test_subscriber_dispatches_subscribed_channels_in_order(redis: FaultRedis, loop: str) -> None:
    async def scenario() -> None:
        got: list[tuple[str, bytes]] = []
        sub = await Subscriber.open("127.0.0.1", redis.port, lambda c, d: got.append((c, d)))
        sub.subscribe(["a", "b"])
        await sub.ping()
        pub = PublishConnection("127.0.0.1", redis.port)
        items = [(("a", "b", "z")[i % 3], b"%d" % i) for i in range(3000)]
        counts = await pub.publish_many(items)
        assert counts == [0 if c == "z" else 1 for c, _ in items]
        await until(lambda: len(got) == 2000, "every message")
        assert got == [(c, d) for c, d in items if c != "z"]
        sub.unsubscribe(["a"])
        await sub.ping()
        await pub.publish_many([("a", b"gone"), ("b", b"kept")])
        await until(lambda: got[-1] == ("b", b"kept"), "the last message")
        assert ("a", b"gone") not in got
        # A handler that raises costs nothing but a log line.
        sub.on_message = lambda c, d: 1 / 0  # type: ignore[assignment,return-value]
        await pub.publish_many([("b", b"boom")])
        await sub.ping()
        assert sub.is_open and not sub.lost.done()
        sub.close()
        await asyncio.wait_for(sub.lost, 1)
        await pub.close()

    run(loop, scenario())


def test_a_subscriber_cut_off_for_its_output_buffer_is_noticed(
    redis: FaultRedis, loop: str
) -> None:
    async def scenario() -> None:
        await off_loop(
            lambda: redis.cli("CONFIG", "SET", "client-output-buffer-limit", "pubsub 64kb 32kb 1")
        )
        got: list[tuple[str, bytes]] = []
        sub = await Subscriber.open("127.0.0.1", redis.port, lambda c, d: got.append((c, d)))
        sub.subscribe(["a"])
        await sub.ping()
        assert sub.transport is not None
        sub.transport.pause_reading()  # a stalled node
        pub = PublishConnection("127.0.0.1", redis.port)
        for _ in range(20):
            await pub.publish_many([("a", b"x" * 50_000)] * 10)
        await until(
            lambda: "output buffer limits" in redis.log_path.read_text(), "Redis to cut it off"
        )
        sub.transport.resume_reading()
        await asyncio.wait_for(sub.lost, 2)
        assert not sub.is_open
        await pub.close()

    run(loop, scenario())


def test_broker_resubscribes_everything_after_a_restart(redis: FaultRedis, loop: str) -> None:
    async def scenario() -> None:
        broker = RedisBroker(redis.url, control_channel="bushub:node:t", backoff_max=0.2)
        got: list[tuple[str, bytes]] = []
        states: list[bool] = []
        broker.set_handlers(lambda c, d: got.append((c, d)), states.append)
        await broker.start()
        assert broker.up and states == [True]
        # More channels than one SUBSCRIBE command carries.
        channels = [f"t:{i}" for i in range(SUBSCRIBE_BATCH * 2 + 7)]
        for channel in channels:
            await broker.subscribe(channel)
        await broker.unsubscribe("t:3")

        def subscribed() -> int:
            return len(redis.lines("PUBSUB", "CHANNELS", "t:*"))

        await until(lambda: subscribed() == len(channels) - 1, "every subscription")
        assert await broker.publish_many([("t:9", b"before"), ("t:3", b"not")]) == [1, 0]
        await until(lambda: got == [("t:9", b"before")], "the first message")

        redis.signal(signal.SIGKILL)
        await off_loop(redis.wait)
        await until(lambda: states[-1:] == [False], "the loss to be noticed")
        assert not broker.up
        with pytest.raises(ConnectionError):
            await broker.publish_many([("t:9", b"away")])
        await off_loop(redis.restart)
        await until(lambda: states[-1:] == [True], "the broker to be back")
        assert states == [True, False, True]
        # Readiness means subscribed: everything wanted, nothing unsubscribed.
        assert subscribed() == len(channels) - 1
        assert await broker.publish_many([("t:1000", b"after"), ("t:3", b"not")]) == [1, 0]
        await until(lambda: got[-1:] == [("t:1000", b"after")], "a message after")
        await broker.close()
        await broker.close()

    run(loop, scenario())


def test_steady_traffic_goes_through_the_fast_path(redis: FaultRedis, loop: str) -> None:
    async def scenario() -> None:
        broker = RedisBroker(redis.url, control_channel="bushub:node:t")
        got: list[tuple[str, bytes]] = []
        broker.set_handlers(lambda c, d: got.append((c, d)), lambda up: None)
        batches: list[int] = []
        publish_many = broker.publish_many

        async def counted(items: Sequence[tuple[str, bytes]]) -> list[int]:
            batches.append(len(items))
            return await publish_many(items)

        broker.publish_many = counted  # type: ignore[method-assign]
        await broker.start()
        await broker.subscribe("t:a")
        delivered: list[tuple[str, int]] = []
        dropped: list[tuple[str, int]] = []
        publisher = Publisher(
            broker, 10_000, lambda c, _, n: delivered.append((c, n)), lambda *d: dropped.append(d)
        )
        task = asyncio.create_task(publisher.run())
        publisher.publish("t:a", b"first")  # opens the publish connection
        await asyncio.wait_for(publisher.flushed(), 2)
        assert batches == [1]
        sent = [(("t:a", "t:b")[i % 2], b"%d" % i) for i in range(2000)]
        for n, (channel, data) in enumerate(sent):
            publisher.publish(channel, data)
            if n % 100 == 0:
                await asyncio.sleep(0)
        assert publisher.pending > 0
        await asyncio.wait_for(publisher.flushed(), 5)
        assert batches == [1]  # no batch: every one went straight to the connection
        assert dropped == []
        assert delivered == [("t:a", 1)] + [(c, 1 if c == "t:a" else 0) for c, _ in sent]
        await until(lambda: len(got) == 1001, "every message")
        assert got == [("t:a", b"first")] + [(c, d) for c, d in sent if c == "t:a"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        publisher.close()
        await broker.close()

    run(loop, scenario())


def test_a_unix_socket_url_keeps_redis_pys_pubsub(tmp_path: Path, loop: str) -> None:
    """URLs other than ``redis://`` (unix sockets, TLS) take redis-py's PubSub and
    pipelines; both paths must deliver the same."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    path = tmp_path / "redis.sock"
    argv = ["redis-server", "--port", "0", "--unixsocket", str(path), "--save", ""]
    with (tmp_path / "redis.log").open("w") as log:
        proc = subprocess.Popen([*argv, "--appendonly", "no"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not path.exists():
            assert time.monotonic() < deadline, "redis-server did not open its socket"
            time.sleep(0.01)

        async def scenario() -> None:
            broker = RedisBroker(f"unix://{path}", control_channel="bushub:node:t")
            got: list[tuple[str, bytes]] = []
            broker.set_handlers(lambda c, d: got.append((c, d)), lambda up: None)
            await broker.start()
            await broker.subscribe("t:a")
            await asyncio.sleep(0.05)
            assert not broker.publish_nowait("t:a", b"x", lambda n: None)
            assert await broker.publish_many([("t:a", b"1"), ("t:b", b"2")]) == [1, 0]
            await until(lambda: got == [("t:a", b"1")], "the message")
            # redis-py's pipeline: a refused PUBLISH is that message's outcome only.
            await broker._client.execute_command(
                "ACL", "SETUSER", "default", "resetchannels", "&bushub:*", "&t:a"
            )
            with pytest.raises(PartialPublish) as partial:
                await broker.publish_many([("t:b", b"3"), ("t:a", b"4")])
            assert partial.value.counts == [None, 1]
            assert [classify(e) if e else None for e in partial.value.errors] == [
                ErrorKind.NOPERM,
                None,
            ]
            await broker.close()

        run(loop, scenario())
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


@pytest.mark.parametrize("transport", ["raw", "redis-py"])
def test_a_refused_subscription_is_reported_and_the_rest_keep_delivering(
    tmp_path: Path, loop: str, transport: str
) -> None:
    """An ACL refuses a channel subscribed at runtime (Redis' error names no channel).
    On either link (the raw one for ``redis://``, redis-py's PubSub for unix sockets
    and TLS) the refusal is reported, the channels already held keep delivering on
    the same connection (the broker never goes down), confirming the subscriptions
    raises the refusal until the ACL allows the channel, and then the channel is
    heard."""
    redis = FaultRedis(tmp_path / "redis.log", unix_socket=True)
    redis.start()
    url = redis.url if transport == "raw" else redis.unix_url

    async def scenario() -> None:
        broker = RedisBroker(url, control_channel="bushub:node:t")
        # What the node's start-up line names (it read "redis ?:?/0" for a socket).
        assert broker.description == (
            f"redis 127.0.0.1:{redis.port}/0"
            if transport == "raw"
            else f"redis unix:{redis.socket_path}/0"
        )
        got: list[tuple[str, bytes]] = []
        states: list[bool] = []
        refused: list[Exception] = []
        broker.set_handlers(lambda c, d: got.append((c, d)), states.append)
        broker.on_subscribe_refused = refused.append
        await broker.start()
        await broker.subscribe("t:a")
        await broker.confirm_subscriptions()
        await off_loop(
            lambda: redis.cli("ACL", "SETUSER", "default", "resetchannels", "&bushub:*", "&t:a")
        )

        await broker.subscribe("t:b")
        await until(lambda: bool(refused), "the refusal reported")
        assert classify(refused[0]) is ErrorKind.NOPERM
        assert await broker.publish_many([("t:a", b"1")]) == [1]
        await until(lambda: got == [("t:a", b"1")], "t:a's message")
        with pytest.raises(RedisError) as still:
            await broker.confirm_subscriptions()
        assert classify(still.value) is ErrorKind.NOPERM
        assert await broker.publish_many([("t:a", b"2")]) == [1]
        await until(lambda: got[-1:] == [("t:a", b"2")], "t:a's message after the probe")

        await off_loop(lambda: redis.cli("ACL", "SETUSER", "default", "allchannels"))
        await broker.confirm_subscriptions()
        assert await broker.publish_many([("t:b", b"3"), ("t:a", b"4")]) == [1, 1]
        await until(lambda: len(got) == 4, "both channels' messages")
        assert got == [("t:a", b"1"), ("t:a", b"2"), ("t:b", b"3"), ("t:a", b"4")]
        assert states == [True], "the connection was never given up"
        assert len(refused) == 1, "a probe's refusal is its caller's, not reported again"
        await broker.close()

    try:
        run(loop, scenario())
    finally:
        redis.stop()


def test_error_replies_reach_the_caller_classified(redis: FaultRedis, loop: str) -> None:
    async def scenario() -> None:
        broker = RedisBroker(redis.url, control_channel="bushub:node:t")
        await broker.start()
        # An ACL that refuses one channel: each publish path hands the reply over.
        await off_loop(
            lambda: redis.cli("ACL", "SETUSER", "default", "resetchannels", "&bushub:*", "&ok")
        )
        with pytest.raises(PartialPublish) as partial:
            await broker.publish_many([("ok", b"1"), ("no", b"2")])
        assert partial.value.counts == [0, None]
        assert classify(partial.value.errors[1]) is ErrorKind.NOPERM
        replies: list[int | Exception | None] = []
        assert broker.publish_nowait("no", b"3", replies.append)
        await until(lambda: bool(replies), "the reply")
        assert classify(replies[0]) is ErrorKind.NOPERM
        await off_loop(lambda: redis.cli("ACL", "SETUSER", "default", "allchannels"))

        # maxmemory reached under noeviction: record writes are refused with OOM,
        # as BrokerRefused (a ConnectionError); reads and publishes still work.
        await off_loop(lambda: redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction"))
        await off_loop(lambda: redis.cli("SETRANGE", "filler", str(8 << 20), "x"))
        info = await off_loop(lambda: redis.cli("INFO", "memory"))
        used = int(next(x for x in info.splitlines() if x.startswith("used_memory:"))[12:])
        await off_loop(lambda: redis.cli("CONFIG", "SET", "maxmemory", str(used - (4 << 20))))
        with pytest.raises(BrokerRefused) as put:
            await broker.put_record("k", b"c1 v", 10.0)
        assert put.value.kind is ErrorKind.OOM
        with pytest.raises(BrokerRefused) as refresh:
            await broker.refresh_records([("k", "c1", b"c1 v")], 10.0)
        assert refresh.value.kind is ErrorKind.OOM and str(refresh.value).startswith("OOM")
        assert await broker.get_records(["k"]) == [None]
        assert await broker.publish_many([("ok", b"4")]) == [0]
        await off_loop(lambda: redis.cli("DEL", "filler"))
        assert await broker.refresh_records([("k", "c1", b"c1 v")], 10.0) == [True]
        await broker.close()

    run(loop, scenario())


def test_a_scan_of_records_stops_at_its_bound_and_reads_in_batches(
    redis: FaultRedis, loop: str
) -> None:
    """``/agents`` at 100,000 agents was one 12 MB MGET on the publish connection and
    2.3 s of the node's loop: the scan stops at ``most`` keys, read a batch a command."""

    async def scenario() -> None:
        broker, _ = await _listening_broker(redis, "x")
        count = RECORDS_PER_READ * 2 + 5
        await off_loop(lambda: redis.cli("CONFIG", "RESETSTAT"))
        for start in range(0, count, 500):
            items = [
                (f"bushub:agent:{{a{i}}}", f"c{i}", b"c%d rec" % i)
                for i in range(start, min(count, start + 500))
            ]
            assert all(await broker.refresh_records(items, None))
        assert len(await broker.scan_records("bushub:agent:*", count + 10)) == count
        assert len(await broker.scan_records("bushub:agent:*", 7)) == 7
        stats = await off_loop(lambda: redis.cli("INFO", "commandstats"))
        mget = next(line for line in stats.splitlines() if line.startswith("cmdstat_mget:"))
        assert mget.startswith("cmdstat_mget:calls=4,"), mget  # 1000 + 1000 + 5, then 7
        await broker.close()

    run(loop, scenario())


def test_claim_record_stores_the_key_and_publishes(redis: FaultRedis, loop: str) -> None:
    async def scenario() -> None:
        broker, got = await _listening_broker(redis, "bushub:presence:{a}")
        await broker.claim_record(
            "bushub:claim:{a}", b"c1 n1", 5.0, "bushub:presence:{a}", b"claimed"
        )
        await until(lambda: got == [("bushub:presence:{a}", b"claimed")], "the claim event")
        assert await broker.get_records(["bushub:claim:{a}"]) == [b"c1 n1"]
        assert 0 < int(redis.cli("PTTL", "bushub:claim:{a}").strip()) <= 5000
        # The claim key follows the record rules: refreshed and withdrawn by its holder only.
        assert await broker.refresh_records([("bushub:claim:{a}", "c2", b"c2 n2")], 5.0) == [False]
        await broker.delete_record("bushub:claim:{a}", "c1")
        assert await broker.get_records(["bushub:claim:{a}"]) == [None]
        await broker.close()

    run(loop, scenario())


def test_a_copy_sent_again_reaches_a_session_only_after_redis_lost_it(
    redis: FaultRedis, loop: str
) -> None:
    """The delivery script and a resent frame (relayframe.as_resent): refused (-3) for a
    session Redis still keeps, published unnumbered for a few seconds after the holder
    put the session back (Redis had lost it), so the receiving node can decide."""

    async def scenario() -> None:
        broker, got = await _session_broker(redis, redis.url)
        channel = message_channel("a")
        first = pack_relay(Format.JSON, 1.0, b'{"n":1}')
        copy = as_resent(pack_relay(Format.JSON, 2.0, b'{"n":2}'))

        assert await broker.publish_many([(channel, first)]) == [1]
        await until(lambda: len(got) == 1, "the kept message")
        assert unpack_relay(got[0]).position == 1
        assert await broker.publish_many([(channel, copy)]) == [-3]

        assert await broker.reassert_session("a", "S1", "e1", "c1", 1) == Reasserted.HELD
        assert await broker.reassert_session("a", "S1", "e1", "c2", 1) == Reasserted.ELSEWHERE
        redis.cli("DEL", session_key("a"), stream_key("a"))  # as a Redis restarted empty
        assert await broker.reassert_session("a", "S1", "e1", "c1", 1) == Reasserted.PUT_BACK
        assert await broker.publish_many([(channel, copy)]) == [1]
        await until(lambda: len(got) == 2, "the copy")
        assert got[1] == copy  # as published: not kept, not numbered
        later = pack_relay(Format.JSON, 3.0, b'{"n":3}')
        assert await broker.publish_many([(channel, later)]) == [1]
        await until(lambda: len(got) == 3, "numbered on")
        assert unpack_relay(got[2]).position == 2
        await broker.close()

    run(loop, scenario())


def test_acknowledgements_trim_on_the_publish_connection(redis: FaultRedis, loop: str) -> None:
    """``ack_sessions`` on the raw publish connection: the stream is trimmed up to the
    acknowledged position, one ``TRIM`` call per session; a trim for another session
    of the name (its numbering may have started again) drops nothing; a Redis whose
    script cache was emptied gets the script's text; an error reply is raised as
    BrokerRefused."""

    async def scenario() -> None:
        broker = RedisBroker(redis.url, control_channel="bushub:node:t")
        broker.keep_for_sessions(SessionLimits(120.0, 1000, 1 << 20))
        await broker.start()
        for agent in ("a", "b"):
            await broker.resume_session(agent, "S1", 0, "e1", "c1")
        frames = [pack_relay(Format.JSON, 1.0, b'{"n":%d}' % n) for n in range(5)]
        await broker.publish_many([(message_channel("a"), f) for f in frames])
        await broker.publish_many([(message_channel("b"), f) for f in frames[:2]])
        calls_before = _calls(redis, "evalsha"), _calls(redis, "script")

        await broker.ack_sessions([("a", "S1", 3), ("b", "S1", 2)])
        assert [p for p, _ in await broker.read_session("a", 0)] == [4, 5]
        assert await broker.read_session("b", 0) == []
        # Through the publish connection (EVALSHA), not a pipeline of redis-py's
        # (which checks SCRIPT EXISTS first): exactly one call per session.
        assert (_calls(redis, "evalsha"), _calls(redis, "script")) == (
            calls_before[0] + 2,
            calls_before[1],
        )
        await broker.ack_sessions([("a", "S0", 5), ("a", "S1", 2)])  # another's, a late one
        assert [p for p, _ in await broker.read_session("a", 0)] == [4, 5]

        redis.cli("SCRIPT", "FLUSH")  # as a restarted Redis: NOSCRIPT, then the text
        await broker.ack_sessions([("a", "S1", 4)])
        assert [p for p, _ in await broker.read_session("a", 0)] == [5]

        await off_loop(lambda: redis.cli("ACL", "SETUSER", "default", "-xtrim"))
        with pytest.raises(BrokerRefused) as refused:
            await broker.ack_sessions([("a", "S1", 5)])
        assert refused.value.kind is ErrorKind.NOPERM
        await off_loop(lambda: redis.cli("ACL", "SETUSER", "default", "+@all"))
        await broker.close()

    run(loop, scenario())


def test_an_acknowledgement_trims_without_waiting(redis: FaultRedis, loop: str) -> None:
    """``ack_session_nowait``: one ``TRIM`` written with the loop iteration's
    publishes on the publish connection, nothing awaited; after Redis lost its script
    cache the NOSCRIPT answer is followed by the script's text; a refused trim is only
    logged (the next acknowledgement covers it) and leaves the connection in step."""

    async def scenario() -> None:
        broker, _ = await _session_broker(redis, redis.url)
        channel = message_channel("a")
        frames = [pack_relay(Format.JSON, 1.0, b'{"n":%d}' % n) for n in range(5)]
        await broker.publish_many([(channel, f) for f in frames])

        async def kept() -> list[int]:
            return [p for p, _ in await broker.read_session("a", 0)]

        assert broker.ack_session_nowait("a", "S1", 2)
        await until_async(lambda: kept(), [3, 4, 5], "trimmed up to 2")

        redis.cli("SCRIPT", "FLUSH")  # as a restarted Redis: NOSCRIPT, then the text
        assert broker.ack_session_nowait("a", "S1", 3)
        await until_async(lambda: kept(), [4, 5], "trimmed after NOSCRIPT")

        # The queued path sends the delivery script's text: loaded again.
        assert await broker.publish_many([(channel, frames[0])]) == [1]
        await off_loop(lambda: redis.cli("ACL", "SETUSER", "default", "-xtrim"))
        assert broker.ack_session_nowait("a", "S1", 4)
        outcomes: list[int | Exception | None] = []
        assert broker.publish_nowait(channel, frames[0], outcomes.append)
        await until(lambda: bool(outcomes), "the publish behind the refused trim")
        assert outcomes == [1], "the reply stream stays in step"
        await off_loop(lambda: redis.cli("ACL", "SETUSER", "default", "+@all"))
        assert await kept() == [4, 5, 6, 7]
        await broker.close()
        assert not broker.ack_session_nowait("a", "S1", 7), "closed: nothing written"

    run(loop, scenario())


async def until_async(
    read: Callable[[], Awaitable[object]], expected: object, what: str, timeout: float = 5.0
) -> None:
    """Wait until ``await read()`` equals ``expected``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (got := await read()) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"{what}: {got!r}"
        await asyncio.sleep(0.01)


def _calls(redis: FaultRedis, command: str) -> int:
    """Calls of ``command`` and its subcommands (``cmdstat_script|exists``...)."""
    stats = redis.cli("INFO", "commandstats").splitlines()
    names = (f"cmdstat_{command}:", f"cmdstat_{command}|")
    return sum(
        int(x.partition("calls=")[2].partition(",")[0]) for x in stats if x.startswith(names)
    )


def test_sessions_work_on_the_urls_database(redis: FaultRedis, loop: str) -> None:
    """A URL naming database 1: the raw publish connection selects it, so the delivery
    and acknowledgement scripts keep and trim the session's stream there (they wrote
    database 0 while the resume read database 1, and nothing was delivered)."""

    async def scenario() -> None:
        broker, got = await _session_broker(redis, f"redis://127.0.0.1:{redis.port}/1")
        channel = message_channel("a")
        frame = pack_relay(Format.JSON, 1.0, b'{"n":1}')
        assert await broker.publish_many([(channel, frame)]) == [1]
        outcomes: list[int | Exception | None] = []
        assert broker.publish_nowait(channel, frame, outcomes.append)
        await until(lambda: len(got) == 2 and bool(outcomes), "both kept and delivered")
        assert [unpack_relay(d).position for d in got] == [1, 2]
        assert redis.cli("-n", "1", "XLEN", stream_key("a")).strip() == "2"
        assert redis.cli("-n", "0", "DBSIZE").strip() == "0"
        await broker.ack_sessions([("a", "S1", 1)])
        assert [p for p, _ in await broker.read_session("a", 0)] == [2]
        await broker.close()

    run(loop, scenario())


async def _session_broker(redis: FaultRedis, url: str) -> tuple[RedisBroker, list[bytes]]:
    """A started broker keeping messages for sessions, subscribed to agent ``a``'s
    channel (what arrives there goes into the list), with session ``S1`` of ``a``
    resumed as new."""
    broker = RedisBroker(url, control_channel="bushub:node:t")
    broker.keep_for_sessions(SessionLimits(120.0, 1000, 1 << 20))
    got: list[bytes] = []
    broker.set_handlers(lambda c, d: got.append(d), lambda up: None)
    await broker.start()
    channel = message_channel("a")
    await broker.subscribe(channel)
    await until(lambda: redis.lines("PUBSUB", "CHANNELS", channel) != [], "sub")
    await broker.resume_session("a", "S1", 0, "e1", "c1")
    return broker, got


def test_deliveries_over_redis_pys_pipeline_go_by_digest_and_survive_a_flushed_cache(
    tmp_path: Path, loop: str
) -> None:
    """On a unix-socket (or TLS) URL a session's messages go through redis-py's
    pipeline by the delivery script's digest (``EVALSHA``, not its text per message);
    after Redis lost its scripts (``SCRIPT FLUSH``) a batch's deliveries go again with
    the text: each kept once, in order, a plain PUBLISH in the batch once."""
    redis = FaultRedis(tmp_path / "redis.log", unix_socket=True)
    redis.start()

    async def scenario() -> None:
        broker = RedisBroker(redis.unix_url, control_channel="bushub:node:t")
        broker.keep_for_sessions(SessionLimits(120.0, 1000, 1 << 20))
        await broker.start()
        await broker.resume_session("a", "S1", 0, "e1", "c1")
        frames = [pack_relay(Format.JSON, 1.0, b'{"n":%d}' % n) for n in range(6)]
        channel = message_channel("a")
        before = _calls(redis, "evalsha"), _calls(redis, "eval")
        assert await broker.publish_many([(channel, f) for f in frames[:2]]) == [-2, -2]
        assert (_calls(redis, "evalsha"), _calls(redis, "eval")) == (before[0] + 2, before[1])

        await off_loop(lambda: redis.cli("SCRIPT", "FLUSH"))
        batch = [(channel, frames[2]), ("t:other", b"x"), (channel, frames[3])]
        assert await broker.publish_many(batch) == [-2, 0, -2]
        assert await broker.publish_many([(channel, f) for f in frames[4:]]) == [-2, -2]
        kept = await broker.read_session("a", 0)
        assert [p for p, _ in kept] == [1, 2, 3, 4, 5, 6]
        assert [unpack_relay(d)[2] for _, d in kept] == [b'{"n":%d}' % n for n in range(6)]
        # Each delivery's own PUBLISH and the plain one: nothing published twice.
        assert _calls(redis, "publish") == 7
        await broker.close()

    try:
        run(loop, scenario())
    finally:
        redis.stop()


@pytest.mark.parametrize("kind", ["redis", "in-process"])
def test_senders_whose_sessions_are_gone_are_found_and_forgotten(
    redis: FaultRedis, loop: str, kind: str
) -> None:
    """What the delivery step remembers of each sending session (its newest position
    relayed to ``w``): a sender whose session still holds its agent is not gone; one
    whose agent a newer session holds, one whose session Redis no longer has, and
    a name that is no sender are; ``most`` bounds the answer; forgetting keeps a
    sender that relayed again since it was read, and a resend of a sender kept is
    still refused."""

    async def scenario() -> None:
        broker: Broker = (
            RedisBroker(redis.url, control_channel="bushub:node:t")
            if kind == "redis"
            else MemoryBroker()
        )
        broker.keep_for_sessions(SessionLimits(120.0, 1000, 1 << 20))
        await broker.start()

        async def relay(agent: str, session: str, position: int) -> list[int]:
            frame = pack_session_relay(Format.JSON, 1.0, b"{}", sender_of(agent, session), position)
            return await broker.publish_many([(message_channel("w"), frame)])

        for agent in ("live", "replaced", "again"):
            await broker.resume_session(agent, "S1", 0, "e1", "c1")
        for agent in ("live", "replaced", "never", "again"):
            await relay(agent, "S1", 3)
        await broker.resume_session("replaced", "S2", 0, "e2", "c2")
        await broker.resume_session("again", "S2", 0, "e2", "c2")
        if kind == "redis":
            await off_loop(lambda: redis.cli("HSET", "bushub:relayed:{w}", "nosender", "7"))

        gone = await broker.relayed_senders_gone("w", 100)
        expected = {b"replaced S1": b"3", b"never S1": b"3", b"again S1": b"3"}
        if kind == "redis":
            expected[b"nosender"] = b"7"
        assert gone == expected
        assert len(await broker.relayed_senders_gone("w", 2)) == 2
        assert await broker.relayed_senders_gone("nobody", 100) == {}

        await relay("again", "S1", 4)  # relayed again after it was read
        assert await broker.forget_relayed("w", gone) == len(gone) - 1
        assert await broker.relayed_senders_gone("w", 100) == {b"again S1": b"4"}
        # The sender still remembered is relayed once: its resend is refused.
        assert await relay("live", "S1", 3) == [-1]
        await broker.close()

    run(loop, scenario())


@pytest.mark.parametrize("kind", ["redis", "in-process"])
def test_what_a_session_it_replaces_kept_is_counted_lost_at_a_resume(
    redis: FaultRedis, loop: str, kind: str
) -> None:
    """What a session kept for its agent goes with it when it expires, or when another
    session of the name (a restarted agent's) replaces it: given to nobody, and counted
    nowhere before (a probe: 387 messages of a session away past its window). Its
    stream outlives an expired session by as long again, so that the name's next
    resume counts what it kept past what the proxy received; after that, nothing."""
    window = 0.4

    async def scenario() -> None:
        broker: Broker = (
            RedisBroker(redis.url, control_channel="bushub:node:t")
            if kind == "redis"
            else MemoryBroker()
        )
        broker.keep_for_sessions(SessionLimits(window, 1000, 1 << 20))
        await broker.start()

        async def away_with(agent: str, messages: int, for_seconds: float) -> None:
            await broker.resume_session(agent, "S1", 0, "e1", "c1")
            await broker.release_sessions([(agent, "c1")], for_seconds)
            frames = [pack_relay(Format.JSON, 1.0, b'{"n":%d}' % n) for n in range(messages)]
            published = await broker.publish_many([(message_channel(agent), f) for f in frames])
            assert published == [-2] * messages, "kept, nobody subscribed"

        await away_with("expired", 5, window)
        await away_with("replaced", 4, 60.0)
        await away_with("long-gone", 3, window)
        await asyncio.sleep(1.5 * window)  # past the window, within twice it
        assert not await broker.session_kept("expired")
        back = await broker.resume_session("expired", "S1", 2, "e2", "c2")
        assert (back.result, back.lost) == ("gap", 3), "received 2 of the 5 kept"
        # A restarted agent's proxy: a new session, no replay, all it kept is lost.
        restarted = await broker.resume_session("replaced", "S2", 0, "e2", "c2")
        assert (restarted.result, restarted.lost, restarted.replay) == ("new", 4, [])
        await asyncio.sleep(window)  # past twice the window: its stream is gone too
        late = await broker.resume_session("long-gone", "S1", 0, "e2", "c2")
        assert late.lost == 0
        # Resumed as kept: nothing counted.
        again = await broker.resume_session("expired", "S1", 0, "e3", "c3")
        assert again.lost == 0
        await broker.close()

    run(loop, scenario())


def test_a_session_put_back_over_a_stream_it_outlived_numbers_on_after_it(
    redis: FaultRedis, loop: str
) -> None:
    """A connected session released by another node (its node stalled past the
    presence TTL), expired, and put back by its holder: its stream, which outlives an
    expired session, still keeps positions past what the socket was given. Numbering
    again from there would write a position twice (Redis refuses an entry ID not past
    the newest, and every later message for the agent with it)."""
    window = 0.3

    async def scenario() -> None:
        broker = RedisBroker(redis.url, control_channel="bushub:node:t")
        broker.keep_for_sessions(SessionLimits(window, 1000, 1 << 20))
        await broker.start()
        channel = message_channel("a")
        await broker.resume_session("a", "S1", 0, "e1", "c1")
        await broker.release_sessions([("a", "c1")], window)
        frames = [pack_relay(Format.JSON, 1.0, b'{"n":%d}' % n) for n in range(4)]
        assert await broker.publish_many([(channel, f) for f in frames[:3]]) == [-2] * 3
        await asyncio.sleep(1.5 * window)
        assert not await broker.session_kept("a")
        assert await broker.reassert_session("a", "S1", "e1", "c1", 1) == Reasserted.PUT_BACK
        assert await broker.publish_many([(channel, frames[3])]) == [-2]
        kept = await broker.read_session("a", 1)
        assert [p for p, _ in kept] == [2, 3, 4], "what the socket was not given, then on"
        assert redis.cli("PTTL", stream_key("a")).strip() == "-1", "held as its session"
        await broker.close()

    run(loop, scenario())


def test_a_handshakes_claims_records_and_deletes_go_on_the_publish_connection(
    redis: FaultRedis, loop: str
) -> None:
    """The presence writes of many handshakes at once (claims, records, deletes) go as
    one batch on the publish connection: no ``SCRIPT EXISTS`` before each batch (as
    redis-py's pipeline asks); after Redis lost its script cache a claim runs by its
    text; a refused write fails its own caller and the rest of the batch is written."""

    async def scenario() -> None:
        broker, got = await _listening_broker(redis, "events")
        exists = _calls(redis, "script")
        await asyncio.gather(
            *(
                broker.claim_record(f"k{n}", b"c%d rec" % n, 30.0, "events", b"claimed %d" % n)
                for n in range(50)
            ),
            *(broker.put_record(f"p{n}", b"c%d put" % n, None) for n in range(50)),
        )
        assert await broker.get_records(["k0", "k49", "p7"]) == [b"c0 rec", b"c49 rec", b"c7 put"]
        assert 29_000 < int(redis.cli("PTTL", "k3")) <= 30_000
        assert redis.cli("TTL", "p3").strip() == "-1"
        await until(lambda: len(got) == 50, "every claim's event")
        assert got == [("events", b"claimed %d" % n) for n in range(50)]
        assert _calls(redis, "script") == exists, "no SCRIPT EXISTS, no SCRIPT LOAD"

        redis.cli("SCRIPT", "FLUSH")  # as a restarted Redis: NOSCRIPT, then the text
        await broker.claim_record("k0", b"c9 again", None, "events", b"claimed again")
        assert await broker.get_records(["k0"]) == [b"c9 again"]
        # A delete only takes a record its connection still holds.
        await asyncio.gather(broker.delete_record("k0", "c9"), broker.delete_record("k1", "c9"))
        assert await broker.get_records(["k0", "k1"]) == [None, b"c1 rec"]

        await off_loop(lambda: redis.cli("ACL", "SETUSER", "default", "resetkeys", "~p*"))
        results = await asyncio.gather(
            broker.put_record("p1", b"c1 new", None),
            broker.put_record("k1", b"c1 new", None),
            broker.delete_record("p2", "c2"),
            return_exceptions=True,
        )
        await off_loop(lambda: redis.cli("ACL", "SETUSER", "default", "allkeys"))
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], BrokerRefused) and results[1].kind is ErrorKind.NOPERM
        assert await broker.get_records(["p1", "k1", "p2"]) == [b"c1 new", b"c1 rec", None]
        await broker.close()

    run(loop, scenario())


async def _listening_broker(
    redis: FaultRedis, channel: str
) -> tuple[RedisBroker, list[tuple[str, bytes]]]:
    """A started broker subscribed to ``channel``; what arrives goes into the list."""
    broker = RedisBroker(redis.url, control_channel="bushub:node:t")
    got: list[tuple[str, bytes]] = []
    broker.set_handlers(lambda c, d: got.append((c, d)), lambda up: None)
    await broker.start()
    await broker.subscribe(channel)
    await until(lambda: redis.lines("PUBSUB", "CHANNELS", channel) != [], "sub")
    return broker, got
