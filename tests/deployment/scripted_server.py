"""A real WebSocket server on loopback that ends each connection the way a script says.

Each accepted handshake takes the next step of the script: refuse with an HTTP status,
close with a code, drop the TCP connection without a close frame, or serve (record what
arrives and send what it is told) until the client closes. It counts sockets open at
once, so a test can assert that a client never holds two.
"""

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response


@dataclass(frozen=True)
class Step:
    """What the server does with one connection."""

    kind: str  # "refuse" (HTTP status), "close" (code), "drop" (no close frame), "serve"
    value: int = 0
    after: float = 0.0  # seconds to keep the socket before closing/dropping it
    receive: int = 0  # for close/drop: frames to receive first


def refuse(status: int) -> Step:
    return Step("refuse", status)


def close(code: int, after: float = 0.0, receive: int = 0) -> Step:
    return Step("close", code, after, receive)


def drop(after: float = 0.0, receive: int = 0) -> Step:
    return Step("drop", 0, after, receive)


SERVE = Step("serve")


@dataclass
class ScriptedServer:
    """``async with ScriptedServer([...]) as server``: ``server.url`` to dial."""

    script: Sequence[Step]
    received: list[bytes | str] = field(default_factory=list)
    handshakes: int = 0
    open_now: int = 0
    most_open: int = 0
    connections: list[ServerConnection] = field(default_factory=list)
    _server: Server | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws/a?peer=b"

    def _step(self) -> Step:
        index = self.handshakes - 1
        return self.script[index] if index < len(self.script) else SERVE

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes += 1
        self._notify()
        step = self._step()
        if step.kind == "refuse":
            return Response(step.value, "refused", Headers(), b"refused\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        step = self._step()
        self.connections.append(ws)
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        self._notify()
        try:
            for _ in range(step.receive):
                self.received.append(await ws.recv())
                self._notify()
            if step.kind == "serve":
                async for data in ws:
                    self.received.append(data)
                    self._notify()
                return
            if step.after:
                await asyncio.sleep(step.after)
            if step.kind == "close":
                await ws.close(step.value, "scripted")
            elif step.kind == "drop":
                ws.transport.abort()
        except Exception:
            pass
        finally:
            self.open_now -= 1
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not predicate():
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    async def send_all(self, data: bytes) -> None:
        """Send ``data`` to every open connection."""
        for ws in self.connections:
            with contextlib.suppress(Exception):
                await ws.send(data)

    async def __aenter__(self) -> "ScriptedServer":
        self._server = await serve(
            self._handler, "127.0.0.1", 0, process_request=self._process_request
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)
