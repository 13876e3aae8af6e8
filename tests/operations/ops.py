"""A small extension of the integration helpers for the operations tests.

`tests.integration.procs.HubNode` starts a node with fixed flags; the operations tests
need per-node flags (``--admin-token``, ``--drain-timeout``, ``--queue-bytes``, ...) and
environment variables, so `OpsNode` overrides only how the command line is built. It
also adds the HTTP, metrics and raw-WebSocket helpers the tests share.
"""

import asyncio
import base64
import contextlib
import http.client
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.procs import TIMEOUT, HubNode
from tests.support.messages import SUBAGENTS

ADMIN_TOKEN = "ops-admin-secret"

# Small timings (seconds) so that presence, peer-lost and drain tests finish quickly.
PRESENCE_TTL = 1.5
PEER_GRACE = 0.5
DRAIN_TIMEOUT = 5.0

REGISTRY_TYPE = SUBAGENTS + "BusAgentRegistryMessage"

# Every flag an OpsNode passes unless told otherwise; None leaves a flag out.
DEFAULT_FLAGS: dict[str, str | None] = {
    "--host": "127.0.0.1",
    "--presence-ttl": str(PRESENCE_TTL),
    "--peer-grace": str(PEER_GRACE),
    "--drain-timeout": str(DRAIN_TIMEOUT),
    "--admin-token": ADMIN_TOKEN,
    "--log-level": "info",
}


class OpsNode(HubNode):
    """A ``bushub serve`` process with chosen flags and environment variables.

    Args:
        node_id: Passed as ``--node-id`` unless None (then the env or default decides).
        flags: Overrides of `DEFAULT_FLAGS`; a value of None removes the flag.
        env: Extra environment variables for the process.
    """

    def __init__(
        self,
        node_id: str | None,
        log_path: Path,
        redis_url: str | None,
        *,
        flags: Mapping[str, str | None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(node_id or "node", log_path, redis_url)
        self.flags: dict[str, str | None] = {**DEFAULT_FLAGS, **(flags or {})}
        if node_id is not None:
            self.flags.setdefault("--node-id", node_id)
        self.env = dict(env or {})

    def spawn(self) -> None:
        argv = [sys.executable, "-m", "bushub", "serve", "--port", str(self.port)]
        for flag, value in self.flags.items():
            if value is not None:
                argv += [flag, value]
        if self.redis_url:
            argv += ["--redis-url", self.redis_url]
        self._spawn(argv, self.env)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, token: str | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
        """GET ``path``: (status, body). Raises OSError when nothing answers in
        ``timeout`` seconds."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def get_json(self, path: str, token: str | None = None) -> Any:
        status, body = self.get(path, token)
        assert status == 200, f"GET {path}: {status} {body!r}"
        return json.loads(body)

    def metrics(self) -> "Samples":
        status, body = self.get("/metrics")
        assert status == 200
        return Samples(body.decode())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ws_url(self, agent: str, **query: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"{self.url}/ws/{agent}" + (f"?{q}" if q else "")


class Samples:
    """One scrape of ``/metrics``: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self._values[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The value of one series; KeyError if it is not exported."""
        return self._values[(name, frozenset(labels.items()))]

    def get(self, name: str, default: float = 0.0, **labels: str) -> float:
        """The value of one series, or ``default`` if it is not exported (yet)."""
        return self._values.get((name, frozenset(labels.items())), default)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Every series of ``name`` as {label value: sample value}."""
        out = {}
        for (sample_name, labels), value in self._values.items():
            if sample_name == name:
                out[dict(labels)[label]] = value
        return out

    def nonzero(self, name: str, label: str) -> dict[str, float]:
        return {k: v for k, v in self.by_label(name, label).items() if v}


def wait_for_metrics(
    node: OpsNode, predicate: Callable[[Samples], bool], timeout: float = TIMEOUT
) -> Samples:
    """Scrape until ``predicate`` holds; return the last scrape either way.

    The caller then asserts exact values on what is returned, so a timeout shows as
    a readable assertion failure rather than a TimeoutError.
    """
    deadline = time.monotonic() + timeout
    while True:
        samples = node.metrics()
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


# ---- bus messages, as the subagents library writes them (JSON convention) -----------


def frame_message(source: str, seq: int, audio: bytes) -> dict[str, Any]:
    """An untargeted bridged frame (no ``target`` key), with bytes inside."""
    return {
        "__type__": SUBAGENTS + "BusFrameMessage",
        "__data__": {
            "source": source,
            "seq": seq,
            "audio": {"__type__": "bytes", "__data__": base64.b64encode(audio).decode()},
        },
    }


def registry_from_client(source: str) -> dict[str, Any]:
    entry = {
        "__type__": "pipecat_subagents.types.AgentRegistryEntry",
        "__data__": {"name": source, "active": False, "bridged": False},
    }
    return {
        "__type__": REGISTRY_TYPE,
        "__data__": {"source": source, "runner": "r", "agents": [entry]},
    }


# Every client socket a test opened, closed by the ``ops`` fixture before the nodes stop
# (a socket left to the garbage collector is an unraisable ResourceWarning later on).
OPEN_CLIENTS: list[ClientConnection | socket.socket] = []


async def ws_connect(url: str, **kwargs: Any) -> ClientConnection:
    ws = await connect(url, open_timeout=TIMEOUT, close_timeout=2, **kwargs)
    OPEN_CLIENTS.append(ws)
    return ws


async def close_clients() -> None:
    """Close every client socket the test opened (fast: no close handshake wait)."""
    while OPEN_CLIENTS:
        client = OPEN_CLIENTS.pop()
        if isinstance(client, socket.socket):
            client.close()
            continue
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 1)
        client.transport.abort()


async def recv_frame(ws: ClientConnection, timeout: float = TIMEOUT) -> bytes:
    frame = await asyncio.wait_for(ws.recv(), timeout)
    return frame if isinstance(frame, bytes) else frame.encode()


def raw_socket(node: OpsNode, agent: str) -> socket.socket:
    """A WebSocket handshake on a plain socket with a small, fixed receive buffer.

    Nothing past the handshake is read until the test calls `read_until_close`, so
    what the node sends stays queued in the node (the kernel buffer cannot grow).
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", node.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/{agent}?format=json&dialect=subagents HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{node.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)  # byte by byte: nothing past the headers is consumed
        assert chunk, "closed during the handshake"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    OPEN_CLIENTS.append(sock)
    return sock


def read_until_close(sock: socket.socket) -> tuple[list[bytes], int | None]:
    """Read a server's frames off a `raw_socket` until its Close: (payloads, code)."""
    sock.settimeout(TIMEOUT)
    buffer = b""

    def take(n: int) -> bytes:
        nonlocal buffer
        while len(buffer) < n:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("socket closed before a Close frame")
            buffer += chunk
        out, buffer = buffer[:n], buffer[n:]
        return out

    payloads: list[bytes] = []
    while True:
        first, second = take(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(take(2), "big")
        elif length == 127:
            length = int.from_bytes(take(8), "big")
        payload = take(length)
        opcode = first & 0x0F
        if opcode == 0x8:
            return payloads, int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
        if opcode in (0x1, 0x2):
            payloads.append(payload)
