"""A node listens with the accept backlog it is given, as deep as the kernel allows:
in a reconnect storm a full accept queue drops SYNs, and clients retry a dropped SYN
only after 1, 3, 7... s. Real node processes; the listening socket read with ``ss``."""

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from bushub.settings import Settings
from tests.operations.ops import OpsNode

pytestmark = pytest.mark.integration


def listen_backlog(port: int) -> int:
    """The backlog of the socket listening on ``port`` (``ss``'s Send-Q for it)."""
    ss = shutil.which("ss")
    assert ss, "ss (iproute2) is needed"
    out = subprocess.run(
        [ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    [line] = out.splitlines()
    return int(line.split()[2])


def somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"--backlog": "100"}, lambda: 100),
        # The default asks for 65,535: the kernel's cap decides.
        ({}, lambda: min(Settings().backlog, somaxconn())),
    ],
    ids=["asked", "default"],
)
def test_a_node_listens_with_its_backlog(
    tmp_path: Path, flags: dict[str, str], expected: Callable[[], int]
) -> None:
    node = OpsNode("backlog", tmp_path / "hub.log", None, flags=flags)
    node.spawn()
    try:
        node.wait_ready()
        assert listen_backlog(node.port) == expected()
    finally:
        node.stop()
