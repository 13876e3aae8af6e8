"""Connections that never become a request: half-sent requests, header floods, and a
node run up to its file descriptor limit (``bushub.handshake``, ``bushub.fdlimit``).

Each test runs its own ``bushub serve`` process with a short handshake deadline and a
small header limit, and talks to it over raw TCP sockets, as an attacker would.
"""

import asyncio
import base64
import contextlib
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.procs import TIMEOUT
from tests.security.conftest import _start, _stop
from tests.security.helpers import ADMIN_TOKEN, Peer, SecureHub

pytestmark = pytest.mark.integration

DEADLINE = 1.5  # --handshake-timeout
MAX_HEADER_BYTES = 4096  # --max-header-bytes
# How late a deadline may act on a loaded machine.
SLACK = TIMEOUT / 2
SLOWLORIS = 200
# The header flood of the report: 21 MB of header lines on each of several sockets.
FLOOD_BYTES = 21 << 20
FLOODS = 5
FLOOD_LINE = b"X-Flood: " + b"f" * 65_000 + b"\r\n"
# What a node's resident memory may grow by while refusing the floods.
RSS_GROWTH_ALLOWED = 30 << 20

TIMED_OUT_LINE = "no complete request within"
TOO_LARGE_LINE = "request headers over"


@pytest.fixture
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureHub]:
    """A node of its own per test, so that rate-limited log lines are this test's."""
    node = _start(
        tmp_path_factory,
        "handshake",
        *("--handshake-timeout", str(DEADLINE), "--max-header-bytes", str(MAX_HEADER_BYTES)),
    )
    yield node
    _stop(node)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def _read_to_end(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the hub sends until it closes the connection (a reset counts)."""
    received = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(4096):
                received += chunk
    return received


async def _half_request(port: int, n: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A socket that sent the start of a handshake and nothing more."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /ws/slow-{n} HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\n".encode())
    await writer.drain()
    return reader, writer


async def _trickle(writer: asyncio.StreamWriter) -> None:
    """Keep a half-sent request alive with a byte now and then, as slowloris does."""
    with contextlib.suppress(ConnectionError):
        while not writer.is_closing():
            writer.write(b"X")
            await writer.drain()
            await asyncio.sleep(DEADLINE / 5)


def _new_lines(hub: SecureHub, seen: int, needle: str) -> list[str]:
    return [line for line in hub.log_text()[seen:].splitlines() if needle in line]


async def test_half_sent_requests_are_closed_at_the_deadline(hub: SecureHub) -> None:
    log_seen = len(hub.log_text())
    refused_before = hub.refused("handshake_timeout")
    started = time.monotonic()
    sockets = [await _half_request(hub.port, n) for n in range(SLOWLORIS)]
    opened = time.monotonic()
    # A tenth of them keep sending: data does not push the deadline back.
    tricklers = [asyncio.create_task(_trickle(w)) for _, w in sockets[::10]]
    try:
        # The node answers while they are all open.
        status, _ = await asyncio.to_thread(hub.get, "/healthz")
        assert status == 200
        answers = await asyncio.gather(
            *(_read_to_end(r, DEADLINE + SLACK) for r, _ in sockets), return_exceptions=True
        )
        closed = time.monotonic()
    finally:
        for task in tricklers:
            task.cancel()
        for _, writer in sockets:
            writer.close()
    received = [a for a in answers if isinstance(a, bytes)]
    assert len(received) == SLOWLORIS, [a for a in answers if not isinstance(a, bytes)][:3]
    # Each was answered 408 and closed, none before its deadline, all soon after it.
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in received), {a[:40] for a in received}
    assert closed - opened >= DEADLINE - 0.1
    assert closed - started <= DEADLINE + SLACK
    assert hub.refused("handshake_timeout") == refused_before + SLOWLORIS
    # One warning for all of them: the next would come 10 s later, with a count.
    lines = _new_lines(hub, log_seen, TIMED_OUT_LINE)
    assert len(lines) == 1 and " WARNING " in lines[0], lines


@pytest.mark.parametrize("body", ["chunked", "length"])
@pytest.mark.parametrize("end", ["stalls", "hangs-up"])
async def test_a_send_whose_body_stops_coming_is_answered_408_without_a_traceback(
    tmp_path_factory: pytest.TempPathFactory, body: str, end: str
) -> None:
    """``POST /api/send`` with the admin token, its body cut short: one that stalls is
    answered 408 at the deadline and closed, one whose client hangs up is let go; no
    traceback either way. Before, each logged "Exception in ASGI application" with
    starlette's ClientDisconnect, and the stalled one got no answer."""
    node = _start(
        tmp_path_factory,
        "sendcut",
        *("--handshake-timeout", str(DEADLINE), "--admin-token", ADMIN_TOKEN),
    )
    try:
        framing = (
            'Transfer-Encoding: chunked\r\n\r\n5\r\n{"__t\r\n'
            if body == "chunked"
            else 'Content-Length: 100\r\n\r\n{"__type__"'
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(
            f"POST /api/send HTTP/1.1\r\nHost: hub\r\n"
            f"Authorization: Bearer {ADMIN_TOKEN}\r\n{framing}".encode()
        )
        await writer.drain()
        if end == "stalls":
            answer = await _read_to_end(reader, DEADLINE + SLACK)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:60]
        else:
            await asyncio.sleep(0.3)
        writer.close()
        await asyncio.sleep(0.3)
        status, _ = await asyncio.to_thread(node.get, "/healthz")
        assert status == 200
        log = node.log_text()
        assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    finally:
        _stop(node)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /ws/a?token=x\x7f HTTP/1.1\r\nHost: hub\r\n\r\n",
        b"GET /ws/a HTTP/1.1\r\nHost: hub\r\nX-Odd: a\x01b\r\n\r\n",
        b"GET /ws/a HTTP/9.9\r\nHost: hub\r\n\r\n",
    ],
    ids=["del-in-query", "control-in-header", "http-9.9"],
)
async def test_a_request_the_parser_refuses_is_counted(
    hub: SecureHub, request_bytes: bytes
) -> None:
    """uvicorn answers 400 to what its parser cannot read and logs it; it is counted
    too now (``bad_request``), as every refusal is. Before, the count did not move."""
    before = hub.refused("bad_request")
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(request_bytes)
    await writer.drain()
    answer = await _read_to_end(reader, TIMEOUT)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:60]
    assert hub.refused("bad_request") == before + 1


async def test_a_kept_alive_connection_gets_a_deadline_per_request(hub: SecureHub) -> None:
    """Idle between requests is uvicorn's keep-alive business, not a handshake; a
    later request that stalls is cut off at its own deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    request = b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n"
    try:
        for _ in range(2):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 200 "), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
            # Longer than the deadline, shorter than uvicorn's keep-alive (5 s).
            await asyncio.sleep(DEADLINE + 0.5)
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        answer = await _read_to_end(reader, DEADLINE + SLACK)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:60]
    assert DEADLINE - 0.1 <= time.monotonic() - started <= DEADLINE + SLACK


async def test_a_header_flood_is_refused_with_431_and_memory_stays_flat(hub: SecureHub) -> None:
    log_seen = len(hub.log_text())
    refused_before = hub.refused("headers_too_large")
    rss_before = _rss_bytes(hub.pid)

    def flood() -> int:
        """Send header lines until the hub cuts the socket off; the bytes it took."""
        sent = 0
        with socket.create_connection(("127.0.0.1", hub.port), timeout=TIMEOUT) as sock:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n")
                while sent < FLOOD_BYTES:
                    sock.sendall(FLOOD_LINE)
                    sent += len(FLOOD_LINE)
                # Everything went through: the hub must still close the socket.
                assert sock.recv(4096).startswith(b"HTTP/1.1 431 ")
                assert sock.recv(4096) == b""
            except (ConnectionError, TimeoutError) as exc:
                assert not isinstance(exc, TimeoutError), f"still open after {sent} bytes"
        return sent

    for _ in range(FLOODS):
        await asyncio.to_thread(flood)
    assert _rss_bytes(hub.pid) - rss_before < RSS_GROWTH_ALLOWED
    assert hub.refused("headers_too_large") == refused_before + FLOODS

    # One oversize header sent at once, then the client waits: it reads the 431.
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nX-Big: " + b"b" * MAX_HEADER_BYTES)
    answer = await _read_to_end(reader, TIMEOUT)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:60]
    assert hub.refused("headers_too_large") == refused_before + FLOODS + 1
    lines = _new_lines(hub, log_seen, TOO_LARGE_LINE)
    assert len(lines) == 1 and " WARNING " in lines[0], lines

    # Requests under the limit are served as before, plain and WebSocket alike.
    status, _ = await asyncio.to_thread(
        hub.get, "/healthz", {f"X-Pad-{i}": "p" * 500 for i in range(5)}
    )
    assert status == 200
    peer = await Peer.connect(hub, "after-the-flood")
    assert not peer.closed
    await peer.close()


async def test_near_its_descriptor_limit_a_node_warns_and_recovers(hub: SecureHub) -> None:
    """Run the node into a low descriptor limit with half-sent requests: it warns on
    the way up, and answers again once their deadline has passed."""
    limit = _open_fds(hub.pid) + 100
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.prlimit(hub.pid, resource.RLIMIT_NOFILE, (limit, hard))
    log_seen = len(hub.log_text())
    sockets = []
    try:
        # More than the limit: the last ones wait in the backlog, or are cut off.
        for n in range(150):
            with contextlib.suppress(ConnectionError):
                sockets.append(await _half_request(hub.port, n))
        # Once the first ones are dropped at their deadline, the node answers again
        # (the backlog's get their own deadline as they are accepted).
        deadline = time.monotonic() + 2 * DEADLINE + SLACK
        while hub.http_status("/healthz") != 200:
            assert time.monotonic() < deadline, "the node never answered again"
            await asyncio.sleep(0.1)
    finally:
        for _, writer in sockets:
            writer.close()
    assert hub.metric("bushub_fd_limit") == limit
    assert hub.metric("bushub_open_fds") < limit
    lines = _new_lines(hub, log_seen, "file descriptors open")
    assert len(lines) == 1 and " WARNING " in lines[0], lines
    assert f"of {limit} file descriptors" in lines[0]


@pytest.fixture
def roomy_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureHub]:
    """A node with the default header limit (16 KiB)."""
    node = _start(tmp_path_factory, "handshake-roomy")
    yield node
    _stop(node)


async def _upgrade(port: int, path: bytes, extra: bytes = b"", key: bytes | None = None) -> bytes:
    """The status line a raw WebSocket upgrade of ``path`` (and ``extra`` header
    lines) is answered with; ``key`` b"" leaves ``Sec-WebSocket-Key`` out."""
    key = base64.b64encode(os.urandom(16)) if key is None else key
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET " + path + b" HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        + (b"Sec-WebSocket-Key: " + key + b"\r\n" if key else b"")
        + extra
        + b"\r\n"
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            head = await reader.readuntil(b"\r\n")
    finally:
        writer.close()
    return head.rstrip()


async def test_an_upgrade_within_the_header_limit_is_read_whatever_its_lines(
    roomy_hub: SecureHub,
) -> None:
    # websockets' own limits (8,192 bytes a line, 128 lines) answered these 400.
    port = roomy_hub.port
    assert await _upgrade(port, b"/ws/long-query?pad=" + b"q" * 9000) == (
        b"HTTP/1.1 101 Switching Protocols"
    )
    long_header = b"X-Token: " + b"t" * 9000 + b"\r\n"
    assert await _upgrade(port, b"/ws/long-header", long_header) == (
        b"HTTP/1.1 101 Switching Protocols"
    )
    many = b"".join(b"X-%d: v\r\n" % i for i in range(300))
    assert await _upgrade(port, b"/ws/many-headers", many) == b"HTTP/1.1 101 Switching Protocols"
    # Over the limit: 431, as before.
    assert (await _upgrade(port, b"/ws/too-long?pad=" + b"q" * 17_000)).startswith(b"HTTP/1.1 431 ")
    assert roomy_hub.refused("bad_upgrade") == 0


async def test_an_upgrade_the_websocket_layer_cannot_read_is_refused_and_counted(
    hub: SecureHub,
) -> None:
    log_seen = len(hub.log_text())
    before = hub.refused("bad_upgrade")
    assert (await _upgrade(hub.port, b"/ws/no-key", key=b"")).startswith(b"HTTP/1.1 400 ")
    assert (await _upgrade(hub.port, b"/ws/bad-key", key=b"short")).startswith(b"HTTP/1.1 400 ")
    assert hub.refused("bad_upgrade") == before + 2
    lines = _new_lines(hub, log_seen, "not a WebSocket upgrade")
    assert len(lines) == 1 and " WARNING " in lines[0], lines  # the second rate-limited
    peer = await Peer.connect(hub, "after-bad-upgrades")
    assert not peer.closed
    await peer.close()
