"""A lean WebSocket client for the reconnect storm: the upgrade, then frames read.

A storm's load generators hold 10,000 sockets each on the machine whose cores the
hub's survivors need. With websockets' client (its handshake, a keepalive task and a
close handshake per socket) two generators took most of a core, saw the losses
seconds late and answered the survivors' handshakes after the clients' own timeout:
the bench measured its clients as much as the hub. This client does only what a
storm needs. It sends the upgrade request and reads the status line: anything but
101 raises websockets' own ``InvalidStatus``, so the proxies' policy classifies it as
it classifies the real client's. Then it hands each data frame's payload to a
callback, answers a ping with a pong and a close frame with its own, and keeps the
close code received. It sends no data and no pings of its own, offers no extension,
and does not check ``Sec-WebSocket-Accept`` (the hub under test is trusted).
"""

import asyncio
import base64
import os
import socket
from collections.abc import Callable
from typing import cast

from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from busclient.reconnecting import Disconnect

# A status line and headers longer than this is not a hub's answer.
MAX_RESPONSE_HEAD = 16 * 1024
# After a close frame is answered, the server closes the TCP connection; past this the
# client does.
CLOSE_WAIT = 2.0

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def upgrade_request(host: str, port: int, path: str) -> bytes:
    """The HTTP/1.1 upgrade request for ``path``, with a fresh key."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked frame of at most 125 bytes (control frames are no longer)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


def _status(head: bytes) -> tuple[int, str, Headers]:
    """Status code, reason and headers of a response head (``HTTP/1.1 101 ...``): a
    refusal's ``Retry-After`` reaches the proxies' policy as a real proxy's would."""
    line, *fields = head.split(b"\r\n")
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise EOFError(f"not an HTTP response: {line[:80]!r}")
    headers = Headers()
    for field in fields:
        name, sep, value = field.partition(b":")
        if sep:
            headers[name.decode("latin-1").strip()] = value.decode("latin-1").strip()
    return int(parts[1]), (parts[2] if len(parts) > 2 else b"").decode("latin-1"), headers


class RawSocket(asyncio.Protocol):
    """One client socket: ``opened`` resolves on 101, ``ended`` when TCP is gone."""

    def __init__(self, request: bytes, on_data: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.on_data = on_data
        self.close_code: int | None = None  # of the close frame received
        self.close_reason = ""
        self._request = request
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._upgraded = False

    # ---- asyncio ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(EOFError("connection closed during the handshake"))
        if not self.ended.done():
            self.ended.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    self._fail(EOFError("response head too long"))
                self._buf = buf
                return
            try:
                status, reason, headers = _status(buf[:end])
            except EOFError as exc:
                self._fail(exc)
                return
            if status != 101:
                self._fail(InvalidStatus(Response(status, reason, headers)))
                return
            self._upgraded = True
            self.opened.set_result(None)
            buf = buf[end + 4 :]
        self._buf = self._frames(buf)

    # ---- frames -------------------------------------------------------------------

    def _frames(self, buf: bytes) -> bytes:
        """Handle every whole frame in ``buf``; return the partial rest."""
        pos, size = 0, len(buf)
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if second & 0x80:
                self.abort()  # a server never masks its frames
                return b""
            if size - pos < head + length:
                break
            payload = buf[pos + head : pos + head + length]
            pos += head + length
            self._frame(first & 0x0F, payload)
        return buf[pos:]

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            self.on_data(payload)
        elif opcode == OP_PING:
            self._send(client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE and self.close_code is None:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close_reason = payload[2:].decode(errors="replace")
            self._send(client_frame(OP_CLOSE, payload[:2]))
            asyncio.get_running_loop().call_later(CLOSE_WAIT, self.abort)

    # ---- the client's side ----------------------------------------------------------

    def disconnect(self) -> Disconnect:
        """How the socket ended, as ``busclient.reconnecting.describe_close`` says it."""
        if self.close_code is not None:
            return Disconnect(code=self.close_code, reason=self.close_reason, local=False)
        return Disconnect(code=1006, reason="no close frame", local=False)

    async def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Send a close frame (1000) and wait, bounded, for the server to end TCP."""
        if self._upgraded and self.close_code is None:
            self._send(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
        try:
            await asyncio.wait_for(asyncio.shield(self.ended), timeout)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _send(self, frame: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)

    def _fail(self, exc: BaseException) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        self.abort()


async def open_raw(
    sock: socket.socket, request: bytes, on_data: Callable[[bytes], None]
) -> RawSocket:
    """Upgrade the connected, non-blocking ``sock`` with ``request``; raises as a dial does
    (``InvalidStatus``, ``EOFError``, ``OSError``). The caller bounds the time (a
    timeout's cancellation aborts the connection)."""
    loop = asyncio.get_running_loop()
    _, raw = await loop.create_connection(lambda: RawSocket(request, on_data), sock=sock)
    try:
        await raw.opened
    except BaseException:
        raw.abort()
        raise
    return raw
