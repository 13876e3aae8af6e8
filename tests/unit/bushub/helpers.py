"""Message builders and socket helpers shared by the hub tests.

Every wait in these tests is a multiple of ``TIMEOUT``, so a slow machine can be
given more time in one place.
"""

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from tests.support.messages import task_request
from tests.support.waiting import until

TIMEOUT = 2.0
# How long "nothing arrives" is watched for: several presence reconcile passes at
# the settings the harness uses.
QUIET = TIMEOUT / 4
# How long "nothing more arrives" is watched for where no timer is involved.
BRIEF = TIMEOUT / 20

FRAME_MESSAGE = "pipecat_subagents.bus.messages.BusFrameMessage"
SUBAGENTS_REGISTRY = "pipecat_subagents.bus.messages.BusAgentRegistryMessage"
SUBAGENTS_ENTRY = "pipecat_subagents.types.AgentRegistryEntry"
PIPECAT_REGISTRY = "pipecat.bus.messages.BusWorkerRegistryMessage"
PIPECAT_ENTRY = "pipecat.registry.types.WorkerRegistryEntry"
REGISTRY_TYPES = (SUBAGENTS_REGISTRY, PIPECAT_REGISTRY)


class TimedConnection(ClientConnection):
    """A client connection that remembers when the server's close frame arrived.

    ``ConnectionClosed`` is raised only once TCP is down too; the close frame
    itself is the moment the server told the client, which is what ordering
    claims are about.
    """

    close_frame_at: float | None = None

    def process_event(self, event: Any) -> None:
        closing = isinstance(event, Frame) and event.opcode is Opcode.CLOSE
        if closing and self.close_frame_at is None:
            self.close_frame_at = time.monotonic()
        super().process_event(event)


def frame_message(source: str, audio: bytes) -> dict[str, Any]:
    """An untargeted bridged-frame tree carrying audio as JSON's tagged base64."""
    frame = {
        "__type__": "pipecat.frames.frames.InputAudioRawFrame",
        "__data__": {
            "audio": {"__type__": "bytes", "__data__": base64.b64encode(audio).decode()},
            "sample_rate": 16000,
            "num_channels": 1,
        },
    }
    return {"__type__": FRAME_MESSAGE, "__data__": {"source": source, "frame": frame}}


def registry_from_client(source: str, target: str, agent: str) -> dict[str, Any]:
    """A subagents registry message as a client's own serializer would write it."""
    entry = {"__type__": SUBAGENTS_ENTRY, "__data__": {"name": agent, "active": True}}
    return {
        "__type__": SUBAGENTS_REGISTRY,
        "__data__": {"source": source, "target": target, "runner": "r1", "agents": [entry]},
    }


def as_json(tree: Any) -> bytes:
    """Encode like the library's JSON serializer (``json.dumps``)."""
    return json.dumps(tree).encode()


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """The shared `until` at this suite's timeout, polling often: the hub runs in-process
    and some states (readiness down) last only briefly. Fails naming ``what``."""
    await until(predicate, timeout, 0.005, what=what)


async def recv_bytes(ws: ClientConnection, timeout: float = TIMEOUT) -> bytes:
    """The next frame, which the hub must send as binary."""
    data = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(data, bytes), f"hub sent a text frame: {data!r}"
    return data


async def recv_json(ws: ClientConnection, timeout: float = TIMEOUT) -> Any:
    """The next frame, parsed as JSON."""
    return json.loads(await recv_bytes(ws, timeout))


async def recv_msgpack(ws: ClientConnection, timeout: float = TIMEOUT) -> Any:
    """The next frame, parsed as MsgPack."""
    return msgpack.unpackb(await recv_bytes(ws, timeout), raw=False)


async def recv_non_registry(ws: ClientConnection, timeout: float = TIMEOUT) -> bytes:
    """The next JSON frame that is not a hub registry announcement."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        data = await recv_bytes(ws, max(left, 0.001))
        if json.loads(data).get("__type__") not in REGISTRY_TYPES:
            return data


async def assert_silent(ws: ClientConnection, duration: float = QUIET) -> None:
    """Fail if any frame arrives within ``duration``."""
    try:
        data = await asyncio.wait_for(ws.recv(), duration)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame: {data!r:.300}")


async def close_code(ws: ClientConnection, timeout: float = TIMEOUT) -> int | None:
    """Read and discard frames until the server closes; the code it sent."""
    await drain_until_closed(ws, timeout)
    rcvd = ws.protocol.close_rcvd
    return rcvd.code if rcvd is not None else None


async def drain_until_closed(ws: ClientConnection, timeout: float = TIMEOUT) -> list[bytes | str]:
    """Every frame received until the server closes the connection."""
    frames: list[bytes | str] = []

    async def read() -> None:
        try:
            while True:
                frames.append(await ws.recv())
        except ConnectionClosed:
            return

    await asyncio.wait_for(read(), timeout)
    return frames


async def still_served(ws: ClientConnection, agent: str) -> None:
    """Prove the hub still relays for ``ws``: a message to itself comes back."""
    probe = as_json(task_request(agent, agent, seq=424242))
    await ws.send(probe)
    assert await recv_non_registry(ws) == probe


async def upgrade_status(port: int, target: str, timeout: float = TIMEOUT) -> int:
    """Send a WebSocket handshake for ``target`` exactly as given (clients re-encode
    odd paths); the HTTP status of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    try:
        status_line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    return int(status_line.split()[1])


CONTINUATION, PING, PONG, BINARY = 0x0, 0x9, 0xA, 0x2


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame (final unless ``fin`` is False), masked with a zero mask (the
    payload as it is)."""
    size = len(payload)
    first = opcode | (0x80 if fin else 0)
    if size < 126:
        head = bytes((first, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((first, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame the node wrote to a socket opened by ``raw_socket``: (opcode,
    payload); the node's frames are final and unmasked."""
    head = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    size = head[1] & 0x7F
    if size >= 126:
        extended = await asyncio.wait_for(reader.readexactly(2 if size == 126 else 8), TIMEOUT)
        size = int.from_bytes(extended, "big")
    return head[0] & 0x0F, await asyncio.wait_for(reader.readexactly(size), TIMEOUT)


async def raw_socket(
    host: str, port: int, path: str, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket opened by hand: what it writes after is up to the test."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert response.startswith(b"HTTP/1.1 101"), response
    return reader, writer
