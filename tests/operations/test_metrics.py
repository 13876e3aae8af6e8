"""Known traffic through two real nodes, then every counter and gauge checked by value.

Agent ``a`` (JSON) is on node 1 and paired with ``b`` (MsgPack) on node 2; ``c`` (JSON,
no peer) is on node 1. Each node's ``/metrics`` is scraped and compared with exact
numbers derived from what the raw WebSocket clients sent and received.
"""

import pytest
from websockets.exceptions import InvalidStatus

from tests.operations.conftest import OpsCluster
from tests.operations.ops import (
    Samples,
    frame_message,
    recv_frame,
    registry_from_client,
    wait_for_metrics,
    ws_connect,
)
from tests.support.messages import decode, encode, task_request

pytestmark = pytest.mark.integration

N_TARGETED = 12  # a -> b with target=b
M_UNTARGETED = 7  # a -> (peer) b, BusFrameMessage without target
R_REPLIES = 9  # b -> a with target=a
MAX_MESSAGE_BYTES = 4096

ZERO_COUNTERS = (
    "bushub_connections",
    "bushub_agents",
    "bushub_connections_opened_total",
    "bushub_bytes_received_total",
    "bushub_bytes_sent_total",
    "bushub_relay_latency_seconds_count",
    "bushub_redis_reconnects_total",
)


def gauges(s: Samples) -> tuple[float, float, float]:
    """(connections, agents, opened) on one node."""
    return (
        s.value("bushub_connections"),
        s.value("bushub_agents"),
        s.value("bushub_connections_opened_total"),
    )


def closed(s: Samples) -> float:
    """Closes counted on one node (the counter moves just after the gauges)."""
    return total(s, "bushub_connections_closed_total", "reason")


def total(s: Samples, name: str, label: str) -> float:
    return sum(s.by_label(name, label).values())


async def test_counters_and_gauges_by_value(ops: OpsCluster) -> None:
    n1, n2 = ops.nodes_ready("m1", "m2", flags={"--max-message-bytes": str(MAX_MESSAGE_BYTES)})

    # Before any traffic: everything at zero, the broker up, known labels exported.
    for node in (n1, n2):
        s = node.metrics()
        for name in ZERO_COUNTERS:
            assert s.value(name) == 0, (node.node_id, name)
        assert s.value("bushub_redis_up") == 1
        assert s.nonzero("bushub_messages_dropped_total", "reason") == {}
        assert set(s.by_label("bushub_messages_received_total", "format")) == {"json", "msgpack"}
        assert {"client_closed", "draining", "taken_over", "peer_lost", "slow_consumer"} <= set(
            s.by_label("bushub_connections_closed_total", "reason")
        )

    sent_n1: list[bytes] = []  # every frame a client on node 1 sent
    sent_n2: list[bytes] = []
    got_a: list[bytes] = []  # every frame node 1 wrote to a
    got_b: list[bytes] = []

    # Connections open: the gauges rise one by one.
    a = await ws_connect(
        n1.ws_url("a", peer="b", format="json", dialect="subagents", on_peer_lost="keep")
    )
    s1 = wait_for_metrics(n1, lambda s: s.value("bushub_connections") == 1)
    assert gauges(s1) == (1, 1, 1)
    c = await ws_connect(n1.ws_url("c", format="json", dialect="subagents"))
    s1 = wait_for_metrics(n1, lambda s: s.value("bushub_connections") == 2)
    assert gauges(s1) == (2, 2, 2)

    # A bad-parameters handshake on node 2 is refused with 403 before any upgrade.
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(n2.ws_url("b", format="xml"))
    assert refused.value.response.status_code == 403

    b = await ws_connect(
        n2.ws_url("b", peer="a", format="msgpack", dialect="subagents", on_peer_lost="keep")
    )
    s2 = wait_for_metrics(n2, lambda s: s.value("bushub_connections") == 1)
    assert gauges(s2) == (1, 1, 1)

    # The hubs announce each peer once (dialect given, so one registry message each).
    got_b.append(await recv_frame(b))
    got_a.append(await recv_frame(a))
    assert decode(got_b[0])["__data__"]["agents"][0]["__data__"]["name"] == "a"
    assert decode(got_a[0])["__data__"]["agents"][0]["__data__"]["name"] == "b"

    # Relayed traffic: a -> b (targeted, then untargeted), b -> a.
    audio = bytes(range(256)) * 2
    for i in range(N_TARGETED):
        sent_n1.append(encode(task_request("a", "b", i)))
        await a.send(sent_n1[-1])
    for i in range(M_UNTARGETED):
        sent_n1.append(encode(frame_message("a", i, audio)))
        await a.send(sent_n1[-1])
    for i in range(R_REPLIES):
        sent_n2.append(encode(task_request("b", "a", i), "msgpack"))
        await b.send(sent_n2[-1])
    for _ in range(N_TARGETED + M_UNTARGETED):
        got_b.append(await recv_frame(b))
    for _ in range(R_REPLIES):
        got_a.append(await recv_frame(a))

    at_b = [decode(f) for f in got_b[1:]]
    assert [m["__data__"]["payload"]["seq"] for m in at_b[:N_TARGETED]] == list(range(N_TARGETED))
    assert [m["__data__"]["seq"] for m in at_b[N_TARGETED:]] == list(range(M_UNTARGETED))
    assert all(m["__data__"]["audio"] == audio for m in at_b[N_TARGETED:])  # MsgPack bin
    at_a = [decode(f) for f in got_a[1:]]
    assert [m["__data__"]["payload"]["seq"] for m in at_a] == list(range(R_REPLIES))

    # Known drops, all on node 1 (a's format is confirmed JSON by now).
    oversize = encode(task_request("a", "b", 999) | {"pad": "x" * MAX_MESSAGE_BYTES})
    assert len(oversize) > MAX_MESSAGE_BYTES
    drops = [
        oversize,  # oversize
        b'{"__type__": "pipecat_subagents.bus.mess',  # malformed
        encode(registry_from_client("a")),  # registry
        encode(task_request("a", "ghost", 0)),  # undeliverable: nobody holds "ghost"
    ]
    for frame in drops:
        sent_n1.append(frame)
        await a.send(frame)
    sent_n1.append(encode(frame_message("c", 0, audio)))  # no_route: c has no peer
    await c.send(sent_n1[-1])

    expected_drops_n1 = {
        "oversize": 1,
        "malformed": 1,
        "registry": 1,
        "undeliverable": 1,
        "no_route": 1,
    }
    s1 = wait_for_metrics(
        n1,
        lambda s: (
            s.nonzero("bushub_messages_dropped_total", "reason") == expected_drops_n1
            and s.value("bushub_messages_delivered_total", format="json") == R_REPLIES + 1
        ),
    )
    s2 = wait_for_metrics(
        n2,
        lambda s: (
            s.value("bushub_messages_delivered_total", format="msgpack")
            == N_TARGETED + M_UNTARGETED + 1
        ),
    )

    # Node 1: every frame a and c sent was received, in JSON.
    assert s1.by_label("bushub_messages_received_total", "format") == {
        "json": len(sent_n1),
        "msgpack": 0,
    }
    assert len(sent_n1) == N_TARGETED + M_UNTARGETED + len(drops) + 1
    # Delivered on node 1: b's replies plus the one registry message the hub made for a.
    assert s1.by_label("bushub_messages_delivered_total", "format") == {
        "json": R_REPLIES + 1,
        "msgpack": 0,
    }
    assert s1.nonzero("bushub_messages_dropped_total", "reason") == expected_drops_n1
    assert s1.value("bushub_bytes_received_total") == sum(map(len, sent_n1))
    assert s1.value("bushub_bytes_sent_total") == sum(map(len, got_a))
    # Latency is observed for relayed frames only, on the delivering node.
    assert s1.value("bushub_relay_latency_seconds_count") == R_REPLIES
    assert s1.value("bushub_relay_latency_seconds_bucket", le="+Inf") == R_REPLIES
    assert 0 < s1.value("bushub_relay_latency_seconds_sum") < R_REPLIES * 1.0

    # Node 2: b's replies received in MsgPack; a's relayed frames plus one registry
    # message delivered; nothing dropped.
    assert s2.by_label("bushub_messages_received_total", "format") == {
        "json": 0,
        "msgpack": R_REPLIES,
    }
    assert s2.by_label("bushub_messages_delivered_total", "format") == {
        "json": 0,
        "msgpack": N_TARGETED + M_UNTARGETED + 1,
    }
    assert s2.nonzero("bushub_messages_dropped_total", "reason") == {}
    assert s2.value("bushub_bytes_received_total") == sum(map(len, sent_n2))
    assert s2.value("bushub_bytes_sent_total") == sum(map(len, got_b))
    assert s2.value("bushub_relay_latency_seconds_count") == N_TARGETED + M_UNTARGETED
    assert s2.value("bushub_relay_latency_seconds_bucket", le="+Inf") == N_TARGETED + M_UNTARGETED
    assert s2.value("bushub_connections_refused_total", reason="bad_parameters") == 1
    assert s1.nonzero("bushub_connections_refused_total", "reason") == {}

    # The identity, cluster-wide: every frame received from a client on any node is
    # either delivered to a client on some node or dropped with a reason on some node:
    #   sum(received) == sum(delivered) - hub-made registry messages + sum(dropped)
    hub_made = 2  # one registry message to a, one to b
    received = sum(total(s, "bushub_messages_received_total", "format") for s in (s1, s2))
    delivered = sum(total(s, "bushub_messages_delivered_total", "format") for s in (s1, s2))
    dropped = sum(total(s, "bushub_messages_dropped_total", "reason") for s in (s1, s2))
    assert received == delivered - hub_made + dropped == len(sent_n1) + len(sent_n2)
    # Per publishing node: node 1 published N+M frames that node 2 delivered, and
    # dropped the rest; node 2 published R frames that node 1 delivered.
    assert total(s1, "bushub_messages_received_total", "format") == (
        s2.value("bushub_relay_latency_seconds_count")
        + total(s1, "bushub_messages_dropped_total", "reason")
    )
    assert total(s2, "bushub_messages_received_total", "format") == s1.value(
        "bushub_relay_latency_seconds_count"
    ) + total(s2, "bushub_messages_dropped_total", "reason")

    for s in (s1, s2):
        assert s.value("bushub_redis_up") == 1
        assert s.value("bushub_redis_reconnects_total") == 0
        assert s.nonzero("bushub_connections_closed_total", "reason") == {}

    # Connections close: the gauges fall, each close counted as client_closed.
    await a.close()
    s1 = wait_for_metrics(n1, lambda s: closed(s) == 1)
    assert gauges(s1) == (1, 1, 2)
    assert s1.nonzero("bushub_connections_closed_total", "reason") == {"client_closed": 1}
    await c.close()
    await b.close()
    s1 = wait_for_metrics(n1, lambda s: closed(s) == 2)
    s2 = wait_for_metrics(n2, lambda s: closed(s) == 1)
    assert gauges(s1) == (0, 0, 2)
    assert gauges(s2) == (0, 0, 1)
    assert s1.nonzero("bushub_connections_closed_total", "reason") == {"client_closed": 2}
    assert s2.nonzero("bushub_connections_closed_total", "reason") == {"client_closed": 1}
    # Nothing moved after the closes: no late deliveries or drops.
    assert s1.value("bushub_messages_delivered_total", format="json") == R_REPLIES + 1
    assert s2.value("bushub_messages_delivered_total", format="msgpack") == (
        N_TARGETED + M_UNTARGETED + 1
    )
    assert s1.nonzero("bushub_messages_dropped_total", "reason") == expected_drops_n1
    assert s2.nonzero("bushub_messages_dropped_total", "reason") == {}
