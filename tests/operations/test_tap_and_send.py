"""``bushub tap`` and ``POST /api/send`` across two nodes, with real pipecat agents of
both dialects (docs/protocol.md, Operator API)."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import DIALECTS, Agents
from tests.integration.procs import TIMEOUT, AgentProcess
from tests.operations.conftest import OpsCluster
from tests.operations.ops import ADMIN_TOKEN, DRAIN_TIMEOUT, OpsNode
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

# The task request and response types of each dialect.
TYPES = {
    "subagents": (
        "pipecat_subagents.bus.messages.",
        "BusTaskRequestMessage",
        "BusTaskResponseMessage",
    ),
    "pipecat": ("pipecat.bus.messages.", "BusJobRequestMessage", "BusJobResponseMessage"),
}


@pytest.fixture
def agents(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Agents]:
    a = Agents(tmp_path, request)
    try:
        yield a
    finally:
        a.stop()


class TapCommand:
    """``bushub tap AGENT --json`` as a user runs it, its events read as they come."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest, label: str) -> None:
        self.proc = AgentProcess.reported(request, tmp_path, label)

    def start(self, node: OpsNode, agent: str, *extra: str) -> "TapCommand":
        argv = [sys.executable, "-m", "bushub", "tap", agent, "--node", node.http_url, *extra]
        self.proc.start([*argv, "--admin-token", ADMIN_TOKEN])
        return self

    def events(self, kind: str = "message") -> list[dict[str, Any]]:
        return [e for e in list(self.proc.events) if e.get("kind") == kind]

    def wait(self, what: str, found: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        assert wait_until(found, timeout=timeout), f"tap: {what}; saw {self.proc.events}"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_bushub_tap_shows_a_real_clients_tasks_across_nodes(
    ops: OpsCluster, agents: Agents, tmp_path: Path, request: pytest.FixtureRequest, dialect: str
) -> None:
    n1, n2 = ops.nodes_ready("t1", "t2")
    prefix, request_type, response_type = TYPES[dialect]
    # Tapped through a third way in: n1 serves the tap, the worker is on n2.
    tap = TapCommand(tmp_path, request, "tap").start(n1, "worker", "--json")
    tap.wait("opened", lambda: bool(tap.events("open")))
    worker = agents.worker(dialect, n2)
    client = agents.client(dialect, n1, "tasks", "--count", "3")
    client.expect_done()

    def pairs() -> list[tuple[str, str, str, str]]:
        return [
            (e["type"], e["direction"], e["source"], e["node"])
            for e in tap.events()
            if e["type"] in (prefix + request_type, prefix + response_type)
        ]

    tap.wait("6 requests and 6 responses", lambda: len(pairs()) >= 12)
    seen = pairs()
    # Requests entered at the client's node, addressed to the worker; responses the other way.
    assert seen.count((prefix + request_type, "received", "client", "t1")) == 6, seen
    assert seen.count((prefix + response_type, "sent", "worker", "t2")) == 6, seen
    response = next(e for e in tap.events() if e["type"] == prefix + response_type)
    assert response["target"] == "client" and response["format"] == "json"
    assert response["size"] > 0 and "__data__" in response["body"]
    assert worker.alive
    # Other agents' traffic is not shown: only worker's own messages are in the tap.
    assert all("worker" in (e["source"], e["target"]) for e in tap.events())
    tap.proc.kill()


def test_bushub_tap_prints_for_people_and_refuses_a_wrong_token(
    ops: OpsCluster, agents: Agents, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    (node,) = ops.nodes_ready("t1")
    wrong = AgentProcess.reported(request, tmp_path, "tap-wrong")
    wrong.start([sys.executable, "-m", "bushub", "tap", "w", "--node", node.http_url,
                 "--admin-token", "nope"])  # fmt: skip
    assert wrong.wait() == 2
    assert "401 bad admin token" in wrong.log_path.read_text()
    people = AgentProcess.reported(request, tmp_path, "tap-people")
    people.start([sys.executable, "-m", "bushub", "tap", "w", "--node", node.http_url,
                  "--admin-token", ADMIN_TOKEN, "--count", "1"])  # fmt: skip
    assert wait_until(lambda: bool(people.events), timeout=TIMEOUT)
    body = json.dumps(
        {"__type__": TYPES["subagents"][0] + "BusTaskRequestMessage",
         "__data__": {"source": "ops", "target": "w", "task_id": "j", "task_name": "echo",
                      "payload": {"data": {"__type__": "bytes", "__data__": "AAEC"}}}}
    ).encode()  # fmt: skip
    # Nobody holds "w": the send is refused, and the tap shows nothing for it.
    assert post_send(node, body)[0] == 404
    agents.worker("subagents", node, name="w", peer="ops")
    assert wait_until(lambda: post_send(node, body)[0] == 202, timeout=TIMEOUT)
    assert people.wait() == 0
    printed = people.events_path.read_text().splitlines()
    assert printed[0].startswith("tapping w (through node t1)")
    assert "t1 <- BusTaskRequestMessage ops -> w" in printed[1]
    assert '"<3 bytes>"' in printed[2]

    # A draining node ends its taps at once, so it does not wait on them to exit; the
    # tap says so, and exits 1 (before: 0 and nothing said, as if --count was reached).
    draining = AgentProcess.reported(request, tmp_path, "tap-draining")
    draining.start([sys.executable, "-m", "bushub", "tap", "w", "--node", node.http_url,
                    "--admin-token", ADMIN_TOKEN])  # fmt: skip
    assert wait_until(lambda: bool(draining.events), timeout=TIMEOUT)
    started = time.monotonic()
    node.signal(signal.SIGTERM)
    assert draining.wait() == 1
    assert (
        f"bushub tap: {node.http_url} ended the tap (a draining node does): tap through "
        "another node" in draining.log_path.read_text()
    )
    assert node.wait() == 0
    assert time.monotonic() - started < DRAIN_TIMEOUT


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        ([], "bushub tap: no admin token: pass --admin-token or set BUSHUB_ADMIN_TOKEN"),
        (["--admin-token", "t", "--count", "-1"], "argument --count: -1: a count of messages"),
        (["--admin-token", "a\nb"], "bushub tap: the admin token holds whitespace"),
        # Tracebacks before: a --node that is no URL, a port that speaks no HTTP.
        (["--admin-token", "t", "--node", "http://[::1"], "bushub tap: http://[::1: ValueError"),
        (["--admin-token", "t", "--node", "NODE_THAT_HANGS_UP"], "NODE_THAT_HANGS_UP: Remote"),
    ],
)
def test_bushub_tap_says_what_is_missing_before_asking_a_node(argv: list[str], said: str) -> None:
    """Before: no token was sent as an empty one (the node answered "401 bad admin
    token"), and a negative count tapped for good."""
    env = {k: v for k, v in os.environ.items() if k != "BUSHUB_ADMIN_TOKEN"}
    with hanging_up_server() as address:
        argv = [arg.replace("NODE_THAT_HANGS_UP", address) for arg in argv]
        said = said.replace("NODE_THAT_HANGS_UP", address)
        done = subprocess.run(
            [sys.executable, "-m", "bushub", "tap", "w", "--node", "http://127.0.0.1:1", *argv],
            env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
    assert done.returncode == 2
    assert said in done.stderr.strip().splitlines()[-1], done.stderr
    assert "Traceback" not in done.stderr


@contextlib.contextmanager
def hanging_up_server() -> Iterator[str]:
    """The URL of a port that reads a request and closes, answering nothing (as a
    service that speaks no HTTP does). Read first: closed with the request unread,
    the client would see a reset instead, at random."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(TIMEOUT)
                    conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        server.close()


def post_send(node: OpsNode, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{node.http_url}/api/send",
        data=body,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_task_sent_by_http_runs_on_a_real_worker_and_its_response_is_tapped(
    ops: OpsCluster, agents: Agents, tmp_path: Path, request: pytest.FixtureRequest, dialect: str
) -> None:
    n1, n2 = ops.nodes_ready("t1", "t2")
    prefix, request_type, response_type = TYPES[dialect]
    job = "job" if dialect == "pipecat" else "task"
    # The worker's proxy forwards only to its peer, so the backend sends as that peer.
    worker = agents.worker(dialect, n2, peer="backend")
    # Its proxy reads what comes once it has connected: a task that reached it in the
    # same instant was not run once in a loaded CI run.
    assert wait_until(lambda: bool(worker.named("connected")), timeout=TIMEOUT)
    tap = TapCommand(tmp_path, request, "tap").start(n1, "worker", "--json")
    tap.wait("opened", lambda: bool(tap.events("open")))
    body = json.dumps(
        {"__type__": prefix + request_type,
         "__data__": {"source": "backend", "target": "worker", f"{job}_id": "http-1",
                      f"{job}_name": "echo", "payload": {"text": "from curl"}}}
    ).encode()  # fmt: skip
    assert wait_until(lambda: post_send(n1, body)[0] == 202, timeout=TIMEOUT)
    # Both: each node publishes the events of what enters it, so the response's event
    # (from t2) can come before the request's (from t1).
    both = {prefix + request_type, prefix + response_type}
    tap.wait("the request and the response", lambda: both <= {e["type"] for e in tap.events()})
    [sent] = [e for e in tap.events() if e["type"] == prefix + request_type]
    assert (sent["node"], sent["direction"], sent["source"]) == ("t1", "received", "backend")
    [answer] = [e for e in tap.events() if e["type"] == prefix + response_type]
    assert (answer["node"], answer["direction"], answer["target"]) == ("t2", "sent", "backend")
    assert answer["body"]["__data__"][f"{job}_id"] == "http-1"
    assert "from curl" in json.dumps(answer["body"]), answer
    assert worker.alive

    # Bad sends change nothing: no event in the tap, nothing at the worker.
    before = len(tap.events())
    bad = [
        (400, body.replace(request_type.encode(), b"NoSuchMessage")),
        (413, body.replace(b"from curl", b"x" * (2 << 20))),  # over the default 1 MiB
        (404, body.replace(b'"target": "worker"', b'"target": "nobody"')),
    ]
    for status, payload in bad:
        assert post_send(n1, payload)[0] == status
    time.sleep(0.3)
    assert len(tap.events()) == before
    tap.proc.kill()
