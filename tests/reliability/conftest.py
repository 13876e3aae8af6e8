"""Fixtures for the reliability suite: a Redis that can be killed and hub nodes with
chosen flags, all real processes on 127.0.0.1, stopped at the end of each test.

The report hook of ``tests/conftest.py`` attaches every registered process log to a
failing test's report. Each test records the figures it measured with ``figures``;
they are printed in a "reliability figures" section at the end of the run, which is
where RELIABILITY.md takes its numbers from.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import FaultNode, FaultRedis
from tests.support.reports import register_log

_FIGURES: list[tuple[str, str, Any]] = []


class Faults:
    """One Redis (started on first use) and hub nodes sharing it."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self._tmp = tmp_path
        self._request = request
        self.redis: FaultRedis | None = None
        self.nodes: list[FaultNode] = []

    def start_redis(self, *, unix_socket: bool = False, tls: bool = False) -> FaultRedis:
        """The test's redis-server, started at the first call (``unix_socket``: listening
        on one too, ``tls``: on TLS only; nodes then take redis-py's links, see
        RedisServer)."""
        if self.redis is None:
            self.redis = FaultRedis(self._tmp / "redis.log", unix_socket=unix_socket, tls=tls)
            register_log(self._request, "redis log", self.redis.log_path)
            self.redis.start()
        return self.redis

    def node(self, node_id: str, *, redis_url: str | None = None, **flags: object) -> FaultNode:
        """A node on the shared Redis (or reaching it at ``redis_url``: a proxy),
        spawned but not waited for."""
        url = self.start_redis().url if redis_url is None else redis_url
        node = FaultNode(node_id, self._tmp / f"hub-{node_id}.log", url, **flags)
        register_log(self._request, f"hub {node_id} log", node.log_path)
        self.nodes.append(node)
        node.spawn()
        return node

    def ready(self, *node_ids: str, **flags: object) -> list[FaultNode]:
        """Spawn nodes together, then wait until each answers 200 on /readyz."""
        nodes = [self.node(n, **flags) for n in node_ids]
        for node in nodes:
            node.wait_ready()
        return nodes

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive:
                node.stop()
        if self.redis is not None and self.redis.alive:
            self.redis.stop()


@pytest.fixture
def faults(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Faults]:
    f = Faults(tmp_path, request)
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Any:
    """``figures(name, value)`` records one measured figure for the end-of-run summary."""

    def record(name: str, value: Any) -> None:
        _FIGURES.append((request.node.name, name, value))
        request.node.user_properties.append((name, value))

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    test = None
    for name, key, value in _FIGURES:
        if name != test:
            terminalreporter.write_line(name)
            test = name
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        terminalreporter.write_line(f"    {key}: {shown}")
