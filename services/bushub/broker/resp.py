"""A raw Redis connection that only publishes.

The publisher sends one batch at a time: the commands go out in a single write and
the integer replies come back in order. redis-py's pipeline machinery (command
objects, response callbacks, connection pool round trips) cost more than the
publishing itself on the relay's hot path; this is the few lines the hub needs.
"""

import asyncio
import contextlib
from collections.abc import Sequence

from bushub.broker.base import PartialPublish

_CRLF = b"\r\n"


def encode_publish(command: bytes, channel: bytes, data: bytes) -> bytes:
    """One publish command in RESP."""
    return b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(command),
        command,
        len(channel),
        channel,
        len(data),
        data,
    )


class ReplyError(ConnectionError):
    """Redis refused the connection set-up (AUTH)."""


class PublishConnection:
    """A lazily opened TCP connection for ``PUBLISH``/``SPUBLISH`` batches.

    Args:
        host: Redis host.
        port: Redis port.
        command: ``PUBLISH`` or ``SPUBLISH``.
        username: ACL user, if any.
        password: Password, if any.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        command: bytes = b"PUBLISH",
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._address = (host, port)
        self._command = command
        self._auth = (username, password)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*self._address), 2.0)
        self._reader, self._writer = reader, writer
        username, password = self._auth
        if password:
            parts = [b"AUTH", *([username.encode()] if username else []), password.encode()]
            writer.write(
                b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
            )
            reply = await reader.readline()
            if not reply.startswith(b"+OK"):
                await self.close()
                raise ReplyError("redis refused AUTH")

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        """Publish in order; the number of subscribers reached by each message.

        Raises:
            ConnectionError: the connection failed (it is closed; the next call
                reconnects) or Redis answered with an error.
        """
        if self._writer is None:
            try:
                await self._connect()
            except OSError as exc:
                raise ConnectionError(f"redis publish connection: {exc}") from exc
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        command = self._command
        try:
            writer.write(b"".join(encode_publish(command, c.encode(), d) for c, d in items))
            # Every reply is read, errors too: Redis runs each command of a batch on
            # its own, so only the refused ones (MOVED after a slot moved) are retried.
            counts: list[int | None] = []
            errors: list[str] = []
            for _ in items:
                line = await reader.readline()
                if line[:1] == b":":
                    counts.append(int(line[1:-2]))
                elif not line:
                    raise ConnectionError("redis closed the publish connection")
                else:
                    counts.append(None)
                    errors.append(line.rstrip(_CRLF).decode(errors="replace"))
        except asyncio.CancelledError:
            # Cut off mid-batch (a timeout): replies would be out of step.
            self._abandon()
            raise
        except (OSError, asyncio.IncompleteReadError, ValueError, ConnectionError) as exc:
            # The reply stream is no longer in step with the commands: start over.
            await self.close()
            if isinstance(exc, ConnectionError):
                raise
            raise ConnectionError(f"redis publish connection: {exc}") from exc
        if errors:
            raise PartialPublish(counts, errors[0])
        return [c for c in counts if c is not None]

    def _abandon(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()

    async def close(self) -> None:
        """Close the connection; safe to call twice."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
