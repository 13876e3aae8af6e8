"""Keepalive: a client that pings (as the stock proxy does) is never pinged by the
node; a silent client that answers pings stays; a client gone silent for good (no
answer to the node's ping) is closed with 4009 within two to three intervals, and
counted. Real node processes, real sockets."""

import asyncio
import os
import socket
import time

from websockets.frames import Opcode

from tests.operations.conftest import OpsCluster
from tests.operations.ops import raw_socket, wait_for_metrics, ws_connect

CLOSED = "bushub_connections_closed_total"
INTERVAL = 0.5
FLAGS = {"--keepalive": str(INTERVAL)}


def _frames(sock: socket.socket, seconds: float) -> list[tuple[int, bytes]]:
    """Every frame the node sends within ``seconds`` (or until it closes)."""
    deadline = time.monotonic() + seconds
    buffer = b""
    frames: list[tuple[int, bytes]] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            break
        if not chunk:
            break
        buffer += chunk
        while len(buffer) >= 2 and len(buffer) >= 2 + (buffer[1] & 0x7F):
            length = buffer[1] & 0x7F  # control frames and small frames only here
            frames.append((buffer[0] & 0x0F, buffer[2 : 2 + length]))
            buffer = buffer[2 + length :]
            if frames[-1][0] == Opcode.CLOSE:
                return frames
    return frames


def _ping(sock: socket.socket) -> None:
    """A masked, empty client PING."""
    sock.sendall(bytes([0x80 | Opcode.PING, 0x80]) + os.urandom(4))


def test_a_client_that_pings_is_never_pinged(ops: OpsCluster) -> None:
    [node] = ops.nodes_ready("k1", redis=False, flags=FLAGS)
    sock = raw_socket(node, "pinger")
    seen: list[tuple[int, bytes]] = []
    for _ in range(int(4 * INTERVAL / 0.2)):
        _ping(sock)
        seen += _frames(sock, 0.2)
    kinds = [opcode for opcode, _ in seen]
    assert Opcode.PONG in kinds
    assert Opcode.PING not in kinds and Opcode.CLOSE not in kinds


async def test_a_silent_client_that_answers_pings_stays(ops: OpsCluster) -> None:
    [node] = ops.nodes_ready("k2", redis=False, flags=FLAGS)
    # websockets answers the node's pings itself; it sends none of its own here.
    ws = await ws_connect(node.ws_url("quiet"), ping_interval=None)
    await asyncio.sleep(5 * INTERVAL)
    assert ws.close_code is None
    await ws.ping()
    await ws.close()


def test_a_client_trickling_one_frame_is_closed_with_4009(ops: OpsCluster) -> None:
    """Bytes that never make a whole frame are not a client heard from: one that sent
    a frame's header and then a byte now and then held its partial frame for good."""
    [node] = ops.nodes_ready("k4", redis=False, flags=FLAGS)
    sock = raw_socket(node, "trickler")
    sock.sendall(
        bytes([0x80 | Opcode.BINARY, 0x80 | 127]) + (100_000).to_bytes(8, "big") + b"\0" * 4
    )
    frames: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + 8 * INTERVAL
    while time.monotonic() < deadline and not any(k == Opcode.CLOSE for k, _ in frames):
        sock.sendall(b"x")
        frames += _frames(sock, 0.1)
    kinds = [opcode for opcode, _ in frames]
    assert kinds[-1:] == [Opcode.CLOSE], kinds
    assert int.from_bytes(frames[-1][1][:2], "big") == 4009


def test_a_client_gone_silent_is_pinged_then_closed_with_4009(ops: OpsCluster) -> None:
    [node] = ops.nodes_ready("k3", redis=False, flags=FLAGS)
    sock = raw_socket(node, "gone")
    started = time.monotonic()
    frames = _frames(sock, 6 * INTERVAL)
    elapsed = time.monotonic() - started
    kinds = [opcode for opcode, _ in frames]
    assert kinds[:1] == [Opcode.PING], kinds
    assert kinds[-1] == Opcode.CLOSE, kinds
    assert int.from_bytes(frames[-1][1][:2], "big") == 4009
    # Pinged at the first or second sweep, closed at the one after: 2-3 intervals.
    assert elapsed <= 3 * INTERVAL + 1.0
    samples = wait_for_metrics(node, lambda s: s.get(CLOSED, reason="keepalive_timeout") == 1)
    assert samples.get(CLOSED, reason="keepalive_timeout") == 1
    assert samples.get(CLOSED, reason="client_closed") == 0
