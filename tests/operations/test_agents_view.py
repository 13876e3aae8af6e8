"""``GET /agents``: cluster-wide presence for operators, behind the admin token."""

import json
import time
from typing import Any

import pytest

from tests.operations.conftest import OpsCluster
from tests.operations.ops import ADMIN_TOKEN, PRESENCE_TTL, OpsNode, recv_frame, ws_connect
from tests.support.messages import encode, task_request
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


async def test_agents_lists_every_agent_of_the_cluster(ops: OpsCluster) -> None:
    n1, n2 = ops.nodes_ready("v1", "v2")
    before = time.time()
    a = await ws_connect(n1.ws_url("a", peer="b", format="json", dialect="subagents"))
    b = await ws_connect(n2.ws_url("b", peer="a", format="msgpack", dialect="pipecat"))
    c = await ws_connect(n2.ws_url("c", format="json"))  # dialect auto, no peer
    after = time.time()
    await recv_frame(a)
    await recv_frame(b)

    expected: dict[str, dict[str, str | None]] = {
        "a": {"node": "v1", "format": "json", "dialect": "subagents", "peer": "b"},
        "b": {"node": "v2", "format": "msgpack", "dialect": "pipecat", "peer": "a"},
        "c": {"node": "v2", "format": "json", "dialect": "auto", "peer": None},
    }

    def rows_of(node: OpsNode) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = node.get_json("/agents", ADMIN_TOKEN)["agents"]
        return rows

    for node in (n1, n2):  # the same cluster-wide view from either node
        assert wait_until(lambda n=node: len(rows_of(n)) == 3)  # type: ignore[misc]
        rows = rows_of(node)
        assert [row["agent"] for row in rows] == ["a", "b", "c"]
        for row in rows:
            since = row.pop("connected_since")
            assert before - 1 <= since <= after + 1, row
            assert row == {"agent": row["agent"], **expected[row["agent"]]}

    # c's first message shows its dialect; the refreshed record says so.
    await c.send(encode(task_request("c", "a", 0)))
    assert wait_until(
        lambda: any(
            r["agent"] == "c" and r["dialect"] == "subagents"
            for r in n1.get_json("/agents", ADMIN_TOKEN)["agents"]
        ),
        timeout=2 * PRESENCE_TTL,
    )

    # A closed socket leaves the view at once (its presence is withdrawn, not expired).
    await a.close()
    assert wait_until(
        lambda: [r["agent"] for r in n2.get_json("/agents", ADMIN_TOKEN)["agents"]] == ["b", "c"],
        timeout=PRESENCE_TTL / 2,
    )
    await b.close()
    await c.close()


def test_agents_needs_the_admin_token(ops: OpsCluster) -> None:
    guarded = ops.node("g1", redis=False)
    off = ops.node("g2", redis=False, flags={"--admin-token": None})
    guarded.wait_ready()
    off.wait_ready()
    assert guarded.get("/agents")[0] == 401
    assert guarded.get("/agents", "wrong")[0] == 401
    assert guarded.get("/agents", ADMIN_TOKEN[:-1])[0] == 401
    assert guarded.get("/agents", ADMIN_TOKEN)[0] == 200
    # Without --admin-token the route is off for everyone.
    assert off.get("/agents")[0] == 403
    assert off.get("/agents", ADMIN_TOKEN)[0] == 403
    assert off.get("/agents", "")[0] == 403


def test_with_redis_away_agents_says_so_and_the_console_shows_the_node_down(
    ops: OpsCluster,
) -> None:
    (node,) = ops.nodes_ready("r1")
    assert ops.redis is not None
    ops.redis.stop()
    assert wait_until(lambda: node.get("/readyz")[0] == 503, timeout=2 * PRESENCE_TTL)
    status, body = node.get("/agents", ADMIN_TOKEN)
    assert status == 503, body
    assert b"the broker did not answer" in body
    status, body = node.get("/api/cluster", ADMIN_TOKEN)
    assert status == 200, body
    [report] = json.loads(body)["nodes"]
    assert report["node"] == "r1" and report["broker"] == "down" and report["ready"] is False
