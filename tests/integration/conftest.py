"""Fixtures that start real processes: redis-server, hub nodes and agent programs.

Each test gets its own Redis and nodes, so a test that kills a node cannot disturb
another. Logs of every process land under the test's ``tmp_path`` and are attached to
the report of a failing test.
"""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.procs import PRESENCE_TTL, TIMEOUT, AgentProcess, HubNode, RedisServer
from tests.integration.redis_cluster import RedisClusterServers
from tests.support.reports import register_log

DIALECTS = ("subagents", "pipecat")
# The brokers a two-node test runs on: one Redis, and a Redis Cluster (sharded pub/sub).
BROKERS = ("redis", "redis-cluster")


class Cluster:
    """A Redis and hub nodes sharing it, or one node on its in-process broker."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self._tmp = tmp_path
        self._request = request
        self.redis: RedisServer | None = None
        self.nodes: list[HubNode] = []

    def start(
        self,
        nodes: int = 2,
        *,
        redis: bool = True,
        redis_cluster: RedisClusterServers | None = None,
        presence_ttl: float = PRESENCE_TTL,
    ) -> list[HubNode]:
        url: str | None = None
        if redis_cluster is not None:
            url = redis_cluster.url
        elif redis:
            self.redis = RedisServer(self._tmp / "redis.log")
            register_log(self._request, "redis log", self.redis.log_path)
            self.redis.start()
            url = self.redis.url
        for i in range(nodes):
            node = HubNode(
                f"n{i + 1}", self._tmp / f"hub-n{i + 1}.log", url, presence_ttl=presence_ttl
            )
            register_log(self._request, f"hub n{i + 1} log", node.log_path)
            self.nodes.append(node)
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            node.wait_ready()
        return self.nodes

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.redis is not None:
            self.redis.stop()


class Agents:
    """Starts the agent programs of ``tests/agents`` and stops them all at the end."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self._tmp = tmp_path
        self._request = request
        self.procs: list[AgentProcess] = []

    def _start(self, label: str, module: str, args: list[str]) -> AgentProcess:
        label = f"{label}#{sum(p.name.startswith(label + '#') for p in self.procs) + 1}"
        proc = AgentProcess.reported(self._request, self._tmp, label)
        self.procs.append(proc)
        argv = ["-m", f"tests.agents.{module}", "--timeout", str(TIMEOUT), *args]
        proc.start([sys.executable, *argv])
        return proc

    def worker(
        self,
        dialect: str,
        hub: HubNode,
        name: str = "worker",
        peer: str = "client",
        fmt: str = "json",
    ) -> AgentProcess:
        args = ["--url", hub.url, "--name", name, "--peer", peer, "--log-level", "DEBUG"]
        args += ["--format", fmt]
        return self._start("worker", f"{dialect}_worker", args)

    def client(
        self,
        dialect: str,
        hub: HubNode,
        scenario: str,
        *extra: str,
        name: str = "client",
        peer: str = "worker",
        on_peer_lost: str = "close",
    ) -> AgentProcess:
        args = ["--url", hub.url, "--name", name, "--peer", peer, "--scenario", scenario]
        args += ["--on-peer-lost", on_peer_lost, "--log-level", "DEBUG", *extra]
        return self._start("client", f"{dialect}_client", args)

    def stop(self) -> None:
        for proc in self.procs:
            proc.end()


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(tmp_path, request)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """One Redis Cluster for the session; each test empties it first."""
    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(params=BROKERS)
def two_nodes(cluster: Cluster, request: pytest.FixtureRequest) -> list[HubNode]:
    """Two hub nodes sharing one Redis, or one Redis Cluster."""
    if request.param == "redis-cluster":
        servers: RedisClusterServers = request.getfixturevalue("shared_redis_cluster")
        servers.flush()
        return cluster.start(2, redis_cluster=servers)
    return cluster.start(2)


@pytest.fixture
def agents(cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Agents]:
    # Depends on the cluster so that agents stop before the nodes do.
    a = Agents(tmp_path, request)
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    """Which library the agents use: pipecat-ai-subagents or pipecat core."""
    return str(request.param)
