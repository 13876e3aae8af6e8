"""Fixtures for the operations tests: a Redis and hub nodes started with chosen flags.

Reuses the integration suite's processes; the report hook of ``tests/conftest.py``
attaches every registered process log to a failing test's report.
"""

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from tests.integration.procs import RedisServer
from tests.operations.ops import OpsNode, close_clients
from tests.support.reports import register_log


class OpsCluster:
    """One Redis (started on first use) and any number of `OpsNode` processes."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self._tmp = tmp_path
        self._request = request
        self.redis: RedisServer | None = None
        self.nodes: list[OpsNode] = []

    def start_redis(self) -> RedisServer:
        if self.redis is None:
            self.redis = RedisServer(self._tmp / "redis.log")
            register_log(self._request, "redis log", self.redis.log_path)
            self.redis.start()
        return self.redis

    def node(
        self,
        node_id: str | None,
        *,
        redis: bool = True,
        flags: Mapping[str, str | None] | None = None,
        env: Mapping[str, str] | None = None,
        label: str | None = None,
    ) -> OpsNode:
        """A node, spawned but not waited for."""
        url = self.start_redis().url if redis else None
        label = label or node_id or f"node{len(self.nodes) + 1}"
        node = OpsNode(node_id, self._tmp / f"hub-{label}.log", url, flags=flags, env=env)
        register_log(self._request, f"hub {label} log", node.log_path)
        self.nodes.append(node)
        node.spawn()
        return node

    def nodes_ready(self, *node_ids: str, **kwargs: object) -> list[OpsNode]:
        """Spawn the nodes together, then wait until each is ready."""
        nodes = [self.node(n, **kwargs) for n in node_ids]  # type: ignore[arg-type]
        for node in nodes:
            node.wait_ready()
        return nodes

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.redis is not None:
            self.redis.stop()


@pytest.fixture
async def ops(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[OpsCluster]:
    """The test's Redis and nodes; client sockets are closed first, then the nodes stop."""
    c = OpsCluster(tmp_path, request)
    try:
        yield c
    finally:
        try:
            await close_clients()
        finally:
            c.stop()
