"""Presence and discovery across nodes: restarts, takeovers, peers and nodes that die.

The stock client learns about its peer only from the registry messages the hub sends, and
learns that it is gone only from the hub closing its socket. These tests watch both from
the client program's side while processes and nodes come and go.
"""

import signal
import time

import pytest

from tests.integration.conftest import Agents, Cluster
from tests.integration.procs import (
    PEER_GRACE,
    PRESENCE_REFRESH,
    PRESENCE_TTL,
    TIMEOUT,
    HubNode,
)

pytestmark = pytest.mark.integration

SERVICE_RESTART = 1012
TAKEN_OVER = 4001
PEER_LOST = 4002

# How much later than its due time a close may arrive on a loaded machine.
SLACK = 0.2 * TIMEOUT


def test_worker_restart_is_announced_again(
    dialect: str, two_nodes: list[HubNode], agents: Agents
) -> None:
    n1, n2 = two_nodes
    first_worker = agents.worker(dialect, n1)
    client = agents.client(dialect, n2, "restart", "--count", "5", on_peer_lost="keep")

    first = client.expect("phase_done", phase=0)
    first_worker.kill()
    agents.worker(dialect, n1)

    # The new process is announced under a new runner: @agent_ready fires again.
    second = client.expect("phase_done", phase=1, timeout=2 * TIMEOUT)
    client.expect_done()
    assert second["runner"] != first["runner"]
    assert second["pid"] != first["pid"]
    assert [r["runner"] for r in client.named("ready")] == [first["runner"], second["runner"]]
    assert client.named("disconnected") == []


def test_same_name_twice_the_newer_socket_wins(
    dialect: str, two_nodes: list[HubNode], agents: Agents
) -> None:
    n1, n2 = two_nodes
    agents.worker(dialect, n1)
    # The client activates its proxy a second time, which dials a second socket.
    client = agents.client(dialect, n2, "takeover", "--count", "5")

    client.expect_done(timeout=3 * TIMEOUT)
    assert client.expect("old_socket_closed")["code"] == TAKEN_OVER
    # Work went on over the newer socket with the same worker.
    counters = [r["counter"] for r in client.named("task_result")]
    assert counters == list(range(1, 11))
    assert len(client.named("ready")) == 1


def test_same_name_on_another_node_takes_over(
    dialect: str, cluster: Cluster, agents: Agents
) -> None:
    n1, n2, n3 = cluster.start(3)
    agents.worker(dialect, n1)
    older = agents.client(dialect, n2, "peer-lost")
    older.expect("phase_done")

    newer = agents.client(dialect, n3, "tasks", "--count", "5")
    assert older.expect("disconnected", timeout=2 * TIMEOUT)["code"] == TAKEN_OVER
    newer.expect_done(timeout=2 * TIMEOUT)


def test_peer_gone_for_good_closes_after_the_grace_period(
    dialect: str, two_nodes: list[HubNode], agents: Agents
) -> None:
    n1, n2 = two_nodes
    worker = agents.worker(dialect, n1)
    client = agents.client(dialect, n2, "peer-lost")
    client.expect("phase_done")

    killed_at = time.time()
    worker.kill()
    gone = client.expect("disconnected", timeout=PEER_GRACE + 2 * TIMEOUT)
    elapsed = gone["t"] - killed_at
    assert gone["code"] == PEER_LOST
    assert elapsed >= 0.95 * PEER_GRACE, f"closed {elapsed:.2f}s after the peer left"
    assert elapsed <= PEER_GRACE + SLACK, f"closed {elapsed:.2f}s after the peer left"
    client.expect_done()


def test_killed_node_agents_leave_presence_within_the_bound(
    dialect: str, two_nodes: list[HubNode], agents: Agents
) -> None:
    n1, n2 = two_nodes
    worker = agents.worker(dialect, n1)
    client = agents.client(dialect, n2, "peer-lost")
    client.expect("phase_done")

    killed_at = time.time()
    n1.kill()
    worker.expect("disconnected")
    # The worker's record outlives its node by at most TTL + one refresh; the client,
    # on the surviving node, is closed once that and the grace period have passed.
    bound = PRESENCE_TTL + PRESENCE_REFRESH + PEER_GRACE
    gone = client.expect("disconnected", timeout=bound + 2 * TIMEOUT)
    elapsed = gone["t"] - killed_at
    assert gone["code"] == PEER_LOST
    assert elapsed >= 0.95 * PEER_GRACE, f"closed {elapsed:.2f}s after the node died"
    assert elapsed <= bound + SLACK, f"closed {elapsed:.2f}s after the node died (bound {bound})"
    client.expect_done()


def test_drained_node_closes_with_1012_and_comes_back(
    dialect: str, two_nodes: list[HubNode], agents: Agents
) -> None:
    n1, n2 = two_nodes
    first_worker = agents.worker(dialect, n1)
    client = agents.client(dialect, n2, "restart", "--count", "3", on_peer_lost="keep")
    client.expect("phase_done", phase=0)

    n1.signal(signal.SIGTERM)
    assert first_worker.expect("disconnected")["code"] == SERVICE_RESTART
    assert n1.wait() == 0
    n1.start()  # same port
    # The stock proxy never reconnects: a new worker process takes the name again.
    agents.worker(dialect, n1)
    client.expect("phase_done", phase=1, timeout=2 * TIMEOUT)
    client.expect_done()
