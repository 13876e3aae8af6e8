"""Commands in RESP for a raw connection: Lua script calls and their NOSCRIPT retry.

The hub's own connections (``resp.py``) take commands already encoded. A script is
called by its SHA1 (``EVALSHA``); a Redis whose script cache was emptied (a restart,
``SCRIPT FLUSH``) answers NOSCRIPT, and the call goes again with the script's text
(``EVAL``), which also puts it back in the cache. redis-py's pipeline asks ``SCRIPT
EXISTS`` before every batch instead: a round trip, and a Redis command, per batch.
"""

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

from bushub.broker.refusals import BrokerRefused, ErrorKind, classify

Arg = bytes | str | int


class Requester(Protocol):
    async def request(self, commands: bytes, size: int) -> list[Any]:
        """Send ``size`` commands; their replies, error replies as exceptions."""


def refused_or(replies: list[Any]) -> list[object]:
    """A raw connection's replies, each error reply as ``BrokerRefused``."""
    return [BrokerRefused(r) if isinstance(r, Exception) else r for r in replies]


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def arg_bytes(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):
        return b"%d" % value
    return value.encode(errors="surrogateescape")


def script_head(
    text: str, sha: bytes, keys: Sequence[str | bytes], args: int, *, by_sha: bool
) -> bytes:
    """A script call in RESP up to its arguments (``args`` of them follow): ``EVALSHA``,
    else ``EVAL`` with the script's text (for a Redis that answered NOSCRIPT, or to
    fill an emptied cache), and its keys."""
    script = bulk(b"EVALSHA") + bulk(sha) if by_sha else bulk(b"EVAL") + bulk(text.encode())
    return (
        b"*%d\r\n" % (3 + len(keys) + args)
        + script
        + bulk(b"%d" % len(keys))
        + b"".join(bulk(arg_bytes(key)) for key in keys)
    )


class Script:
    """One Lua script, called over a raw connection."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest().encode()

    def call(
        self, keys: Sequence[str | bytes], args: Sequence[Arg], *, by_sha: bool = True
    ) -> bytes:
        head = script_head(self.text, self.sha, keys, len(args), by_sha=by_sha)
        return head + b"".join(bulk(arg_bytes(a)) for a in args)

    async def run_many(
        self, conn: Requester, calls: Sequence[tuple[Sequence[str | bytes], Sequence[Arg]]]
    ) -> list[object]:
        """One call per ``(keys, args)``, in order, in one round trip (two after a
        NOSCRIPT: a call refused so did not run); each reply, an error reply as
        ``BrokerRefused``.

        Raises:
            ConnectionError: the connection failed (as ``conn.request``).
        """
        replies = await conn.request(b"".join(self.call(k, a) for k, a in calls), len(calls))
        again = [
            n
            for n, reply in enumerate(replies)
            if isinstance(reply, Exception) and classify(reply) is ErrorKind.NOSCRIPT
        ]
        if again:
            texts = b"".join(self.call(*calls[n], by_sha=False) for n in again)
            for n, reply in zip(again, await conn.request(texts, len(again)), strict=True):
                replies[n] = reply
        return refused_or(replies)
