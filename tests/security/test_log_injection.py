"""What a client sends never shapes the node's text log: a percent-encoded newline in
a socket path cannot forge a line of its own, nor a NUL or an escape sequence land
in the file (``bushub.logs.TextFormatter``)."""

import asyncio
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.integration.procs import TIMEOUT
from tests.security.conftest import _start, _stop
from tests.security.helpers import SecureHub
from tests.unit.bushub.helpers import upgrade_status

pytestmark = pytest.mark.integration

FORGED = "2026-01-01 00:00:00,000 ERROR bushub.hub forged-by-the-client"


@pytest.fixture
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureHub]:
    node = _start(tmp_path_factory, "log-injection")
    yield node
    _stop(node)


async def test_a_newline_in_a_path_cannot_forge_a_log_line(hub: SecureHub) -> None:
    targets = (
        f"/ws/x%0A{quote(FORGED)}",  # a line of its own
        f"/ws/x%0D%0A{quote(FORGED)}",
        f"/ws/x%E2%80%A8{quote(FORGED)}",  # U+2028, a line break to some viewers
        "/ws/nul%00byte",
        "/ws/esc%1B%5B31mred",  # a terminal escape sequence
    )
    for target in targets:
        assert await upgrade_status(hub.port, target, TIMEOUT) == 403
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while "red: bad_parameters" not in hub.log_text():
        assert asyncio.get_running_loop().time() < deadline, "the refusals were never logged"
        await asyncio.sleep(0.05)

    raw = hub.log_path.read_bytes()
    assert b"\x00" not in raw and b"\x1b" not in raw and "\u2028".encode() not in raw
    lines = raw.decode().splitlines()
    assert not [line for line in lines if line.startswith(FORGED)], "a forged line"
    quoted = [line for line in lines if "forged-by-the-client" in line]
    assert quoted, "the refusal lines name what the client sent"
    # The client's bytes sit inside the node's own lines, the line breaks escaped.
    assert all(not line.startswith("2026-01-01 ") for line in quoted), quoted
    text = hub.log_text()
    for escaped in ("x\\n", "x\\r\\n", "x\\u2028"):
        assert f"refused {escaped}{FORGED}" in text, escaped
    assert "nul\\x00byte" in text
