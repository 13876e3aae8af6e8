"""Stock pipecat clients on different hub nodes reach each other through Redis.

In every test the worker program dials node 1 and the client program dials node 2; both
use the libraries' stock WebSocket client proxy, once with pipecat-ai-subagents and once
with pipecat core (the ``dialect`` fixture). The client program checks what it receives
and reports ``done``; the test also checks what both programs report.
"""

import pytest

from tests.agents._common import audio_chunk, digest
from tests.integration.conftest import Agents, Cluster
from tests.integration.procs import TIMEOUT, HubNode

pytestmark = pytest.mark.integration

COUNT = 50


def test_task_round_trips_arrive_in_order(
    dialect: str, two_nodes: list[HubNode], agents: Agents
) -> None:
    n1, n2 = two_nodes
    agents.worker(dialect, n1)
    client = agents.client(dialect, n2, "tasks", "--count", str(COUNT))

    client.expect_done(timeout=3 * TIMEOUT)
    results = client.named("task_result")
    assert [r["i"] for r in results] == list(range(COUNT))
    assert [r["counter"] for r in results] == list(range(1, COUNT + 1))
    # Then COUNT requests sent back to back reach the worker in the order sent.
    burst = client.expect("burst_result")
    assert (burst["first"], burst["last"]) == (COUNT + 1, 2 * COUNT)
    assert client.wait() == 0


def test_task_updates_and_streaming(dialect: str, two_nodes: list[HubNode], agents: Agents) -> None:
    n1, n2 = two_nodes
    agents.worker(dialect, n1)
    client = agents.client(dialect, n2, "stream", "--count", "5")

    client.expect_done(timeout=2 * TIMEOUT)
    kinds = [e["type"] for e in client.named("stream_event")]
    assert kinds == ["update", "stream_start", *["stream_data"] * 5, "stream_end"]
    seqs = [e["data"]["seq"] for e in client.named("stream_event") if e["type"] == "stream_data"]
    assert seqs == list(range(5))
    # Updates the requester asked for, one per request.
    updates = [e["data"] for e in client.named("progress_update")]
    assert updates == [{"requested": i} for i in range(3)]


def test_task_cancel_reaches_the_worker(
    dialect: str, two_nodes: list[HubNode], agents: Agents
) -> None:
    n1, n2 = two_nodes
    worker = agents.worker(dialect, n1)
    client = agents.client(dialect, n2, "cancel")

    started = worker.expect("task_started", name="slow")
    cancelled = worker.expect("task_cancelled", task_id=started["task_id"])
    assert cancelled["reason"] == "client-cancel"
    client.expect("cancel_confirmed", task_id=started["task_id"])
    client.expect_done()


def test_activation_and_deactivation(
    dialect: str, two_nodes: list[HubNode], agents: Agents
) -> None:
    n1, n2 = two_nodes
    worker = agents.worker(dialect, n1)
    client = agents.client(dialect, n2, "lifecycle", "--rounds", "2")

    client.expect_done(timeout=2 * TIMEOUT)
    # The worker's last line may still be on its way through the pipe when the
    # client is done (it saw the worker's answer to it first).
    worker.expect("activated", args={"metadata": {"round": 1}})
    seen = [
        (e["event"], e.get("args"))
        for e in worker.events
        if e["event"] in ("activated", "deactivated")
    ]
    assert seen == [
        ("activated", None),  # at start
        ("deactivated", None),
        ("activated", {"metadata": {"round": 0}}),
        ("deactivated", None),
        ("activated", {"metadata": {"round": 1}}),
    ]


@pytest.mark.parametrize(
    ("scenario", "worker_event", "reason"),
    [("end", "end_requested", "client-end"), ("cancel-agent", "cancel_requested", "client-cancel")],
)
def test_end_and_cancel_messages(
    dialect: str,
    two_nodes: list[HubNode],
    agents: Agents,
    scenario: str,
    worker_event: str,
    reason: str,
) -> None:
    n1, n2 = two_nodes
    worker = agents.worker(dialect, n1)
    client = agents.client(dialect, n2, scenario)

    worker.expect(worker_event, source="client", reason=reason)
    worker.expect("finished")
    assert worker.wait() == 0
    # The worker left for good: the hub closes the client's socket after the grace period.
    assert client.expect("disconnected", timeout=2 * TIMEOUT)["code"] == 4002
    client.expect_done()


def test_bridged_frames_both_ways_with_audio_intact(
    dialect: str, two_nodes: list[HubNode], agents: Agents
) -> None:
    n1, n2 = two_nodes
    agents.worker(dialect, n1)
    client = agents.client(dialect, n2, "frames", "--count", str(COUNT))

    client.expect_done(timeout=2 * TIMEOUT)
    result = client.expect("frames_result")
    expected = digest([audio_chunk(i) for i in range(COUNT)])
    assert (result["audio"], result["text"]) == (COUNT, COUNT)
    assert result["sent_digest"] == result["received_digest"] == expected


def test_single_node_without_redis(dialect: str, cluster: Cluster, agents: Agents) -> None:
    (node,) = cluster.start(1, redis=False)
    agents.worker(dialect, node)
    client = agents.client(dialect, node, "tasks", "--count", "20")

    client.expect_done(timeout=2 * TIMEOUT)
    assert [r["counter"] for r in client.named("task_result")] == list(range(1, 21))
    assert client.wait() == 0
