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
from bushub.broker.memorysessions import MemorySessions
from bushub.broker.nodes import NodeRegistry
from bushub.broker.sessionscripts import Reasserted, Resumed, SessionLimits
from buswire import message_channel

_MESSAGE_PREFIX = message_channel("")[:-1]


def _expiry(ttl: float | None) -> float:
    return math.inf if ttl is None else time.monotonic() + ttl


class MemoryBroker(Broker):
    """Channels and records held in this process."""

    def __init__(self) -> None:
        super().__init__()
        self._channels: set[str] = set()
        self._records: dict[str, tuple[bytes, float]] = {}
        self._nodes = MemoryNodeRegistry()
        self._sessions: MemorySessions | None = None

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
        sessions = self._sessions
        for channel, data in items:
            kept = 0
            if sessions is not None and channel.startswith(_MESSAGE_PREFIX):
                published, kept = sessions.deliver(channel[len(_MESSAGE_PREFIX) : -1], data)
                if published is None:
                    counts.append(-1)  # relayed once already (DELIVER's -1)
                    continue
                data = published
            if channel in self._channels:
                loop.call_soon(self._on_message, channel, data)
                counts.append(1)
            else:
                counts.append(-2 if kept else 0)
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

    async def scan_records(self, pattern: str, most: int) -> list[bytes]:
        keys = [key for key in list(self._records) if fnmatch.fnmatchcase(key, pattern)]
        return await self._live_values(keys[:most])

    def keep_for_sessions(self, limits: SessionLimits) -> None:
        self._sessions = MemorySessions(limits)

    def _kept(self) -> MemorySessions:
        if self._sessions is None:
            raise RuntimeError("sessions are off (keep_for_sessions was not called)")
        return self._sessions

    async def resume_session(
        self, agent: str, session: str, received: int, epoch: str, conn: str, renew: bool = False
    ) -> Resumed:
        return self._kept().resume(agent, session, received, epoch, conn, renew)

    async def read_session(
        self, agent: str, after: int, most: int | None = None
    ) -> list[tuple[int, bytes]]:
        return self._kept().read(agent, after, most)

    async def reassert_session(
        self, agent: str, session: str, epoch: str, conn: str, delivered: int
    ) -> Reasserted:
        return Reasserted.HELD  # the in-process broker never loses what it holds

    async def ack_sessions(self, items: Sequence[tuple[str, str, int]]) -> None:
        for agent, session, position in items:
            self._kept().ack(agent, session, position)

    def ack_session_nowait(self, agent: str, session: str, position: int) -> bool:
        self._kept().ack(agent, session, position)
        return True

    async def release_sessions(self, items: Sequence[tuple[str, str]], window: float) -> None:
        if self._sessions is None:
            return  # none kept: nothing to release
        for agent, conn in items:
            self._sessions.release(agent, conn, window)

    async def session_kept(self, agent: str) -> bool:
        return self._sessions is not None and self._sessions.kept(agent)

    async def end_away_session(self, agent: str, position: int) -> int | None:
        return None if self._sessions is None else self._sessions.end_away(agent, position)

    async def relayed_senders_gone(self, agent: str, most: int) -> dict[bytes, bytes]:
        return self._kept().senders_gone(agent, most)

    async def forget_relayed(self, agent: str, senders: dict[bytes, bytes]) -> int:
        return self._kept().forget(agent, senders)
