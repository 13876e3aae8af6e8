"""The node registry of the in-process broker (``bushub.broker.nodes``): the Redis
one's semantics, on this process's monotonic clock."""

import time
from collections.abc import Sequence

from bushub.broker.nodes import Beat, BeatStatus, NodeRegistry


class MemoryNodeRegistry(NodeRegistry):
    """The node registry in this process (as the Redis one, on the monotonic clock)."""

    def __init__(self) -> None:
        self._live: dict[str, float] = {}
        self._collecting: dict[str, float] = {}
        self._index: dict[str, set[str]] = {}
        self._collected: dict[str, set[str]] = {}
        # Nodes cleaned up after, listed dead until then.
        self._gone: dict[str, float] = {}

    async def beat(self, node: str, ttl: float) -> Beat:
        now = time.monotonic()
        hold = self._collecting.get(node)
        if hold is not None and hold >= now:
            status = BeatStatus.COLLECTING
        else:
            if hold is not None:
                del self._collecting[node]
                self._index.setdefault(node, set()).update(self._collected.pop(node, ()))
            lapses = self._live.get(node)
            status = (
                BeatStatus.ABSENT
                if lapses is None
                else BeatStatus.LAPSED
                if lapses < now
                else BeatStatus.LIVE
            )
            self._live[node] = now + ttl
            self._gone.pop(node, None)
        self._gone = {n: until for n, until in self._gone.items() if until >= now}
        dead = {n for n, lapses in self._live.items() if lapses < now}
        dead |= set(self._collecting) | set(self._gone)
        return Beat(status, frozenset(dead - {node}))

    async def enlist(self, node: str, members: Sequence[str]) -> None:
        self._index.setdefault(node, set()).update(members)

    async def delist(self, node: str, member: str) -> None:
        self._index.get(node, set()).discard(member)

    async def take(self, dead: str, hold: float) -> list[str] | None:
        now = time.monotonic()
        lapses = self._live.get(dead)
        held = self._collecting.get(dead)
        if (lapses is not None and lapses >= now) or (held is not None and held >= now):
            return None
        if lapses is None and held is None:
            return None
        self._live.pop(dead, None)
        self._collecting[dead] = now + hold
        taken = self._collected.setdefault(dead, set())
        taken.update(self._index.pop(dead, ()))
        return sorted(taken)

    async def collected(self, dead: str, linger: float) -> None:
        self._collecting.pop(dead, None)
        self._collected.pop(dead, None)
        self._gone[dead] = time.monotonic() + linger

    async def reset(self, node: str) -> list[str]:
        return sorted(self._index.pop(node, ()))

    async def leave(self, node: str) -> None:
        self._live.pop(node, None)
        self._index.pop(node, None)
