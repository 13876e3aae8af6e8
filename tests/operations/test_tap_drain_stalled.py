"""A node drained while a tap's reader has stopped reading ends that tap quietly.

The drain ends every tap at once, but a tap whose reader stopped reading is waiting to
write, and uvicorn cancels it after its graceful-shutdown timeout. Before, that cancel
was logged as ``ERROR uvicorn.error Exception in ASGI application`` with a
CancelledError traceback, though nothing was wrong but the reader.
"""

import asyncio
import json
import signal
import socket
import time

import pytest

from tests.integration.procs import TIMEOUT
from tests.operations.conftest import OpsCluster
from tests.operations.ops import ADMIN_TOKEN, OPEN_CLIENTS, ws_connect
from tests.support.messages import SUBAGENTS

pytestmark = pytest.mark.integration

DRAIN = 1.0
# Events of ~12 kB each, more than the kernel's and uvicorn's buffers hold together.
EVENTS = 600


def task(source: str, target: str, n: int) -> str:
    payload = {f"k{i}": f"{n}" + "x" * 500 for i in range(24)}
    data = {"source": source, "target": target, "task_id": str(n), "task_name": "x"}
    return json.dumps({"__type__": SUBAGENTS + "BusTaskRequestMessage",
                       "__data__": {**data, "payload": payload}})  # fmt: skip


async def test_draining_with_a_stalled_tap_reader_logs_no_exception(ops: OpsCluster) -> None:
    flags = {"--drain-timeout": str(DRAIN), "--rate-bytes": "0"}
    node = ops.node("ts1", redis=False, flags=flags)
    node.wait_ready()
    reader = socket.socket()
    OPEN_CLIENTS.append(reader)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
    reader.settimeout(TIMEOUT)
    reader.connect(("127.0.0.1", node.port))
    request = f"GET /api/tap/v HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    reader.sendall(request.encode())
    assert reader.recv(15) == b"HTTP/1.1 200 OK"
    v = await ws_connect(node.ws_url("v", peer="w", format="json"), max_size=None)
    w = await ws_connect(node.ws_url("w", peer="v", format="json"), max_size=None)

    async def sink() -> None:
        async for _ in v:
            pass

    sinking = asyncio.create_task(sink())
    for n in range(EVENTS):
        await w.send(task("w", "v", n))
        if n % 50 == 0:
            await asyncio.sleep(0.05)  # within the node's tap event rate
    await asyncio.sleep(0.5)
    started = time.monotonic()
    node.signal(signal.SIGTERM)
    assert await asyncio.to_thread(node.wait) == 0
    assert time.monotonic() - started < DRAIN + TIMEOUT
    sinking.cancel()
    await asyncio.gather(sinking, return_exceptions=True)
    log = node.log_text()
    # The stall is real: uvicorn had to cancel the tap (its own line, which stays).
    assert "timeout graceful shutdown exceeded" in log, log
    assert "Exception in ASGI application" not in log, log
    assert "Traceback" not in log, log
