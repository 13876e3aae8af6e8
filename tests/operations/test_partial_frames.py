"""Sockets that end in the middle of a frame leave nothing behind in a node.

websockets' protocol object and its parser (a generator that refers back to it) are
a reference cycle until the parser ends; a connection lost mid-frame left it
suspended with the partial frame (up to twice --max-message-bytes) for a full
collection, which the node makes rare (bushub.gcpolicy): 30 such sockets left 60 MB
per round, for good."""

import base64
import os
import socket
import struct
import time
from pathlib import Path

import pytest

from tests.operations.conftest import OpsCluster

pytestmark = pytest.mark.integration

FRAME = 2 << 20  # the largest frame the WebSocket layer reads (2 x --max-message-bytes)
SOCKETS = 30


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError("VmRSS")


def opened(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def test_sockets_ended_mid_frame_leave_their_partial_frames_to_no_collector(
    ops: OpsCluster,
) -> None:
    node = ops.node("partial", redis=False)
    node.wait_ready()
    header = struct.pack("!BBQ", 0x82, 0x80 | 127, FRAME) + b"\0\0\0\0"
    after: list[float] = []
    for _ in range(4):
        socks = [opened(node.port, f"/ws/pf{i}?peer=nobody") for i in range(SOCKETS)]
        for sock in socks:
            sock.sendall(header + b"x" * (FRAME - 1))  # all but the last byte
        time.sleep(1.0)
        for sock in socks:
            sock.close()
        time.sleep(2.0)
        after.append(rss_mb(node.pid))
    print("RSS after each round (MB):", [round(r) for r in after])
    # 60 MB a round stayed before. The first rounds set the allocator's own level
    # (70-125 MB here, by how busy the machine is); from then on it holds.
    assert after[-1] - after[1] < 30, after
