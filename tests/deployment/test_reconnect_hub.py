"""The reconnecting proxies of both dialects, in real agent programs, against real hub
nodes: a takeover and a refused handshake are final (``on_disconnected`` once, no
retry), a node that drains and comes back on the same URL is found again, and the work
goes on. (The load-balancer test covers drains and kills behind nginx, and
test_sessions_faults.py what sessions keep through them.)"""

import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployment.lb import LbHubNode
from tests.integration.procs import TIMEOUT, AgentProcess
from tests.support.reports import register_log

# Bounds time under faults or load: run alone (see the Makefile).
pytestmark = [pytest.mark.integration, pytest.mark.serial]

DIALECTS = ("subagents", "pipecat")


class Setup:
    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.tmp = tmp_path
        self.request = request
        self.nodes: list[LbHubNode] = []
        self.agents: list[AgentProcess] = []
        self.stop_file = tmp_path / "stop"

    def node(self, *extra_args: str) -> LbHubNode:
        node = LbHubNode(f"n{len(self.nodes) + 1}", self.tmp / f"hub{len(self.nodes)}.log", None)
        node.extra_args = extra_args
        register_log(self.request, node.name, node.log_path)
        self.nodes.append(node)
        node.start()
        return node

    def agent(
        self, dialect: str, role: str, name: str, peer: str, node: LbHubNode, *extra: str
    ) -> AgentProcess:
        label = f"{name}#{len(self.agents)}"
        proc = AgentProcess.reported(self.request, self.tmp, label)
        argv = [sys.executable, "-m", f"tests.deployment.agents.{dialect}_pair"]
        argv += ["--role", role, "--url", node.url, "--name", name, "--peer", peer]
        argv += ["--timeout", str(TIMEOUT * 2), "--stop-file", str(self.stop_file)]
        argv += ["--log-level", "DEBUG", *extra]
        proc.start(argv)
        self.agents.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.agents:
            proc.end()
        for node in self.nodes:
            node.stop()


@pytest.fixture
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Setup]:
    s = Setup(tmp_path, request)
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_takeover_is_final(setup: Setup, dialect: str) -> None:
    node = setup.node()
    first = setup.agent(dialect, "worker", "w", "c", node, "--on-peer-lost", "keep")
    first.expect("connected", timeout=TIMEOUT * 2)
    second = setup.agent(dialect, "worker", "w", "c", node, "--on-peer-lost", "keep")
    second.expect("connected", timeout=TIMEOUT * 2)
    gone = first.expect("disconnected", timeout=TIMEOUT)
    assert gone["code"] == 4001
    assert gone["stats"]["gave_up"].startswith("refused (close 4001"), gone
    time.sleep(1.0)  # long enough for a (wrong) first retry
    assert first.named("reconnecting") == [] and len(first.named("disconnected")) == 1
    assert second.named("disconnected") == [] and second.named("reconnecting") == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_refused_handshake_is_final(setup: Setup, dialect: str) -> None:
    node = setup.node("--jwt-secret", "deployment-test-secret")
    worker = setup.agent(dialect, "worker", "w", "c", node)  # no token
    gone = worker.expect("disconnected", timeout=TIMEOUT * 2)
    assert gone["code"] is None  # no socket was ever opened
    assert "HTTP 401" in gone["stats"]["gave_up"], gone
    assert gone["stats"]["connects"] == 0
    time.sleep(1.0)
    assert worker.named("connected") == [] and worker.named("reconnecting") == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_node_back_on_the_same_url_is_found_again(setup: Setup, dialect: str) -> None:
    node = setup.node()
    worker = setup.agent(dialect, "worker", "w", "c", node, "--on-peer-lost", "keep")
    # The node's in-process broker restarts empty, taking the sessions with it: the
    # proxies report the gap, and this client re-asks what went unanswered (the
    # worker answers a repeated key from its cache).
    client = setup.agent(dialect, "client", "c", "w", node, "--reask-after", "3")
    client.expect("progress", timeout=TIMEOUT * 3, answered=20)

    node.signal(signal.SIGTERM)
    assert node.wait() == 0
    for proc in (worker, client):
        assert proc.expect("reconnecting", timeout=TIMEOUT)["code"] == 1012
    # While the node is down the handshakes are refused, and retried with backoff.
    client.expect("reconnecting", timeout=TIMEOUT, attempt=2)
    time.sleep(0.5)
    node.start()
    for proc in (worker, client):
        proc.expect("reconnected", timeout=TIMEOUT)
    refused = [e for e in client.named("reconnecting") if e.get("error")]
    assert refused and all("Connect" in e["error"] or "OSError" in e["error"] for e in refused)

    client.expect("progress", timeout=TIMEOUT * 2, answered=60)
    setup.stop_file.touch()
    done = client.expect("done", timeout=TIMEOUT * 3)
    assert done["ok"] and not done["gave_up"] and done["unanswered"] == [], done
    assert done["answered"] == done["sent"] and done["wrong"] == 0, done
    assert done["stats"]["reconnects"] == 1 and done["stats"]["overflowed"] == 0, done
    # Asked while the node was down: held, then sent after the reconnect.
    assert done["stats"]["flushed"] + done["stats"]["resent"] >= 1, done
    assert client.named("resume_gap"), "the restarted broker lost the session: reported"
    executed = [e["key"] for e in worker.named("executed")]
    assert len(executed) == len(set(executed)) == done["sent"]
    for proc in (worker, client):
        assert proc.named("disconnected") == []
        assert len(proc.named("connected")) == 1
