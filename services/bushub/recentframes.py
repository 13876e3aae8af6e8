"""The frames this node delivered lately, to recognise one that is sent again.

After a broker break a publishing node sends again what the broker acknowledged just
before it (publisher.py): Redis may have died between writing the reply and writing
the copies to the subscribing nodes, or may not have. A node that delivered the frame
drops the resent copy; one that did not delivers it. Frames are compared whole: a
relay frame carries its receive time on the publishing node, so two different
messages are not the same bytes.

Bounded by count and bytes: what a resend can repeat was delivered in the moments
before the break, and nothing comes through the broker while it is away. Recording
a frame is an append; the set that answers lookups is built at the first lookup and
kept while resends come, then dropped. A frame is recorded as it came (a kept one
with its stream position) and compared by its ``key`` (the frame as published) only
while that set is kept: no copy per delivery.
"""

import time
from collections import deque
from collections.abc import Callable

MAX_FRAMES = 4096
MAX_BYTES = 8 * 1024 * 1024
# The lookup set goes this long after the last lookup (one break's resends come
# within a second or two of each other).
_INDEX_IDLE_SECONDS = 10.0
_INDEX_CHECK_EVERY = 1024


class RecentFrames:
    """The last frames delivered, newest last, within ``max_frames``/``max_bytes``.

    Args:
        key: What a lookup compares a recorded frame by (the frame itself if None).
    """

    def __init__(
        self,
        max_frames: int = MAX_FRAMES,
        max_bytes: int = MAX_BYTES,
        key: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._key = key or _itself
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._index: set[bytes] | None = None
        self._looked_up_at = 0.0
        self._adds = 0

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, data: bytes) -> None:
        """Record a frame as delivered."""
        frames = self._frames
        frames.append(data)
        self._bytes += len(data)
        index = self._index
        if index is not None:
            index.add(self._key(data))
            self._adds += 1
            if self._adds % _INDEX_CHECK_EVERY == 0 and self._index_idle():
                self._index = index = None
        while len(frames) > self._max_frames or self._bytes > self._max_bytes:
            old = frames.popleft()
            self._bytes -= len(old)
            if index is not None:
                index.discard(self._key(old))

    def seen(self, data: bytes) -> bool:
        """True if ``data`` is among the frames recorded (and still kept)."""
        self._looked_up_at = time.monotonic()
        if self._index is None:
            self._index = set(map(self._key, self._frames))
        return data in self._index

    def holds_lately(self, data: bytes) -> bool:
        """True if ``data`` is recorded, asked only while resends keep the lookup set
        (for a frame that is not itself a resend: the original of one delivered,
        coming late). Not a lookup: it does not keep the set."""
        index = self._index
        return index is not None and data in index

    def _index_idle(self) -> bool:
        return time.monotonic() - self._looked_up_at > _INDEX_IDLE_SECONDS


def _itself(data: bytes) -> bytes:
    return data
