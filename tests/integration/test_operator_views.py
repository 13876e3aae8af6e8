"""The operator API spans the cluster, on one Redis and on a Redis Cluster (sharded
pub/sub): every node's sockets in ``/api/cluster`` from any node, a tap served by one
node seeing what enters at another, ``POST /api/send`` reaching an agent elsewhere."""

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.integration.conftest import BROKERS
from tests.integration.procs import TIMEOUT, RedisServer
from tests.integration.redis_cluster import RedisClusterServers
from tests.operations.ops import ADMIN_TOKEN, OpsNode, close_clients, ws_connect
from tests.support.messages import encode, task_request
from tests.support.reports import register_log
from tests.support.waiting import until

pytestmark = pytest.mark.integration

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(params=BROKERS)
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[OpsNode, OpsNode]]:
    """Two nodes with the admin token, on one Redis or on the shared Redis Cluster."""
    redis: RedisServer | None = None
    if request.param == "redis-cluster":
        servers: RedisClusterServers = request.getfixturevalue("shared_redis_cluster")
        servers.flush()
        url = servers.url
    else:
        redis = RedisServer(tmp_path / "redis.log")
        register_log(request, "redis log", redis.log_path)
        redis.start()
        url = redis.url
    pair = [OpsNode(f"v{i}", tmp_path / f"hub-v{i}.log", url) for i in (1, 2)]
    for node in pair:
        register_log(request, f"hub {node.node_id} log", node.log_path)
        node.spawn()
    try:
        for node in pair:
            node.wait_ready()
        yield pair[0], pair[1]
    finally:
        for node in pair:
            node.stop()
        if redis is not None:
            redis.stop()


async def cluster_view(client: httpx.AsyncClient, node: OpsNode) -> dict[str, Any]:
    response = await client.get(f"{node.http_url}/api/cluster", headers=ADMIN)
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def tap_events(
    client: httpx.AsyncClient, node: OpsNode, agent: str
) -> AsyncIterator[dict[str, Any]]:
    async with client.stream("GET", f"{node.http_url}/api/tap/{agent}", headers=ADMIN) as tap:
        assert tap.status_code == 200
        async for line in tap.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])


async def next_message(ws: ClientConnection) -> bytes:
    """The next frame that is not a presence announcement."""
    while True:
        frame = await ws.recv()
        assert isinstance(frame, bytes)
        if b"RegistryMessage" not in frame:
            return frame


async def test_console_tap_and_send_span_the_cluster(nodes: tuple[OpsNode, OpsNode]) -> None:
    v1, v2 = nodes
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        a = await ws_connect(v1.ws_url("a", format="json"))
        b = await ws_connect(v2.ws_url("b", peer="a", format="msgpack"))

        def placed(view: dict[str, Any]) -> dict[str, str]:
            return {row["agent"]: row["node"] for row in view["agents"]}

        # Either node shows both nodes and both sockets (the other's within a second).
        for node in (v1, v2):
            view: dict[str, Any] = {}

            async def complete(node: OpsNode = node) -> bool:
                nonlocal view
                view = await cluster_view(client, node)
                return placed(view) == {"a": "v1", "b": "v2"}

            assert await until(complete, TIMEOUT, 0.2), view
            assert [n["node"] for n in view["nodes"]] == ["v1", "v2"]
            assert all(n["ready"] and n["broker"] == "up" for n in view["nodes"])

        # A tap served by v1 sees what enters at v1 and at v2.
        events = tap_events(client, v1, "b")
        assert (await anext(events))["kind"] == "open"
        # v1, serving the tap, watches at once; Redis has sent v2 the notice, but a busy
        # v2 may read b's frame first when both arrive in one turn of its loop.
        await a.send(encode(task_request("a", "b", 1)))
        await asyncio.sleep(0.2)
        await b.send(encode(task_request("b", "a", 2), "msgpack"))
        seen = [await asyncio.wait_for(anext(events), TIMEOUT) for _ in range(2)]
        got = sorted((e["node"], e["direction"], e["format"]) for e in seen)
        assert got == [("v1", "received", "json"), ("v2", "sent", "msgpack")], seen
        await events.aclose()

        # A send to v2 reaches a on v1.
        message = encode(task_request("backend", "a", 3))
        response = await client.post(f"{v2.http_url}/api/send", content=message, headers=ADMIN)
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": True, "target": "a", "nodes": 1}
        frames = [await asyncio.wait_for(next_message(a), TIMEOUT) for _ in range(2)]
        assert frames[1] == message  # after b's task request

        # A closed socket leaves the view.
        await b.close()

        async def gone() -> bool:
            return placed(await cluster_view(client, v1)) == {"a": "v1"}

        assert await until(gone, TIMEOUT, 0.2), await cluster_view(client, v1)
    await close_clients()
