"""A TCP proxy on loopback, run on the test's event loop, that can misbehave on cue.

For faults a real process cannot be made to show on demand: ``swallow_replies``
discards what the upstream server sends (its clients hear nothing, as from a server
whose writes never left it) while what they send still goes up; ``partition()`` holds
everything both ways until ``heal()`` (as TCP across a partition: nothing arrives, no
reset, and what was sent arrives once it heals); ``cut()`` aborts every
connection (RST), as a killed server's would end. New connections are forwarded as
usual all along.
"""

import asyncio
import contextlib

from tests.support.ports import free_port

_CHUNK = 65536


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream_port`` on 127.0.0.1."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.swallow_replies = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.swallowed = 0  # bytes discarded while swallowing
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, replies=False)),
            asyncio.create_task(self._pump(up_reader, writer, replies=True)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.transport.abort()
            self._writers.discard(w)
        self._tasks.difference_update(pumps)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(_CHUNK):
                await self._flowing.wait()
                if replies and self.swallow_replies:
                    self.swallowed += len(chunk)
                    continue
                writer.write(chunk)
                await writer.drain()

    def partition(self) -> None:
        """Hold what either side sends (read no more of it) until ``heal``."""
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Abort every connection open now, both sides."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
