"""Metrics (docs/protocol.md, Metrics): every contract name is exported, and after known traffic
each counter and gauge holds exactly the value that traffic implies."""

import json
import re

import httpx
import msgpack
from websockets.asyncio.client import ClientConnection

from tests.support.messages import task_request
from tests.unit.bushub.conftest import RunningHub
from tests.unit.bushub.helpers import (
    SUBAGENTS_REGISTRY,
    TIMEOUT,
    as_json,
    frame_message,
    recv_bytes,
)

CONTRACT = {
    "bushub_connections": "gauge",
    "bushub_connections_opened_total": "counter",
    "bushub_connections_closed_total": "counter",
    "bushub_messages_received_total": "counter",
    "bushub_messages_delivered_total": "counter",
    "bushub_messages_dropped_total": "counter",
    "bushub_bytes_received_total": "counter",
    "bushub_bytes_sent_total": "counter",
    "bushub_relay_latency_seconds": "histogram",
    "bushub_redis_up": "gauge",
    "bushub_redis_reconnects_total": "counter",
    "bushub_agents": "gauge",
}


async def test_metrics_endpoint_exports_every_contract_name(node: RunningHub) -> None:
    async with (
        node.connect("secret-agent-name"),
        httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as http,
    ):
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    # prometheus_client names a counter family with or without "_total" by version.
    types.update({f"{name}_total": kind for name, kind in types.items() if kind == "counter"})
    missing = {name: kind for name, kind in CONTRACT.items() if types.get(name) != kind}
    assert not missing, f"not exported with the contract's type: {missing}"
    for name in CONTRACT:
        assert re.search(rf"^{name}(_count|_bucket)?(\{{.*\}})? ", text, re.MULTILINE), name
    # Agent names are never labels.
    assert "secret-agent-name" not in text
    assert node.metric("bushub_redis_up") == 1


async def test_metrics_by_value_after_known_traffic(node: RunningHub) -> None:
    sent: list[bytes] = []  # every frame clients send
    got: list[bytes] = []  # every frame clients receive
    # "keep": a must outlive its peer b here without a peer-lost close.
    async with node.connect("a", peer="b", dialect="subagents", on_peer_lost="keep") as a:
        await node.wait_metric("bushub_connections", 1)
        assert node.metric("bushub_agents") == 1
        async with (
            node.connect("b", peer="a", dialect="subagents") as b,
            node.connect("m", format="msgpack") as m,
        ):
            await node.wait_metric("bushub_connections", 3)
            assert node.metric("bushub_agents") == 3
            # One registry message each, made by the hub: delivered, not relayed.
            for ws in (a, b):
                data = await recv_bytes(ws)
                assert json.loads(data)["__type__"] == SUBAGENTS_REGISTRY
                got.append(data)

            async def relay(
                sender: ClientConnection, frame: bytes, receiver: ClientConnection
            ) -> None:
                await sender.send(frame)
                sent.append(frame)
                got.append(await recv_bytes(receiver))

            for seq in range(5):  # a -> b, targeted
                await relay(a, as_json(task_request("a", "b", seq=seq)), b)
            for _ in range(3):  # b -> a, untargeted to its peer
                await relay(b, as_json(frame_message("b", b"\x01" * 100)), a)
            for seq in range(2):  # MsgPack m -> JSON b
                tree = task_request("m", "b", seq=seq)
                await relay(m, msgpack.packb(tree, use_bin_type=True), b)
            await relay(b, as_json(task_request("b", "m")), m)  # JSON b -> MsgPack m

            for frame in (b"{garbage", as_json(task_request("a", "nobody"))):
                await a.send(frame)
                sent.append(frame)
            await node.wait_metric("bushub_messages_dropped_total", 1, reason="undeliverable")
            await node.wait_metric("bushub_messages_dropped_total", 1, reason="malformed")

            assert node.metric("bushub_messages_received_total", format="json") == 5 + 3 + 1 + 2
            assert node.metric("bushub_messages_received_total", format="msgpack") == 2
            assert node.metric("bushub_messages_delivered_total", format="json") == 2 + 5 + 3 + 2
            assert node.metric("bushub_messages_delivered_total", format="msgpack") == 1
            assert node.metric_sum("bushub_messages_dropped_total") == 2
            assert node.metric("bushub_bytes_received_total") == sum(map(len, sent))
            assert node.metric("bushub_bytes_sent_total") == sum(map(len, got))
            # Relayed messages only: the hub's own registry messages are not relays.
            assert node.metric("bushub_relay_latency_seconds_count") == 5 + 3 + 2 + 1
            assert node.metric("bushub_connections_opened_total") == 3
        await node.wait_metric("bushub_connections", 1)
        assert node.metric("bushub_agents") == 1
    await node.wait_metric("bushub_connections", 0)
    assert node.metric("bushub_agents") == 0
    assert node.metric("bushub_connections_closed_total", reason="client_closed") == 3
    assert node.metric_sum("bushub_connections_closed_total") == 3
