"""What the reliability suite adds to ``tests/integration/procs.py``.

- `FaultRedis`: the integration `RedisServer`, plus ``redis-cli`` and a restart on the
  same port (``RedisServer.start`` spawns on ``self.port``, so a killed server comes
  back where the nodes expect it).
- `FaultNode`: the integration `HubNode` with chosen flags, plus HTTP, metrics, /agents,
  and the process's RSS and open file descriptors read from ``/proc``.
- `Inbox`: a raw ``websockets`` client that records every frame it receives.
- `RawSocket`: a WebSocket spoken by hand over TCP, for what a library refuses to do:
  stop reading with a tiny receive buffer, send broken frames.

Every wait derives from ``TIMEOUT`` of the integration suite.
"""

import asyncio
import base64
import contextlib
import http.client
import itertools
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.integration.procs import TIMEOUT, HubNode, RedisServer
from tests.support.messages import decode, encode, task_request

ADMIN_TOKEN = "reliability-admin-token"


# ---- Redis --------------------------------------------------------------------------


class FaultRedis(RedisServer):
    """A throwaway redis-server that can be killed and brought back on its port."""

    def restart(self) -> None:
        """Start again on the same port (after `kill`); returns once it answers PING."""
        assert not self.alive
        self.start()

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *self.cli_login(), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
        return done.stdout

    def lines(self, *args: str) -> list[str]:
        return [line for line in self.cli(*args).splitlines() if line.strip()]

    def keys(self, pattern: str) -> list[str]:
        """``redis-cli --scan --pattern``: every key matching ``pattern``."""
        return self.lines("--scan", "--pattern", pattern)

    def channels(self, pattern: str = "bushub:*") -> list[str]:
        """``PUBSUB CHANNELS``: channels with at least one subscriber."""
        return self.lines("PUBSUB", "CHANNELS", pattern)

    def numsub(self, *channels: str) -> dict[str, int]:
        out = self.lines("PUBSUB", "NUMSUB", *channels)
        return {out[i]: int(out[i + 1]) for i in range(0, len(out), 2)}

    def clients(self) -> list[dict[str, str]]:
        """``CLIENT LIST``, one dict per connection."""
        rows = []
        for line in self.lines("CLIENT", "LIST"):
            rows.append(dict(field.split("=", 1) for field in line.split() if "=" in field))
        return rows

    def subscriber_omem(self) -> int:
        """The largest output buffer (bytes) of any subscribed connection right now."""
        return max((int(c["omem"]) for c in self.clients() if int(c["sub"]) > 0), default=0)


# ---- hub nodes ----------------------------------------------------------------------


class Samples:
    """One scrape of ``/metrics``: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self._values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self._values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """One series; 0 when it is not exported (yet)."""
        return self._values.get((name, frozenset(labels.items())), 0.0)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {
            dict(labels)[label]: value
            for (sample_name, labels), value in self._values.items()
            if sample_name == name and label in dict(labels)
        }

    def dropped(self) -> dict[str, float]:
        return self.by_label("bushub_messages_dropped_total", "reason")

    def received(self) -> float:
        return sum(self.by_label("bushub_messages_received_total", "format").values())

    def delivered(self) -> float:
        return sum(self.by_label("bushub_messages_delivered_total", "format").values())


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Per-label increase between two scrapes, zeros left out."""
    out = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return {k: v for k, v in out.items() if v}


class FaultNode(HubNode):
    """A ``bushub serve`` process with flags of the test's choosing.

    Args:
        flags: ``--flag value`` pairs added to (and overriding) the defaults below;
            names are given with underscores (``queue_bytes=65536``); True for a
            switch (``insecure=True``).
    """

    DEFAULTS: dict[str, object] = {
        "presence_ttl": 2.0,
        "peer_grace": 1.0,
        "admin_token": ADMIN_TOKEN,
        "log_level": "info",
    }

    def __init__(self, node_id: str, log_path: Path, redis_url: str | None, **flags: object):
        super().__init__(node_id, log_path, redis_url)
        self.flags = {**self.DEFAULTS, **flags}

    def spawn(self) -> None:
        argv = [sys.executable, "-m", "bushub", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--node-id", self.node_id]
        for name, value in self.flags.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                argv.append(flag)  # a switch: no value
            else:
                argv += [flag, str(value)]
        if self.redis_url:
            argv += ["--redis-url", self.redis_url]
        self._spawn(argv)

    def get(self, path: str, token: str | None = None) -> tuple[int | None, bytes]:
        """GET ``path``: (status, body), or (None, b"") when nothing answers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return None, b""
        finally:
            conn.close()

    def metrics(self) -> Samples:
        status, body = self.get("/metrics")
        assert status == 200, f"{self.name}: /metrics answered {status}"
        return Samples(body.decode())

    def agents(self) -> list[str]:
        """Agent names cluster-wide, from ``/agents``."""
        status, body = self.get("/agents", ADMIN_TOKEN)
        assert status == 200, f"{self.name}: /agents answered {status} {body!r}"
        return [row["agent"] for row in json.loads(body)["agents"]]

    def rss_kb(self) -> int:
        return _status_kb(self.pid, "VmRSS")

    def hwm_kb(self) -> int:
        return _status_kb(self.pid, "VmHWM")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ws_url(self, agent: str, **query: str) -> str:
        return f"{self.url}/ws/{agent}" + (f"?{urlencode(query)}" if query else "")


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


# ---- waiting ------------------------------------------------------------------------


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking call (HTTP, redis-cli, /proc) off the event loop."""
    return await asyncio.to_thread(fn, *args)


# ---- clients ------------------------------------------------------------------------


async def open_ws(node: FaultNode, agent: str, peer: str | None = None, **query: str) -> Any:
    """A ``websockets`` client socket for ``agent`` (paired with ``peer``)."""
    if peer is not None:
        query = {"peer": peer, **query}
    return await connect(
        node.ws_url(agent, **query),
        open_timeout=TIMEOUT,
        ping_interval=None,
        max_size=None,
        close_timeout=2,
    )


class Inbox:
    """Reads one client socket in the background and records what arrives.

    Attributes:
        seqs: ``payload.seq`` of every bus message received, in arrival order.
        times: ``time.monotonic()`` of each arrival, parallel to ``seqs``.
        announced: names of agents the hub announced in registry messages.
        close_code: the code the socket was closed with, once it is.
    """

    def __init__(self, ws: ClientConnection, name: str = "", echo_to: str | None = None) -> None:
        self.ws = ws
        self.name = name
        self.echo_to = echo_to
        self.seqs: list[int] = []
        self.times: list[float] = []
        self.frames = 0
        self.formats: list[str] = []  # "json" or "msgpack", per frame received
        self.announced: list[str] = []
        self.others: list[Any] = []
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self.changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"inbox-{name}")

    @classmethod
    async def open(
        cls,
        node: FaultNode,
        agent: str,
        peer: str | None = None,
        *,
        echo_to: str | None = None,
        **query: str,
    ) -> "Inbox":
        """Connect ``agent``; with ``echo_to``, send every numbered message back there."""
        return cls(await open_ws(node, agent, peer, **query), agent, echo_to)

    async def _run(self) -> None:
        try:
            async for raw in self.ws:
                now = time.monotonic()
                self.frames += 1
                self.formats.append("json" if raw[:1] in (b"{", "{") else "msgpack")
                tree = decode(raw)
                data = tree.get("__data__", {})
                if tree.get("__type__", "").endswith("RegistryMessage"):
                    for entry in data.get("agents", data.get("workers", [])):
                        self.announced.append(entry["__data__"]["name"])
                elif isinstance(data.get("payload"), dict) and "seq" in data["payload"]:
                    self.seqs.append(data["payload"]["seq"])
                    self.times.append(now)
                    if self.echo_to is not None:
                        reply = task_request(self.name, self.echo_to, data["payload"]["seq"])
                        await self.ws.send(encode(reply))
                else:
                    self.others.append(tree)
                self._notify()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        """Wait until ``predicate`` holds (re-checked on every arrival)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.1))
        return True

    async def announced_peer(self, peer: str, timeout: float = TIMEOUT) -> None:
        assert await self.wait(lambda: peer in self.announced, timeout), (
            f"{self.name}: {peer} never announced (got {self.announced})"
        )

    async def count(self, n: int, timeout: float = TIMEOUT) -> bool:
        return await self.wait(lambda: len(self.seqs) >= n, timeout)

    async def quiet(self, idle: float = 0.5, timeout: float = TIMEOUT) -> None:
        """Wait until nothing has arrived for ``idle`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.frames
            await asyncio.sleep(idle)
            if self.frames == last:
                return

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._task, TIMEOUT)


async def send_numbered(
    ws: ClientConnection,
    source: str,
    target: str,
    stop: asyncio.Event,
    sent: list[int],
    interval: float,
) -> None:
    """Send messages numbered 0, 1, ... every ``interval`` s until ``stop``; record each."""
    seq = 0
    next_at = time.monotonic()
    while not stop.is_set():
        await ws.send(encode(task_request(source, target, seq)))
        sent.append(seq)
        seq += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def losses(sent: int, seqs: list[int]) -> tuple[list[int], int, bool]:
    """(sequence numbers never received, duplicates, whether arrival order held)."""
    got = set(seqs)
    lost = [i for i in range(sent) if i not in got]
    in_order = all(a < b for a, b in itertools.pairwise(seqs))
    return lost, len(seqs) - len(got), in_order


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---- WebSocket by hand --------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """One WebSocket frame as a client writes it (masked)."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    repeated = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
    return head + key + masked


class RawSocket:
    """A WebSocket client written by hand over asyncio streams.

    ``rcvbuf`` shrinks the kernel receive buffer before connecting, so a client that
    stops reading fills up quickly.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls, node: FaultNode, agent: str, *, rcvbuf: int | None = None, **query: str
    ) -> "RawSocket":
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", node.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 22)
        path = f"/ws/{agent}" + (f"?{urlencode(query)}" if query else "")
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status = head.split(b" ", 2)[1]
        if status != b"101":
            writer.close()
            raise ConnectionError(f"handshake answered {status.decode()}: {head!r}")
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_frame(self, opcode: int, payload: bytes, **kwargs: Any) -> None:
        await self.send(frame(opcode, payload, **kwargs))

    async def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame from the server (unmasked)."""
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def close_code(self, timeout: float = TIMEOUT) -> int | None:
        """Read frames until the server's close frame: its code, or None on EOF."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    opcode, payload = await self.read_frame()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return None
                if opcode == OP_CLOSE:
                    return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005

    async def aclose(self) -> None:
        """Close the TCP connection and wait until it is closed (end of a test)."""
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


def fd_breakdown(node: FaultNode, redis_port: int) -> dict[str, Any]:
    """The node's open file descriptors: total, client sockets (accepted on its port),
    connections to Redis (the pub/sub one plus the command pool), other TCP sockets
    (with their states) and everything else (files, pipes, epoll...). Read from /proc,
    so nothing is asked of the node itself."""
    pid = node.pid
    sockets: set[str] = set()
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        total += 1
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                sockets.add(link[8:-1])
    out: dict[str, Any] = {"total": total, "clients": 0, "redis": 0, "tcp_other": []}
    matched = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows)
            for row in rows:
                cols = row.split()
                if cols[9] not in sockets:
                    continue
                matched.add(cols[9])
                local = int(cols[1].rsplit(":", 1)[1], 16)
                remote = int(cols[2].rsplit(":", 1)[1], 16)
                if cols[3] == "0A":
                    out["tcp_other"].append(f"listen:{local}")
                elif local == node.port:
                    out["clients"] += 1
                elif remote == redis_port:
                    out["redis"] += 1
                else:
                    out["tcp_other"].append(f"{local}->{remote} state {cols[3]}")
    out["unmatched_sockets"] = len(sockets - matched)
    out["other"] = total - len(sockets)
    return out
