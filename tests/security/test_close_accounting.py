"""A socket's end is counted under who ended it: a text frame that is not UTF-8 is the
client's fault, closed with 1007 and counted once as ``invalid_data`` without an error
in the log; a client that closes with 1007 or 1011 itself is a client closing."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.procs import TIMEOUT, RedisServer
from tests.security.conftest import _stop, _track
from tests.security.helpers import SecureHub, wait_for_metric, ws_url

pytestmark = pytest.mark.integration

NOT_UTF8 = b"\xff\xfe not text"
CLOSED = "bushub_connections_closed_total"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[SecureHub]:
    """A node on Redis: serving a socket starts with a round trip to it."""
    redis = RedisServer(tmp_path / "redis.log")
    redis.start()
    node = SecureHub("close-accounting", tmp_path / "hub.log", redis_url=redis.url)
    try:
        node.start()
        _track(node)
        yield node
    finally:
        _stop(node)
        redis.stop()


async def _open(hub: SecureHub, agent: str) -> ClientConnection:
    return await connect(ws_url(hub, agent), open_timeout=TIMEOUT, proxy=None)


async def _close_code(ws: ClientConnection) -> int | None:
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
    return ws.close_code


async def test_a_text_frame_that_is_not_utf8_is_closed_1007_without_a_traceback(
    hub: SecureHub,
) -> None:
    # Sent at once: on a node with Redis it arrives while the hub subscribes the
    # socket's channel, before it serves the socket (uvicorn's check logged a
    # traceback there).
    early = await _open(hub, "early")
    await early.send(NOT_UTF8, text=True)
    # Once the socket is served: it arrives on the direct path.
    late = await _open(hub, "late")
    await late.send(b'{"not": "a message"}')
    await asyncio.sleep(0.2)
    await late.send(NOT_UTF8, text=True)
    assert await _close_code(early) == 1007
    assert await _close_code(late) == 1007
    await wait_for_metric(hub, CLOSED, {"reason": "invalid_data"}, 2)
    assert hub.metric(CLOSED, reason="client_closed") == 0
    assert hub.metric(CLOSED, reason="internal_error") == 0
    log = hub.log_text()
    assert "Traceback" not in log and " ERROR " not in log, log
    assert log.count("a text frame is not UTF-8") == 2


@pytest.mark.parametrize("code", [1007, 1011, 1002])
async def test_a_client_closing_with_an_error_code_is_counted_as_client_closed(
    hub: SecureHub, code: int
) -> None:
    ws = await _open(hub, f"closer-{code}")
    await ws.close(code=code)
    await wait_for_metric(hub, CLOSED, {"reason": "client_closed"}, 1)
    for reason in ("invalid_data", "internal_error", "protocol_error"):
        assert hub.metric(CLOSED, reason=reason) == 0
    assert f"code={code} reason=client_closed" in hub.log_text()
