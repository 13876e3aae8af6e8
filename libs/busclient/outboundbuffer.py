"""The bounded, ordered hold for messages a proxy's agent sends while disconnected
(plain sockets; a session keeps its own send log, `busclient.session.SendLog`).
`busclient.reconnecting` re-exports it."""

from __future__ import annotations

from collections import deque


class OutboundBuffer:
    """Messages held while disconnected: ordered, bounded, oldest dropped first.

    Bounded by ``max_messages`` and ``max_bytes``; when a push passes either bound the
    oldest messages are dropped and counted in ``overflowed`` (for real-time traffic the
    newest is the one worth keeping). With ``max_age`` set, messages older than that are
    dropped when they reach the head, counted in ``expired``.
    """

    def __init__(
        self, max_messages: int = 1000, max_bytes: int = 8 << 20, max_age: float | None = None
    ) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("buffer bounds must be >= 1")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._items: deque[tuple[float, bytes]] = deque()
        self.bytes = 0
        self.pushed = 0
        self.overflowed = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, data: bytes, now: float) -> int:
        """Hold ``data``; returns how many messages were dropped to make room."""
        self._items.append((now, data))
        self.bytes += len(data)
        self.pushed += 1
        dropped = 0
        while self._items and (len(self._items) > self.max_messages or self.bytes > self.max_bytes):
            _, old = self._items.popleft()
            self.bytes -= len(old)
            dropped += 1
        self.overflowed += dropped
        return dropped

    def peek(self, now: float) -> bytes | None:
        """The oldest message still within ``max_age``, left in place; None if empty."""
        while self._items:
            stamp, data = self._items[0]
            if self.max_age is None or now - stamp <= self.max_age:
                return data
            self._items.popleft()
            self.bytes -= len(data)
            self.expired += 1
        return None

    def pop(self) -> bytes:
        """Remove and return the oldest message."""
        _, data = self._items.popleft()
        self.bytes -= len(data)
        return data

    def clear(self) -> int:
        """Drop everything held; returns how many messages that was."""
        count = len(self._items)
        self._items.clear()
        self.bytes = 0
        return count
