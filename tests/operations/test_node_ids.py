"""A node started with the --node-id of one that is running waits, serving nothing,
and the running node keeps its agents; a restart of a node (its earlier process gone)
starts at once and cleans up after it."""

import asyncio
import signal

import pytest

from tests.integration.procs import TIMEOUT
from tests.operations.conftest import OpsCluster
from tests.operations.ops import ADMIN_TOKEN, OpsNode, ws_connect
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def agents(node: OpsNode) -> list[str]:
    return [row["agent"] for row in node.get_json("/agents", ADMIN_TOKEN)["agents"]]


async def test_a_second_node_with_a_running_nodes_id_waits_and_harms_nothing(
    ops: OpsCluster,
) -> None:
    first, other = ops.nodes_ready("twin", "other")
    held = await ws_connect(first.ws_url("held", peer="watcher"))
    watcher = await ws_connect(other.ws_url("watcher", peer="held", on_peer_lost="close"))
    await asyncio.wait_for(watcher.recv(), TIMEOUT)  # told of its peer
    assert wait_until(lambda: "held" in agents(first))

    twin = ops.node("twin", label="twin-again")
    await asyncio.sleep(4.0)  # a start, a presence TTL and a peer grace
    # The running node's agent was not taken from presence: its watcher, told to
    # close when its peer is lost, is not closed. (It was cleaned up after as if
    # the running node were an earlier process of the twin's.)
    assert "held" in agents(first)
    assert watcher.close_code is None
    assert "cleaned up after an earlier process" not in twin.log_text()
    assert "another running process is node twin" in twin.log_text()
    assert twin.http_status("/readyz") is None  # not serving at all

    # Once the running one is gone, the waiting one starts (and cleans up after it).
    first.signal(signal.SIGKILL)
    twin.wait_ready()
    assert "node id twin is free now: starting" in twin.log_text()
    await held.close()
    await watcher.close()
