"""At start-up a node raises its own descriptor limit as far as the hard limit allows
for ``--max-connections`` sockets, and says so when even that is too low. Real node
processes started under ``prlimit``."""

import resource
import shutil
from pathlib import Path

import pytest

from tests.operations.ops import OpsNode


class LimitedNode(OpsNode):
    """A node started with the descriptor limits given (``prlimit``)."""

    def __init__(self, log_path: Path, soft: int, hard: int, max_connections: int) -> None:
        super().__init__("fd", log_path, None, flags={"--max-connections": str(max_connections)})
        self._limits = f"--nofile={soft}:{hard}"

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        prlimit = shutil.which("prlimit")
        assert prlimit, "prlimit (util-linux) is needed"
        super()._spawn([prlimit, self._limits, "--", *argv], env)


def _started(tmp_path: Path, soft: int, hard: int, max_connections: int) -> LimitedNode:
    node = LimitedNode(tmp_path / "hub.log", soft, hard, max_connections)
    node.spawn()
    node.wait_ready()
    return node


@pytest.fixture
def hard() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > 4096, "the tests' own hard limit is too low to try this"
    return int(hard)


def test_a_node_raises_its_soft_limit_for_its_max_connections(tmp_path: Path, hard: int) -> None:
    node = _started(tmp_path, 1024, hard, 2000)
    try:
        assert node.metrics().value("bushub_fd_limit") == 2000 + 256
        assert "file descriptor limit raised from 1024 to 2256" in node.log_text()
        assert "needs about" not in node.log_text()
    finally:
        node.stop()


def test_a_node_short_of_descriptors_says_so_at_start(tmp_path: Path, hard: int) -> None:
    node = _started(tmp_path, 1024, 2048, 4000)
    try:
        assert node.metrics().value("bushub_fd_limit") == 2048
        text = node.log_text()
        assert "file descriptor limit raised from 1024 to 2048" in text
        [line] = [ln for ln in text.splitlines() if "needs about 4256 file descriptors" in ln]
        assert " WARNING " in line and "hard limit 2048" in line
    finally:
        node.stop()
