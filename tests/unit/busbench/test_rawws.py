"""The storm's lean WebSocket client against a real websockets server: the upgrade,
frames of every length encoding, a ping answered, the close code kept, a refusal
classified as the proxies classify it. On both loops: the load generators run on
uvloop, whose transports are not asyncio's."""

import asyncio
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop
from busbench.rawws import RawSocket, open_raw, upgrade_request
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request, Response

from busclient.reconnecting import ReconnectPolicy, describe_failure

SIZES = (5, 300, 70_000)  # 7-bit, 16-bit and 64-bit payload lengths
Runner = Callable[[Coroutine[Any, Any, None]], None]
LOOPS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


async def _dial(port: int, path: str, got: list[bytes]) -> RawSocket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    async with asyncio.timeout(5):
        return await open_raw(sock, upgrade_request("127.0.0.1", port, path), got.append)


async def _with_server(test: Callable[[int, list[object]], Awaitable[None]]) -> None:
    """Run ``test(port, seen)`` against a websockets server: ``/talk`` sends frames,
    pings and closes 4002; ``/busy`` is refused 503 with ``Retry-After: 1``; other
    paths read until closed."""
    seen: list[object] = []

    async def handler(ws: ServerConnection) -> None:
        if ws.request is not None and ws.request.path == "/talk":
            for size in SIZES:
                await ws.send(b"b" * size)
            await ws.send("text frame")
            await asyncio.wait_for(await ws.ping(b"are you there"), 5)
            seen.append("pong")
            await ws.close(4002, "peer lost")
        else:
            async for _ in ws:
                pass
            seen.append(ws.close_code)

    def refuse(_: ServerConnection, request: Request) -> Response | None:
        if request.path == "/busy":
            return Response(503, "Service Unavailable", Headers({"Retry-After": "1"}))
        return None

    async with serve(handler, "127.0.0.1", 0, process_request=refuse) as srv:
        await test(int(next(iter(srv.sockets)).getsockname()[1]), seen)


@LOOPS
def test_frames_of_every_length_a_ping_and_the_servers_close(run: Runner) -> None:
    async def test(port: int, seen: list[object]) -> None:
        got: list[bytes] = []
        raw = await _dial(port, "/talk", got)
        await asyncio.wait_for(raw.ended, 10)
        assert [len(g) for g in got] == [*SIZES, len("text frame")]
        assert got[-1] == b"text frame"
        assert seen == ["pong"]
        assert (raw.close_code, raw.close_reason) == (4002, "peer lost")
        assert raw.disconnect().code == 4002

    run(_with_server(test))


@LOOPS
def test_the_clients_close_reaches_the_server(run: Runner) -> None:
    async def test(port: int, seen: list[object]) -> None:
        raw = await _dial(port, "/listen", [])
        await raw.close()
        assert raw.ended.done()
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
        assert seen == [1000]

    run(_with_server(test))


@LOOPS
def test_a_refused_upgrade_raises_what_the_proxies_retry(run: Runner) -> None:
    async def test(port: int, _: list[object]) -> None:
        with pytest.raises(InvalidStatus) as refused:
            await _dial(port, "/busy", [])
        disconnect = describe_failure(refused.value)
        assert disconnect.status == 503
        assert disconnect.retry_after == 1.0, "the storm's sockets wait as the proxies do"
        assert ReconnectPolicy().classify(disconnect)[0]

    run(_with_server(test))


@LOOPS
def test_a_connection_closed_before_the_answer_is_an_eof(run: Runner) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def test() -> None:
        srv = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            with pytest.raises(EOFError):
                await _dial(port, "/ws/x", [])

    run(test())
