"""Real pipecat client/worker pairs through nginx in front of three hub nodes, while one
node is drained (SIGTERM) and another is killed (SIGKILL).

Every agent dials the nginx URL only; which node a socket lands on is nginx's choice
(least connections) and is read back from the hubs (``/agents``, ``/metrics``).

Pairs:
- four pairs on busclient's reconnecting proxies, two per dialect. Each client streams
  tasks at a steady pace and never asks twice, as a real application does. What they
  must show: every task executed once and answered once, with no re-ask, no duplicate
  and no resume gap; no ``on_disconnected``; a reconnect for every side whose node went
  away, and messages sent again after reconnecting (the session's send log) taken once.
  That is the sessions' promise (docs/protocol.md, Sessions): a request written into a
  socket whose node is SIGKILLed is sent again from the proxy's log, an answer
  published while its requester has no socket is kept in Redis and replayed.

- two pairs on the stock proxies, one per dialect, documenting what they do: a side
  whose node drains gets ``on_disconnected`` with 1012, a side whose node is killed
  gets it with 1006, a side whose peer went away gets it with 4002 after the peer grace;
  none of them ever reconnects (one ``on_connected`` only), and a stock client stops
  there. A side whose own node and whose peer's node both survive is untouched.
  (The stock proxy may report one close twice: its receive loop reports the code, and a
  send already in flight on the closing socket reports it again with no socket, i.e.
  code None. The test accepts such a second report and nothing else.)
"""

import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deployment.lb import LbHubNode, Nginx, nginx_path
from tests.integration.procs import TIMEOUT, AgentProcess, RedisServer
from tests.support.reports import register_log
from tests.support.waiting import wait_until

# Bounds time under faults or load: run alone (see the Makefile).
pytestmark = [pytest.mark.integration, pytest.mark.serial]

RECONNECTING = [("subagents", "rs1"), ("subagents", "rs2"), ("pipecat", "rp1"), ("pipecat", "rp2")]
STOCK = [("subagents", "ss1"), ("pipecat", "sp1")]


def client_name(pair: str) -> str:
    return f"c-{pair}"


def worker_name(pair: str) -> str:
    return f"w-{pair}"


class Deployment:
    """Redis, hub nodes (three unless told), nginx, and the agent programs; all stopped
    at the end. ``fail_timeout`` None runs nginx with render.sh's own health check."""

    def __init__(
        self,
        tmp_path: Path,
        request: pytest.FixtureRequest,
        *,
        nodes: int = 3,
        fail_timeout: str | None = "2s",
    ) -> None:
        self.tmp = tmp_path
        self.request = request
        self.node_count = nodes
        self.fail_timeout = fail_timeout
        self.redis = RedisServer(tmp_path / "redis.log")
        self.nodes: list[LbHubNode] = []
        self.nginx = Nginx(tmp_path / "nginx")
        self.agents: dict[str, AgentProcess] = {}
        self.stop_file = tmp_path / "stop"

    def start(self) -> None:
        nginx_path()
        register_log(self.request, "nginx error log", self.nginx.error_log)
        register_log(self.request, "nginx access log", self.nginx.access_log)
        self.redis.start()
        for i in range(self.node_count):
            node = LbHubNode(f"n{i + 1}", self.tmp / f"hub-n{i + 1}.log", self.redis.url)
            self.nodes.append(node)
            register_log(self.request, node.name, node.log_path)
            node.spawn()
        for node in self.nodes:
            node.wait_ready()
        self.nginx.directory.mkdir()
        self.nginx.start([node.port for node in self.nodes], fail_timeout=self.fail_timeout)

    def agent(self, dialect: str, role: str, name: str, peer: str, proxy: str) -> AgentProcess:
        proc = AgentProcess.reported(self.request, self.tmp, name)
        argv = [sys.executable, "-m", f"tests.deployment.agents.{dialect}_pair"]
        argv += ["--role", role, "--proxy", proxy, "--url", self.nginx.url]
        # A reconnecting worker keeps its socket when its client goes (the client may be
        # back); stock workers use the default, close, to show the 4002 a stock proxy gets.
        on_peer_lost = "keep" if (role, proxy) == ("worker", "reconnecting") else "close"
        argv += ["--on-peer-lost", on_peer_lost]
        argv += ["--name", name, "--peer", peer, "--timeout", str(TIMEOUT * 3)]
        argv += ["--stop-file", str(self.stop_file), "--log-level", "DEBUG"]
        proc.start(argv)
        self.agents[name] = proc
        return proc

    def node(self, node_id: str) -> LbHubNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def placement(self) -> dict[str, str]:
        """Agent -> node id, from whichever node answers."""
        for node in self.nodes:
            if node.alive:
                try:
                    return node.agents()
                except OSError:
                    continue
        raise AssertionError("no node answers /agents")

    def stop(self) -> None:
        for proc in self.agents.values():
            proc.end()
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


def answered(proc: AgentProcess) -> int:
    progress = proc.named("progress")
    return int(progress[-1]["answered"]) if progress else 0


def codes(proc: AgentProcess, event: str) -> list[Any]:
    return [e.get("code") for e in proc.named(event)]


def choose_drained(placement: dict[str, str], stock: list[str]) -> str:
    """A node holding a stock socket, preferably one side only of a stock pair: the
    drain then shows the stock proxy's 1012 on one side and 4002 on the other."""
    for pair in stock:
        c, w = placement[client_name(pair)], placement[worker_name(pair)]
        if c != w:
            return c
    return placement[client_name(stock[0])]


def choose_killed(
    placement: dict[str, str], drained: str, nodes: list[str], stock: list[str], clients: list[str]
) -> str:
    """Another node: preferably one still holding a stock socket (its 1006), then the
    one holding the most reconnecting clients (their outage is the longest: buffering)."""

    def score(node: str) -> tuple[bool, int]:
        stock_here = any(
            placement.get(name(pair)) == node
            for pair in stock
            for name in (client_name, worker_name)
        )
        return stock_here, sum(placement.get(client_name(pair)) == node for pair in clients)

    return max((n for n in nodes if n != drained), key=score)


def test_pairs_through_nginx_survive_a_drain_and_a_kill(deployment: Deployment) -> None:
    d = deployment
    d.start()

    # ---- every pair up, through the load balancer only -----------------------------
    pairs = [(dialect, pair, "reconnecting") for dialect, pair in RECONNECTING]
    pairs += [(dialect, pair, "stock") for dialect, pair in STOCK]
    for dialect, pair, proxy in pairs:
        d.agent(dialect, "worker", worker_name(pair), client_name(pair), proxy)
    for dialect, pair, proxy in pairs:
        d.agent(dialect, "client", client_name(pair), worker_name(pair), proxy)
    clients = {pair: d.agents[client_name(pair)] for _, pair, _ in pairs}
    workers = {pair: d.agents[worker_name(pair)] for _, pair, _ in pairs}
    reconnecting = [pair for _, pair in RECONNECTING]
    stock = [pair for _, pair in STOCK]
    sockets = [client_name(p) for _, p, _ in pairs] + [worker_name(p) for _, p, _ in pairs]

    for proc in clients.values():
        proc.expect("started", timeout=TIMEOUT * 3)
    wait_until(
        lambda: all(answered(clients[p]) >= 20 for p in clients),
        TIMEOUT * 2,
        step=0.1,
        what="20 answers per client",
    )
    before = d.placement()
    assert set(sockets) <= set(before), f"not every socket is present: {before}"
    # The sockets landed on different nodes: every node holds some, per its own gauge.
    per_node = {node.node_id: node.metric("bushub_connections") for node in d.nodes}
    assert all(count >= 1 for count in per_node.values()), per_node
    assert sum(per_node.values()) == len(sockets), per_node

    # ---- drain the node of the stock subagents client ---------------------------------
    drained = choose_drained(before, stock)
    print(f"placement: {before}; draining {drained}")

    marks = {pair: answered(clients[pair]) for pair in reconnecting}
    d.node(drained).signal(signal.SIGTERM)
    assert d.node(drained).wait(timeout=10) == 0, "the drained node did not exit cleanly"

    # Stock expectations of the drain: 1012 on the drained node; 4002 for a side whose
    # peer was there.
    expected: dict[str, int | None] = {}
    for pair in stock:
        c, w = client_name(pair), worker_name(pair)
        for me, peer in ((c, w), (w, c)):
            if before[me] == drained:
                expected[me] = 1012
            elif before[peer] == drained:
                expected[me] = 4002
    for name, code in expected.items():
        d.agents[name].expect("disconnected", timeout=TIMEOUT * 2, code=code)

    for pair in reconnecting:
        for name in (client_name(pair), worker_name(pair)):
            if before[name] == drained:
                d.agents[name].expect("reconnected", timeout=TIMEOUT)
                first = d.agents[name].named("reconnecting")[0]
                assert first["code"] == 1012, f"{name}: {first}"
    wait_until(
        lambda: all(answered(clients[p]) >= marks[p] + 20 for p in reconnecting),
        TIMEOUT * 2,
        step=0.1,
        what="reconnecting clients making progress after the drain",
    )

    # A rolling restart brings the drained node back on its port.
    d.node(drained).start()

    # ---- kill another node ---------------------------------------------------------------
    middle = d.placement()
    killed = choose_killed(middle, drained, [n.node_id for n in d.nodes], stock, reconnecting)
    survivor = next(n.node_id for n in d.nodes if n.node_id not in (drained, killed))
    print(f"placement: {middle}; killing {killed}")
    marks = {pair: answered(clients[pair]) for pair in reconnecting}
    d.node(killed).kill()

    after_kill: dict[str, int | None] = {}
    for pair in stock:
        c, w = client_name(pair), worker_name(pair)
        for me, peer in ((c, w), (w, c)):
            if me in expected:
                continue
            if middle.get(me) == killed:
                after_kill[me] = 1006
            elif middle.get(peer) == killed and peer not in expected:
                after_kill[me] = 4002
    for name, code in after_kill.items():
        d.agents[name].expect("disconnected", timeout=TIMEOUT * 3, code=code)
    expected.update(after_kill)

    for pair in reconnecting:
        for name in (client_name(pair), worker_name(pair)):
            if middle[name] == killed:
                proc = d.agents[name]
                proc.expect("reconnected", timeout=TIMEOUT * 2)
                assert 1006 in codes(proc, "reconnecting"), proc.named("reconnecting")
    wait_until(
        lambda: all(answered(clients[p]) >= marks[p] + 20 for p in reconnecting),
        TIMEOUT * 3,
        step=0.1,
        what="reconnecting clients making progress after the kill",
    )
    # Every reconnecting socket is back, on the nodes still alive.
    after = d.placement()
    for pair in reconnecting:
        for name in (client_name(pair), worker_name(pair)):
            assert after.get(name) in (drained, survivor), (name, after.get(name))

    # ---- finish -----------------------------------------------------------------------------
    d.stop_file.touch()
    results = {pair: clients[pair].expect("done", timeout=TIMEOUT * 4) for pair in clients}

    flushed = 0
    for pair in reconnecting:
        done = results[pair]
        assert done["ok"] is True, done
        assert done["gave_up"] is False, done
        assert done["unanswered"] == [] and done["answered"] == done["sent"], done
        assert done["wrong"] == 0, done
        assert done["sent"] >= 60, done
        executed = [e["key"] for e in workers[pair].named("executed")]
        assert len(executed) == len(set(executed)), f"{pair}: a task ran twice"
        assert set(executed) == {f"{client_name(pair)}-{i}" for i in range(done["sent"])}, pair
        for proc in (clients[pair], workers[pair]):
            assert proc.named("disconnected") == [], f"{proc.name} gave up"
            assert len(proc.named("connected")) == 1, f"{proc.name}: on_connected twice"
        worker_stats = workers[pair].named("stats")
        last = [done["stats"], worker_stats[-1] if worker_stats else {}]
        flushed += sum(s.get("flushed", 0) + s.get("resent", 0) for s in last)
        assert all(s.get("gaps", 0) == 0 for s in last), (pair, last)
        assert done["stats"]["overflowed"] == 0, done
        assert done["reasks"] == 0 and done["duplicates"] == 0, done
        assert workers[pair].named("repeat") == [], f"{pair}: a task was asked twice"
        for proc in (clients[pair], workers[pair]):
            assert proc.named("resume_gap") == [], f"{proc.name}: a resume lost messages"
    assert flushed > 0, "no message was ever sent again after a reconnect"

    untouched = [name for pair in stock for name in (client_name(pair), worker_name(pair))]
    untouched = [name for name in untouched if name not in expected]
    for name, code in expected.items():
        proc = d.agents[name]
        reported = codes(proc, "disconnected")
        assert reported[0] == code and all(c is None for c in reported[1:]), (name, reported)
        assert len(proc.named("connected")) == 1, f"{name}: the stock proxy reconnected?"
        assert proc.named("reconnected") == []
    for name in untouched:
        assert d.agents[name].named("disconnected") == [], name
    for pair in stock:
        done = results[pair]
        if client_name(pair) in expected:
            assert done["gave_up"] is True, done  # the stock client stops there
        else:
            assert done["gave_up"] is False and done["unanswered"] == [], done
