"""A session socket spoken by hand (docs/protocol.md, Sessions): the hub's side of the
protocol tested without the proxies, each frame seen as it crosses."""

import asyncio
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect

from buswire import sessionframe
from tests.support.messages import decode, encode, task_request


class SessionSocket:
    """One socket of a session: what it received, by position, and its acks."""

    def __init__(self, ws: ClientConnection, *, reading: bool = True) -> None:
        self.ws = ws
        result, self.epoch = sessionframe.parse_resume_header(
            ws.response.headers.get(sessionframe.RESUME_HEADER, "")
        )
        self.result = result if sessionframe.RESUME_HEADER in ws.response.headers else None
        self.messages: list[tuple[int, Any]] = []  # (position, tree) of numbered ones
        self.announcements: list[Any] = []  # the unnumbered ones
        self.arrivals: list[int] = []  # payload.seq of every message, numbered or not, in order
        self.acked = 0
        self.takes_inline_acks = sessionframe.takes_inline_acks(
            ws.response.headers.get(sessionframe.RESUME_HEADER, "")
        )
        self.ack_frames = 0  # acknowledgements in frames of their own
        self.inline_acks = 0  # acknowledgements riding on messages
        self._reader: asyncio.Task[None] | None = None
        if reading:
            self.read_on()

    def read_on(self) -> None:
        """Start reading (a ``stalled`` socket reads nothing until this)."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        hub: str,
        agent: str,
        peer: str,
        session: str,
        received: int = 0,
        *,
        on_peer_lost: str = "keep",
        inline_acks: bool = False,
        stalled: bool = False,
        sent_lost: int = 0,
        peer_seen: bool = False,
    ) -> "SessionSocket":
        """Open a session socket; ``on_peer_lost`` is ``keep`` unless told: its peer's
        own comings and goings are not what these tests look at. With
        ``inline_acks`` it asks for acknowledgements riding on messages; with
        ``sent_lost``, it says it gave up that many messages it sent; with
        ``peer_seen``, that it was told of its peer before; ``stalled``,
        it reads nothing until ``read_on`` (a slow reader: a small receive buffer, and
        the client library stops reading its TCP connection after a frame)."""
        url = f"{hub}/ws/{agent}?peer={peer}&session={session}&received={received}"
        if inline_acks:
            url += f"&{sessionframe.INLINE_ACKS}"
        if sent_lost:
            url += f"&{sessionframe.SENT_LOST_PARAM}={sent_lost}"
        if peer_seen:
            url += f"&{sessionframe.PEER_SEEN_PARAM}=1"
        url += f"&on_peer_lost={on_peer_lost}"
        if not stalled:
            return cls(await connect(url))
        address = urlsplit(hub)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (address.hostname, address.port))
        return cls(await connect(url, sock=sock, max_queue=1), reading=False)

    async def _read(self) -> None:
        async for data in self.ws:
            assert isinstance(data, bytes), "frames to a session socket are binary"
            frame = sessionframe.decode(data)
            if frame.kind is sessionframe.Kind.ACK:
                self.acked = frame.position
                self.ack_frames += 1
            else:
                if frame.acked:
                    self.acked = frame.acked
                    self.inline_acks += 1
                tree = decode(frame.payload)
                if frame.kind is sessionframe.Kind.MESSAGE:
                    self.messages.append((frame.position, tree))
                else:
                    self.announcements.append(tree)
                payload = tree.get("__data__", {}).get("payload")
                if isinstance(payload, dict) and "seq" in payload:
                    self.arrivals.append(payload["seq"])

    @property
    def positions(self) -> list[int]:
        return [position for position, _ in self.messages]

    def seqs(self) -> list[int]:
        """``payload.seq`` of every numbered message, in arrival order."""
        return [tree["__data__"]["payload"]["seq"] for _, tree in self.messages]

    async def send(
        self, position: int, source: str, target: str, seq: int, *, acked: int = 0
    ) -> None:
        """Send a task request at ``position``; with ``acked``, acknowledging every
        position up to it on the same frame (inline)."""
        payload = encode(task_request(source, target, seq))
        if acked:
            await self.ws.send(sessionframe.message_acked(position, acked, payload))
        else:
            await self.ws.send(sessionframe.message(position, payload))

    async def ack(self, position: int) -> None:
        await self.ws.send(sessionframe.ack(position))

    async def vanish(self) -> None:
        """Drop the TCP connection with no close frame (a killed process, a cut)."""
        self.ws.transport.abort()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class PlainSocket:
    """A stock client's socket: JSON frames, no session."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.trees: list[Any] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, hub: str, agent: str, peer: str, *, on_peer_lost: str = "close"
    ) -> "PlainSocket":
        return cls(await connect(f"{hub}/ws/{agent}?peer={peer}&on_peer_lost={on_peer_lost}"))

    async def _read(self) -> None:
        async for data in self.ws:
            self.trees.append(json.loads(data))

    def seqs(self) -> list[int]:
        """``payload.seq`` of every task request received, in order."""
        return [
            t["__data__"]["payload"]["seq"]
            for t in self.trees
            if t["__type__"].endswith("BusTaskRequestMessage")
        ]

    def runners(self) -> list[str]:
        """The runners of the registry messages received (one per announcement)."""
        return [
            t["__data__"]["runner"]
            for t in self.trees
            if t["__type__"].endswith("BusAgentRegistryMessage")
        ]

    async def send(self, source: str, target: str, seq: int) -> None:
        await self.ws.send(encode(task_request(source, target, seq)))

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)
