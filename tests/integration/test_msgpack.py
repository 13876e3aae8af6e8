"""Real pipecat clients speaking MsgPack through two hub nodes, and a JSON client with
a MsgPack worker: the hub relays same-format traffic untouched and translates between
the two, for tasks, streams and bridged audio frames."""

import pytest

from tests.agents._common import audio_chunk, digest
from tests.integration.conftest import Agents, Cluster
from tests.integration.procs import TIMEOUT, HubNode

pytestmark = pytest.mark.integration

COUNT = 20
# (worker's format, client's format)
PAIRINGS = [("msgpack", "msgpack"), ("msgpack", "json")]


@pytest.fixture(params=PAIRINGS, ids=["msgpack-both", "json-client-msgpack-worker"])
def formats(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def nodes(cluster: Cluster) -> list[HubNode]:
    return cluster.start(2)


def test_tasks(
    dialect: str, formats: tuple[str, str], nodes: list[HubNode], agents: Agents
) -> None:
    worker_fmt, client_fmt = formats
    agents.worker(dialect, nodes[0], fmt=worker_fmt)
    client = agents.client(
        dialect, nodes[1], "tasks", "--count", str(COUNT), "--format", client_fmt
    )
    client.expect_done(timeout=3 * TIMEOUT)
    assert [r["counter"] for r in client.named("task_result")] == list(range(1, COUNT + 1))


def test_streams(
    dialect: str, formats: tuple[str, str], nodes: list[HubNode], agents: Agents
) -> None:
    worker_fmt, client_fmt = formats
    agents.worker(dialect, nodes[0], fmt=worker_fmt)
    client = agents.client(dialect, nodes[1], "stream", "--count", "5", "--format", client_fmt)
    client.expect_done(timeout=2 * TIMEOUT)
    kinds = [e["type"] for e in client.named("stream_event")]
    assert kinds == ["update", "stream_start", *["stream_data"] * 5, "stream_end"]


def test_bridged_audio_frames(
    dialect: str, formats: tuple[str, str], nodes: list[HubNode], agents: Agents
) -> None:
    worker_fmt, client_fmt = formats
    agents.worker(dialect, nodes[0], fmt=worker_fmt)
    client = agents.client(
        dialect, nodes[1], "frames", "--count", str(COUNT), "--format", client_fmt
    )
    client.expect_done(timeout=2 * TIMEOUT)
    result = client.expect("frames_result")
    expected = digest([audio_chunk(i) for i in range(COUNT)])
    assert (result["audio"], result["text"]) == (COUNT, COUNT)
    assert result["sent_digest"] == result["received_digest"] == expected
