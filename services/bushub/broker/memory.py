"""The in-process broker: one node, no Redis.

Delivery is asynchronous (``call_soon``) so the hub sees the same re-entrancy as
with a real broker: a publish never runs a subscriber's code inside it.
"""

import asyncio
import fnmatch
import math
import time
from collections.abc import Sequence

from bushub.broker.base import Broker, owner_of
from bushub.broker.memorynodes import MemoryNodeRegistry
from bushub.broker.nodes import NodeRegistry


def _expiry(ttl: float | None) -> float:
    return math.inf if ttl is None else time.monotonic() + ttl


class MemoryBroker(Broker):
    """Channels and records held in this process."""

    def __init__(self) -> None:
        super().__init__()
        self._channels: set[str] = set()
        self._records: dict[str, tuple[bytes, float]] = {}
        self._nodes = MemoryNodeRegistry()

    @property
    def up(self) -> bool:
        return True

    @property
    def description(self) -> str:
        return "in-process broker (single node)"

    @property
    def nodes(self) -> NodeRegistry:
        return self._nodes

    async def start(self) -> None:
        self._on_state(True)

    async def close(self) -> None:
        self._channels.clear()

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        loop = asyncio.get_running_loop()
        counts = []
        for channel, data in items:
            if channel in self._channels:
                loop.call_soon(self._on_message, channel, data)
                counts.append(1)
            else:
                counts.append(0)
        return counts

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    def _live(self, key: str) -> bytes | None:
        entry = self._records.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._records[key]
            return None
        return entry[0]

    async def put_record(self, key: str, value: bytes, ttl: float | None) -> None:
        self._records[key] = (value, _expiry(ttl))

    async def claim_record(
        self, key: str, value: bytes, ttl: float | None, channel: str, data: bytes
    ) -> None:
        await self.put_record(key, value, ttl)
        await self.publish_many([(channel, data)])

    async def refresh_records(
        self, items: Sequence[tuple[str, str, bytes]], ttl: float | None, *, create: bool = True
    ) -> list[bool]:
        results = []
        for key, conn, value in items:
            current = self._live(key)
            if (current is None and create) or (current is not None and owner_of(current) == conn):
                self._records[key] = (value, _expiry(ttl))
                results.append(True)
            else:
                results.append(False)
        return results

    async def delete_record(self, key: str, conn: str) -> None:
        current = self._live(key)
        if current is not None and owner_of(current) == conn:
            del self._records[key]

    async def get_records(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self._live(key) for key in keys]

    async def scan_records(self, pattern: str) -> list[bytes]:
        return [
            value
            for key in list(self._records)
            if fnmatch.fnmatchcase(key, pattern) and (value := self._live(key)) is not None
        ]
