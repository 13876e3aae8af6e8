"""Sessions under faults (docs/protocol.md, Sessions): a real pipecat client/worker pair
of each dialect on busclient's reconnecting proxies, client and worker on different hub
nodes, with real redis-server and hub processes.

The client streams tasks at a steady pace and never asks twice; the worker streams
bridged audio frames (``BusFrameMessage``, 20 per second) to the client. Through

a. a rolling SIGTERM restart of every node, one by one, each back on its port,
b. a SIGKILL of the worker's node, then of the client's node, each restarted,
c. a TCP cut without close frames (nginx SIGKILLed, master and workers, and started
   again on its port),

every task must be executed once and answered once, and every frame must arrive once,
in order, with its bytes. a to c go through nginx in front of three nodes, so a
reconnect lands on whichever node nginx chooses.

d. an agent away longer than the window: nodes with ``--resume-window 2``, the worker
   (its own node, no nginx) frozen with SIGSTOP until the hub has forgotten its
   session. Its proxy must report ``resume_gap``, the client must see its peer
   announced anew (another runner), and every task must end answered or timed out by
   the library's own timeout: none pending, none executed twice.

Each test records what it measured (tasks, frames, resumes, reconnect times) with
``figures``: printed at the end of the test (``-s`` shows them) and kept in the report's
user properties.

Run with sessions off (``BUSHUB_RESUME_WINDOW=0`` in the environment) a to c fail: a
request or an answer written into a socket that dies is lost.
"""

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buswire.channels import session_key
from tests.deployment.lb import DRAIN_TIMEOUT, PRESENCE_TTL, LbHubNode, Nginx, nginx_path
from tests.integration.procs import TIMEOUT, AgentProcess, RedisServer
from tests.support.reports import register_log
from tests.support.waiting import wait_until

# Bounds time under faults or load: run alone (see the Makefile).
pytestmark = [pytest.mark.integration, pytest.mark.serial]

DIALECTS = ["subagents", "pipecat"]
FRAMES_PER_SECOND = 20
# Answers a client must add after a fault before the next one: the pair works again.
PROGRESS = 10
# Test d: the window, the keepalive that notices a frozen socket, the task timeout.
SHORT_WINDOW = 2.0
KEEPALIVE = 0.5
TASK_TIMEOUT = 3.0


class ProxyGaveUp(AssertionError):
    """The reconnecting proxy stopped reconnecting."""


class DeliveredTwice(AssertionError):
    """The client received a message twice."""


Figures = Callable[[str, Any], None]


class Deployment:
    """Redis, three hub nodes, nginx (optional), one client/worker pair."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.tmp = tmp_path
        self.request = request
        self.redis = RedisServer(tmp_path / "redis.log")
        self.nodes: list[LbHubNode] = []
        self.nginx: Nginx | None = None
        self.agents: list[AgentProcess] = []
        self.stop_file = tmp_path / "stop"

    def start(self, *, nginx: bool = True, hub_args: tuple[str, ...] = ()) -> None:
        self.redis.start()
        for i in range(3):
            node = LbHubNode(f"n{i + 1}", self.tmp / f"hub-n{i + 1}.log", self.redis.url)
            node.extra_args = hub_args
            self.nodes.append(node)
            register_log(self.request, node.name, node.log_path)
            node.spawn()
        for node in self.nodes:
            node.wait_ready()
        if nginx:
            nginx_path()
            self.nginx = Nginx(self.tmp / "nginx")
            register_log(self.request, "nginx error log", self.nginx.error_log)
            self.nginx.directory.mkdir()
            self.nginx.start(self.ports)

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def pair(
        self,
        dialect: str,
        *,
        worker_url: str | None = None,
        client_url: str | None = None,
        client_peer_lost: str = "close",
        client_args: tuple[str, ...] = (),
    ) -> tuple[AgentProcess, AgentProcess]:
        """The worker, connected, then its client, started; both dial nginx unless told."""
        short = dialect[0]
        client, worker = f"c-{short}", f"w-{short}"
        lb = self.nginx.url if self.nginx else ""
        w = self._agent(dialect, "worker", worker, client, worker_url or lb, "keep", ())
        # The worker connects first: nginx (least connections) puts the client elsewhere.
        w.expect("connected", timeout=TIMEOUT * 3)
        c = self._agent(
            dialect, "client", client, worker, client_url or lb, client_peer_lost, client_args
        )
        c.expect("started", timeout=TIMEOUT * 3)
        return c, w

    def _agent(
        self,
        dialect: str,
        role: str,
        name: str,
        peer: str,
        url: str,
        on_peer_lost: str,
        extra: tuple[str, ...],
    ) -> AgentProcess:
        proc = AgentProcess.reported(self.request, self.tmp, name)
        argv = [sys.executable, "-m", f"tests.deployment.agents.{dialect}_pair"]
        argv += ["--role", role, "--proxy", "reconnecting", "--url", url]
        argv += ["--on-peer-lost", on_peer_lost, "--name", name, "--peer", peer]
        argv += ["--timeout", str(TIMEOUT * 3), "--stop-file", str(self.stop_file)]
        argv += ["--frames-per-second", str(FRAMES_PER_SECOND), "--log-level", "DEBUG", *extra]
        proc.start(argv)
        self.agents.append(proc)
        return proc

    def placement(self) -> dict[str, str]:
        """Agent -> node id, from whichever node answers."""
        for node in self.nodes:
            if node.alive:
                try:
                    return node.agents()
                except OSError:
                    continue
        raise AssertionError("no node answers /agents")

    def node(self, node_id: str) -> LbHubNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def finish(self, client: AgentProcess, worker: AgentProcess) -> dict[str, Any]:
        """Stop asking and streaming; the client's ``done`` report."""
        self.stop_file.touch()
        done = client.expect("done", timeout=TIMEOUT * 4)
        worker.expect("frames_sent", timeout=TIMEOUT)
        return done

    def stop(self) -> None:
        for proc in self.agents:
            if proc.alive:
                proc.signal(signal.SIGCONT)  # a test that failed mid-freeze
            proc.end()
        if self.nginx is not None:
            self.nginx.stop()
        for node in self.nodes:
            node.stop()
        self.redis.stop()


@pytest.fixture
def deployment(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    d = Deployment(tmp_path, request)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """``figures(name, value)``: one measured figure, printed and kept in the report."""

    def record(name: str, value: Any) -> None:
        request.node.user_properties.append((name, value))
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"figure {request.node.name} {name}: {shown}")

    return record


# ---- what the agents report -------------------------------------------------------------


def answered(proc: AgentProcess) -> int:
    progress = proc.named("progress")
    return int(progress[-1]["answered"]) if progress else 0


def count(proc: AgentProcess, event: str) -> int:
    return len(proc.named(event))


def wait_progress(client: AgentProcess, mark: int, what: str) -> None:
    wait_until(
        lambda: answered(client) >= mark + PROGRESS,
        TIMEOUT * 3,
        step=0.1,
        what=f"{PROGRESS} more answers {what}",
        proc=client,
    )


def wait_reconnected(procs: list[AgentProcess], before: dict[str, int], what: str) -> None:
    for proc in procs:
        wait_until(
            lambda p=proc: count(p, "reconnected") > before[p.name],
            TIMEOUT * 3,
            step=0.05,
            what=f"{proc.name} reconnected {what}",
            proc=proc,
        )


def outages(proc: AgentProcess) -> list[float]:
    """Seconds from each outage's first ``reconnecting`` to its ``reconnected``."""
    times, since = [], None
    for event in proc.events:
        if event.get("event") == "reconnecting" and since is None:
            since = float(event["t"])
        elif event.get("event") == "reconnected" and since is not None:
            times.append(float(event["t"]) - since)
            since = None
    return times


def last_stats(proc: AgentProcess) -> dict[str, Any]:
    stats = proc.named("stats")
    return stats[-1] if stats else {}


def record_figures(
    figures: Figures, done: dict[str, Any], client: AgentProcess, worker: AgentProcess
) -> None:
    figures("tasks sent", done["sent"])
    figures("tasks answered", done["answered"])
    figures("tasks timed out", len(done["timed_out"]))
    frames = done["frames"] or {}
    figures("frames sent", frames.get("expected"))
    figures("frames received", frames.get("received"))
    for proc, stats in ((client, done["stats"]), (worker, last_stats(worker))):
        side = "client" if proc is client else "worker"
        figures(f"{side} reconnects", stats.get("reconnects"))
        figures(f"{side} resumes", stats.get("resumes"))
        figures(f"{side} resent", stats.get("resent"))
        figures(f"{side} duplicates dropped", stats.get("duplicates"))
        figures(f"{side} gaps", stats.get("gaps"))
    times = outages(client) + outages(worker)
    if times:
        figures("reconnect seconds max", max(times))
        figures("reconnect seconds mean", sum(times) / len(times))


def assert_exactly_once(done: dict[str, Any], client: AgentProcess, worker: AgentProcess) -> None:
    """Every task executed once and answered once; every frame once, in order, intact."""
    assert done["ok"] is True, done
    assert done["gave_up"] is False, done
    assert done["sent"] >= 2 * PROGRESS, done
    assert done["unanswered"] == [] and done["timed_out"] == [], done
    assert done["answered"] == done["sent"], done
    assert done["duplicates"] == 0 and done["wrong"] == 0 and done["reasks"] == 0, done
    executed = [e["key"] for e in worker.named("executed")]
    assert len(executed) == len(set(executed)), "a task ran twice"
    assert set(executed) == {f"{client.name}-{i}" for i in range(done["sent"])}, (
        "executed tasks differ from the tasks asked"
    )
    assert worker.named("repeat") == [], "a task was asked twice"
    frames = done["frames"]
    sent = worker.named("frames_sent")[-1]["count"]
    assert frames["expected"] == sent and frames["ok"] is True, frames
    for proc in (client, worker):
        assert proc.named("resume_gap") == [], f"{proc.name}: a resume lost messages"
        assert proc.named("disconnected") == [], f"{proc.name} gave up"
        assert count(proc, "connected") == 1, f"{proc.name}: on_connected twice"
    for stats in (done["stats"], last_stats(worker)):
        assert stats.get("gaps", 0) == 0 and stats.get("overflowed", 0) == 0, stats


# ---- the tests ---------------------------------------------------------------------------


def both_pairs(d: Deployment) -> list[tuple[AgentProcess, AgentProcess]]:
    """A client and worker of each dialect, through nginx; both streaming."""
    pairs = [d.pair(dialect) for dialect in DIALECTS]
    for client, _ in pairs:
        wait_progress(client, 0, "at first")
    return pairs


def wait_all_progress(pairs: list[tuple[AgentProcess, AgentProcess]], what: str) -> None:
    marks = {client.name: answered(client) for client, _ in pairs}
    for client, _ in pairs:
        wait_progress(client, marks[client.name], what)


def finish_all(
    d: Deployment, pairs: list[tuple[AgentProcess, AgentProcess]], figures: Figures
) -> None:
    """Stop both pairs; each task and frame once, in order, for each."""
    d.stop_file.touch()
    for client, worker in pairs:
        done = client.expect("done", timeout=TIMEOUT * 4)
        worker.expect("frames_sent", timeout=TIMEOUT)
        record_figures(figures, done, client, worker)
        assert_exactly_once(done, client, worker)


def test_rolling_restart_of_every_node(deployment: Deployment, figures: Figures) -> None:
    d = deployment
    d.start()
    pairs = both_pairs(d)
    procs = [proc for pair in pairs for proc in pair]
    first = d.placement()
    # nginx (least connections) put the first pair's client away from its worker; the
    # second pair lands where the ties fall.
    client, worker = pairs[0]
    assert first[client.name] != first[worker.name], f"the first pair shares a node: {first}"

    for node in d.nodes:
        placed = d.placement()
        here = [p for p in procs if placed.get(p.name) == node.node_id]
        before = {p.name: count(p, "reconnected") for p in procs}
        node.signal(signal.SIGTERM)
        assert node.wait(timeout=DRAIN_TIMEOUT + TIMEOUT) == 0, f"{node.name} did not drain"
        node.start()
        wait_reconnected(here, before, f"after {node.node_id} restarted")
        wait_all_progress(pairs, f"after {node.node_id} restarted")
        print(f"{node.node_id} restarted; it held {[p.name for p in here]}")

    moved = sum(count(p, "reconnected") for p in procs)
    assert moved >= len(procs), "the restarts did not move every side"
    finish_all(d, pairs, figures)


def test_kill_the_workers_node_then_the_clients_node(
    deployment: Deployment, figures: Figures
) -> None:
    d = deployment
    d.start()
    pairs = both_pairs(d)
    procs = [proc for pair in pairs for proc in pair]
    client, worker = pairs[0]

    for victim in (worker, client):
        placed = d.placement()
        node = d.node(placed[victim.name])
        here = [p for p in procs if placed.get(p.name) == node.node_id]
        before = {p.name: count(p, "reconnected") for p in procs}
        node.kill()
        wait_reconnected(here, before, f"after {node.node_id} was killed")
        node.start()
        wait_all_progress(pairs, f"after {node.node_id} was killed")
        print(f"{node.node_id} killed ({victim.name}'s node); it held {[p.name for p in here]}")
        assert any(e.get("code") == 1006 for e in victim.named("reconnecting"))

    finish_all(d, pairs, figures)


def test_connections_cut_without_close_frames(deployment: Deployment, figures: Figures) -> None:
    d = deployment
    d.start()
    assert d.nginx is not None
    pairs = both_pairs(d)
    procs = [proc for pair in pairs for proc in pair]

    before = {p.name: count(p, "reconnected") for p in procs}
    d.nginx.cut()
    for proc in procs:
        proc.expect("reconnecting", timeout=TIMEOUT, code=1006)
    d.nginx.restart(d.ports)
    wait_reconnected(procs, before, "through nginx started again")
    wait_all_progress(pairs, "after the cut")
    finish_all(d, pairs, figures)


# Each way of being away once, each dialect once (both ways cost ~15 s each).
@pytest.mark.parametrize(("away", "dialect"), [("frozen", "subagents"), ("node_down", "pipecat")])
def test_an_agent_away_longer_than_the_window(
    deployment: Deployment, dialect: str, away: str, figures: Figures
) -> None:
    d = deployment
    hub_args = ("--resume-window", str(SHORT_WINDOW), "--keepalive", str(KEEPALIVE))
    d.start(nginx=False, hub_args=hub_args)
    worker_node = d.nodes[1]
    client, worker = d.pair(
        dialect,
        worker_url=worker_node.url,
        client_url=d.nodes[0].url,
        client_peer_lost="keep",
        client_args=("--task-timeout", str(TASK_TIMEOUT)),
    )
    wait_progress(client, 0, "at first")
    runner = client.named("peer_ready")[-1]["runner"]

    # Away until the hub has forgotten the worker's session: its record in Redis
    # expires once the window has passed since the hub saw the socket end.
    def forgotten() -> bool:
        return d.redis.cli("EXISTS", session_key(worker.name)).strip() == "0"

    what = "the away worker's session forgotten"
    gone_at = time.monotonic()
    if away == "frozen":
        # The hub's keepalive closes the frozen process's socket (4009).
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            wait_until(forgotten, KEEPALIVE * 2 + SHORT_WINDOW + TIMEOUT, 0.1, what=what)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
    else:
        # The worker dials its node only: it cannot connect until the node is back.
        worker_node.kill()
        wait_until(forgotten, PRESENCE_TTL + SHORT_WINDOW + TIMEOUT, 0.1, what=what)
        worker_node.start()
    figures("worker away seconds", time.monotonic() - gone_at)

    wait_until(
        lambda: worker.named("resume_gap") or worker.named("disconnected"),
        TIMEOUT * 3,
        what="the worker's proxy back, or given up",
    )
    if worker.named("disconnected"):
        raise ProxyGaveUp(f"the worker's proxy gave up: {worker.named('disconnected')}")
    gap = worker.named("resume_gap")[0]
    assert gap["result"] in ("gap", "new"), gap
    announced = client.expect("peer_ready", timeout=TIMEOUT * 2)  # the first is taken
    while announced["runner"] == runner:
        announced = client.expect("peer_ready", timeout=TIMEOUT * 2)
    mark = answered(client)
    wait_progress(client, mark, "after the worker came back")

    done = d.finish(client, worker)
    record_figures(figures, done, client, worker)
    # Every task ended: answered, or timed out by the library. None is pending.
    assert done["ok"] is True, done
    assert done["unanswered"] == [], done
    assert done["answered"] + len(done["timed_out"]) == done["sent"], done
    assert done["wrong"] == 0 and done["reasks"] == 0, done
    executed = [e["key"] for e in worker.named("executed")]
    assert len(executed) == len(set(executed)), "a task ran twice"
    assert set(executed) <= {f"{client.name}-{i}" for i in range(done["sent"])}
    answered_keys = {f"{client.name}-{i}" for i in range(done["sent"])} - set(done["timed_out"])
    assert answered_keys <= set(executed), "an answer for a task the worker never ran"
    assert worker.named("disconnected") == [] and client.named("disconnected") == []
    figures("runner before", runner)
    figures("runner after", announced["runner"])
    figures("late answers", done["late"])
    frames = done["frames"]
    figures("frames missing", frames["missing"])
    figures("answers received twice", done["duplicates"])
    figures("frames received twice", frames["duplicates"])
    # The gap is towards the worker; what the worker sends still arrives once, in order.
    if done["duplicates"] or frames["duplicates"]:
        raise DeliveredTwice(f"answers {done['duplicates']}, frames {frames}")
    assert frames["out_of_order"] == frames["corrupt"] == 0, frames
