"""The node registry (heartbeats, dead nodes, claim indexes taken over for cleanup),
the same on a real redis-server as in the in-process broker: every status a beat can
answer, a dead node's index handed to one cleaner only, a node that beats while it is
cleaned up kept out until the cleaner is done, and a cleaner that gives up."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from bushub.broker.base import Broker
from bushub.broker.memory import MemoryBroker
from bushub.broker.nodes import BeatStatus, NodeRegistry
from bushub.broker.redis import RedisBroker
from buswire.channels import node_index_key
from tests.integration.realredis import running_redis
from tests.reliability.harness import FaultRedis

TTL = 0.3
# Long enough for a beat to lapse, on a loaded machine too.
LAPSE = TTL + 0.2


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis(kind: str, tmp_path: Path) -> Iterator[FaultRedis | None]:
    if kind == "memory":
        yield None
    else:
        yield from running_redis(tmp_path)


async def _broker(redis: FaultRedis | None) -> AsyncIterator[Broker]:
    broker: Broker = (
        MemoryBroker() if redis is None else RedisBroker(redis.url, control_channel="bushub:ctl")
    )
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


def _scenario(redis: FaultRedis | None, test: Callable[[NodeRegistry], Awaitable[None]]) -> None:
    async def main() -> None:
        async for broker in _broker(redis):
            await test(broker.nodes)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_node_is_absent_then_live_then_lapsed(redis: FaultRedis | None) -> None:
    async def test(nodes: NodeRegistry) -> None:
        assert (await nodes.beat("a", TTL)).status is BeatStatus.ABSENT
        assert (await nodes.beat("a", TTL)).status is BeatStatus.LIVE
        await asyncio.sleep(LAPSE)
        # Another node's beat sees it dead; its own next beat says it had lapsed.
        assert (await nodes.beat("b", TTL)).dead == {"a"}
        assert (await nodes.beat("a", TTL)).status is BeatStatus.LAPSED
        assert (await nodes.beat("b", TTL)).dead == frozenset()

    _scenario(redis, test)


def test_a_dead_nodes_index_goes_to_one_cleaner(redis: FaultRedis | None) -> None:
    async def test(nodes: NodeRegistry) -> None:
        await nodes.beat("a", TTL)
        await nodes.enlist("a", ["c1 w", "c2 x", "c3 y"])
        await nodes.delist("a", "c3 y")
        assert await nodes.take("a", 5.0) is None  # alive: nothing to take
        await asyncio.sleep(LAPSE)
        assert sorted(await nodes.take("a", 5.0) or []) == ["c1 w", "c2 x"]
        assert await nodes.take("a", 5.0) is None  # held by the first cleaner
        # Still listed dead while being cleaned; not registered again by its beat.
        assert (await nodes.beat("b", TTL)).dead == {"a"}
        assert (await nodes.beat("a", TTL)).status is BeatStatus.COLLECTING
        await nodes.collected("a", 0.3)
        # Listed dead a while longer, for nodes whose beat comes after the cleanup.
        assert (await nodes.beat("b", TTL)).dead == {"a"}
        assert await nodes.take("a", 5.0) is None  # gone: nothing to take
        await asyncio.sleep(0.35)
        assert (await nodes.beat("b", TTL)).dead == frozenset()
        # Cleaned up after: it comes back as a new node, with an empty index.
        assert (await nodes.beat("a", TTL)).status is BeatStatus.ABSENT
        await asyncio.sleep(LAPSE)
        await nodes.beat("b", TTL)
        assert await nodes.take("a", 5.0) == []

    _scenario(redis, test)


def test_a_node_cleaned_up_after_and_back_is_not_listed_dead(redis: FaultRedis | None) -> None:
    async def test(nodes: NodeRegistry) -> None:
        await nodes.beat("a", TTL)
        await asyncio.sleep(LAPSE)
        assert await nodes.take("a", 5.0) == []
        await nodes.collected("a", 60.0)
        assert (await nodes.beat("b", TTL)).dead == {"a"}
        assert (await nodes.beat("a", TTL)).status is BeatStatus.ABSENT
        assert (await nodes.beat("b", TTL)).dead == frozenset()

    _scenario(redis, test)


def test_a_cleaner_that_gives_up_leaves_the_index_to_the_next(redis: FaultRedis | None) -> None:
    async def test(nodes: NodeRegistry) -> None:
        await nodes.beat("a", TTL)
        await nodes.enlist("a", ["c1 w"])
        await asyncio.sleep(LAPSE)
        assert await nodes.take("a", 0.2) == ["c1 w"]
        await asyncio.sleep(0.3)
        # The hold lapsed: another cleaner takes what the first did not finish.
        assert await nodes.take("a", 5.0) == ["c1 w"]

    _scenario(redis, test)


def test_a_node_back_after_its_cleaner_gave_up_keeps_its_claims(
    redis: FaultRedis | None,
) -> None:
    async def test(nodes: NodeRegistry) -> None:
        await nodes.beat("a", TTL)
        await nodes.enlist("a", ["c1 w"])
        await asyncio.sleep(LAPSE)
        assert await nodes.take("a", 0.2) == ["c1 w"]
        await asyncio.sleep(0.3)
        # Back before anyone took it again: its claims are listed as its own again.
        assert (await nodes.beat("a", TTL)).status is BeatStatus.ABSENT
        assert (await nodes.beat("b", TTL)).dead == frozenset()
        await asyncio.sleep(LAPSE)
        await nodes.beat("b", TTL)
        assert await nodes.take("a", 5.0) == ["c1 w"]

    _scenario(redis, test)


def test_a_node_that_leaves_is_neither_live_nor_dead(redis: FaultRedis | None) -> None:
    async def test(nodes: NodeRegistry) -> None:
        await nodes.beat("a", TTL)
        await nodes.enlist("a", ["c1 w"])
        await nodes.leave("a")
        await asyncio.sleep(LAPSE)
        assert (await nodes.beat("b", TTL)).dead == frozenset()
        assert await nodes.take("a", 5.0) is None

    _scenario(redis, test)


def test_a_node_restarted_under_its_name_gets_back_what_it_left(redis: FaultRedis | None) -> None:
    async def test(nodes: NodeRegistry) -> None:
        await nodes.beat("a", TTL)
        await nodes.enlist("a", ["c1 w", "c2 x"])
        assert sorted(await nodes.reset("a")) == ["c1 w", "c2 x"]
        assert await nodes.reset("a") == []

    _scenario(redis, test)


def _calls(redis: FaultRedis, command: str) -> int:
    for line in redis.cli("INFO", "commandstats").splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def _stat(redis: FaultRedis, name: str) -> int:
    for line in redis.cli("INFO", "stats").splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split(":")[1])
    raise AssertionError(f"no {name} in INFO stats")


def test_sockets_ending_together_are_withdrawn_in_few_round_trips(tmp_path: Path) -> None:
    """200 sockets ending at once (a drain, a load balancer restarted): their records
    and claims are deleted in one pipeline, each only where its connection still owns
    it, and their index entries in one SREM; one command a socket sent on its own
    cost each a round trip through the command pool."""
    redis_iter = running_redis(tmp_path)
    redis = next(redis_iter)
    try:

        async def main() -> None:
            async for broker in _broker(redis):
                keys = [f"bushub:agent:{{e{n}}}" for n in range(200)]
                await asyncio.gather(
                    *(broker.nodes.enlist("n1", [f"c{n} e{n}"]) for n in range(200))
                )
                for n, key in enumerate(keys):
                    # The last 10 are held by a newer connection elsewhere.
                    await broker.put_record(key, b"c%d x" % (n if n < 190 else n + 1000), None)
                reads = _stat(redis, "total_reads_processed")
                srem = _calls(redis, "srem")
                await asyncio.gather(
                    *(broker.delete_record(k, f"c{n}") for n, k in enumerate(keys)),
                    *(broker.nodes.delist("n1", f"c{n} e{n}") for n in range(200)),
                )
                assert _calls(redis, "srem") - srem == 1
                # The test's own INFO calls are reads too; 400 calls one by one were
                # at least a read each.
                assert _stat(redis, "total_reads_processed") - reads < 20
                left = await broker.get_records(keys)
                assert [v is not None for v in left] == [False] * 190 + [True] * 10
                assert redis.lines("SMEMBERS", node_index_key("n1")) == []

        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        for _ in redis_iter:
            pass


def test_a_storm_of_claims_is_sent_as_few_commands(tmp_path: Path) -> None:
    """200 handshakes at once: their reads are one MGET, their claims one SADD, their
    records one pipeline."""
    redis_iter = running_redis(tmp_path)
    redis = next(redis_iter)
    try:

        async def main() -> None:
            async for broker in _broker(redis):
                before = {c: _calls(redis, c) for c in ("mget", "sadd", "set")}
                keys = [f"bushub:agent:{{s{n}}}" for n in range(200)]
                await asyncio.gather(
                    *(broker.nodes.enlist("n1", [f"c{n} s{n}"]) for n in range(200))
                )
                await asyncio.gather(*(broker.put_record(k, b"c x", None) for k in keys))
                got = await asyncio.gather(*(broker.get_records([k]) for k in keys))
                assert got == [[b"c x"]] * 200
                after = {c: _calls(redis, c) for c in ("mget", "sadd", "set")}
                assert {c: after[c] - before[c] for c in after} == {
                    "mget": 1,
                    "sadd": 1,
                    "set": 200,
                }
                assert _calls(redis, "exec") == 0  # a pipeline, not a transaction

        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        for _ in redis_iter:
            pass
