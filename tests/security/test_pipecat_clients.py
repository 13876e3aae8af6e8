"""The happy path with auth on: real pipecat programs, tokens in the stock proxy's
``headers=``, two hub nodes sharing Redis.

The agent programs are those of ``tests/agents``, run through ``token_agent`` which
hands their stock proxy ``headers={"Authorization": "Bearer <token>"}``. The tokens
come from ``bushub token``, as in the README; the worker's is a glob.
"""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import DIALECTS
from tests.integration.procs import TIMEOUT, AgentProcess
from tests.security.helpers import SECRET, SecureHub, cli_token

pytestmark = pytest.mark.integration

WORKER = "voice-1"
CLIENT = "client-1"
COUNT = 5


@pytest.fixture(scope="module")
def tokens() -> dict[str, str]:
    return {
        WORKER: cli_token("--secret", SECRET, "--agent", "voice-*", "--targets", "client-*"),
        CLIENT: cli_token("--secret", SECRET, "--agent", CLIENT, "--targets", "voice-*"),
    }


class Programs:
    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self._request = request
        self._tmp = tmp_path
        self.procs: list[AgentProcess] = []

    def start(self, label: str, token: str, module: str, *args: str) -> AgentProcess:
        proc = AgentProcess.reported(self._request, self._tmp, label)
        self.procs.append(proc)
        argv = [sys.executable, "-m", "tests.security.token_agent", "--token", token]
        proc.start([*argv, f"tests.agents.{module}", "--timeout", str(TIMEOUT), *args])
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.end()


@pytest.fixture
def programs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Programs]:
    p = Programs(request, tmp_path)
    try:
        yield p
    finally:
        p.stop()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_stock_proxies_with_tokens_in_headers(
    dialect: str, auth_cluster: list[SecureHub], tokens: dict[str, str], programs: Programs
) -> None:
    n1, n2 = auth_cluster
    refused_before = n1.metric("bushub_connections_refused_total") + n2.metric(
        "bushub_connections_refused_total"
    )
    worker = programs.start(
        "worker",
        tokens[WORKER],
        f"{dialect}_worker",
        *("--url", n1.url, "--name", WORKER, "--peer", CLIENT),
        # It outlives the first client: the second one finds it still there.
        *("--on-peer-lost", "keep"),
    )
    client_args = ("--url", n2.url, "--name", CLIENT, "--peer", WORKER, "--count", str(COUNT))
    tasks = programs.start(
        "client-tasks", tokens[CLIENT], f"{dialect}_client", *client_args, "--scenario", "tasks"
    )
    worker.expect("connected", timeout=3 * TIMEOUT)
    tasks.expect_done(timeout=3 * TIMEOUT)
    assert [r["i"] for r in tasks.named("task_result")] == list(range(COUNT))
    assert tasks.wait() == 0

    # Untargeted bridged frames go by the pairing the token allowed.
    frames = programs.start(
        "client-frames", tokens[CLIENT], f"{dialect}_client", *client_args, "--scenario", "frames"
    )
    frames.expect_done(timeout=3 * TIMEOUT)
    result = frames.expect("frames_result")
    assert result["audio"] == COUNT and result["sent_digest"] == result["received_digest"]
    assert frames.wait() == 0
    refused_after = n1.metric("bushub_connections_refused_total") + n2.metric(
        "bushub_connections_refused_total"
    )
    assert refused_after == refused_before
