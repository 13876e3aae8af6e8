"""The raw pub/sub connection in sharded mode against a real cluster-enabled
redis-server holding every slot, on asyncio and uvloop: channels of many slots
subscribed in one call (a sharded command's channels must share a slot), messages
dispatched from the read callback in order; a slot taken away reported channel by
channel, and a subscribe refused afterwards reported as such; a refusal met before
the PING surfaces from it as redis-py would have raised it."""

import asyncio
import time
from collections.abc import Iterator

import pytest
from redis.exceptions import ResponseError

from bushub.broker.resp import PublishConnection
from bushub.broker.subscriber import Subscriber
from tests.integration.realredis import LOOPS, off_loop, run
from tests.integration.redis_cluster import ClusterNodeServer
from tests.unit.bushub.helpers import TIMEOUT
from tests.unit.bushub.helpers import wait_until as until

pytestmark = pytest.mark.parametrize("loop", LOOPS)

CHANNELS = [f"bushub:msg:{{{agent}}}" for agent in "abcdefgh"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodeServer]:
    """One cluster node serving all 16384 slots: sharded pub/sub without replicas."""
    tmp = tmp_path_factory.mktemp("sharded")
    server = ClusterNodeServer(tmp / "node.log", tmp / "node")
    server.start()
    try:
        assert server.cli("CLUSTER", "ADDSLOTSRANGE", "0", "16383").strip() == "OK"
        deadline = time.monotonic() + TIMEOUT * 3
        while "cluster_state:ok" not in server.cli("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the cluster node never served its slots"
            time.sleep(0.05)
        yield server
    finally:
        server.stop()


def test_channels_of_many_slots_subscribe_in_one_call(node: ClusterNodeServer, loop: str) -> None:
    async def scenario() -> None:
        slots = {node.cli("CLUSTER", "KEYSLOT", c).strip() for c in CHANNELS}
        assert len(slots) > 1
        got: list[tuple[str, bytes]] = []
        dropped: list[str] = []
        sub = await Subscriber.open(
            "127.0.0.1", node.port, lambda c, d: got.append((c, d)), sharded=True
        )
        sub.on_dropped = dropped.append
        sub.subscribe(CHANNELS)
        await sub.ping()  # no CROSSSLOT: one command per slot
        pub = PublishConnection("127.0.0.1", node.port, command=b"SPUBLISH")
        items = [(CHANNELS[i % len(CHANNELS)], b"%d" % i) for i in range(400)]
        assert await pub.publish_many(items) == [1] * len(items)
        await until(lambda: len(got) == len(items), "every message")
        assert got == items
        # Its own unsubscribe is reported too: the owner tells it from Redis's.
        sub.unsubscribe(CHANNELS[:2])
        await sub.ping()
        assert sorted(dropped) == sorted(CHANNELS[:2])
        sub.close()
        await asyncio.wait_for(sub.lost, 1)
        await pub.close()

    run(loop, scenario())


def test_a_slot_taken_away_is_reported_and_later_subscribes_refused(
    node: ClusterNodeServer, loop: str
) -> None:
    async def scenario() -> None:
        moving, staying = "bushub:msg:{moving}", "bushub:msg:{staying}"
        slot = node.cli("CLUSTER", "KEYSLOT", moving).strip()
        assert slot != node.cli("CLUSTER", "KEYSLOT", staying).strip()
        dropped: list[str] = []
        refused: list[Exception] = []
        sub = await Subscriber.open("127.0.0.1", node.port, lambda c, d: None, sharded=True)
        sub.on_dropped = dropped.append
        sub.on_refused = refused.append
        sub.subscribe([moving, staying])
        await sub.ping()
        await off_loop(lambda: node.cli("CLUSTER", "DELSLOTS", slot))
        try:
            # Redis unsubscribes the slot's channels on its own.
            await until(lambda: dropped == [moving], "the slot's channel to be dropped")
            # A subscribe it refuses later, with nothing waiting, is handed over...
            sub.subscribe([moving])
            await until(lambda: bool(refused), "the refusal")
            assert str(refused[0]).startswith("CLUSTERDOWN")
            # ...and one before a PING is raised from it, as redis-py raises it.
            sub.subscribe([moving])
            with pytest.raises(ResponseError, match="CLUSTERDOWN"):
                await sub.ping()
            assert sub.is_open and dropped == [moving]
        finally:
            await off_loop(lambda: node.cli("CLUSTER", "ADDSLOTS", slot))
            await sub.aclose()

    run(loop, scenario())
