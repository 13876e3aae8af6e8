"""Messages for a plain socket whose claim is not confirmed yet, held until it is.

After a broker break a node delivers nothing until its reconcile has confirmed each
socket's claim (``claims.py``): it may have missed a newer claim made elsewhere
meanwhile. Messages that come in between were dropped ``unconfirmed``, and they
come at once: other nodes send what they held through the break the moment Redis
answers again, while this node is still reading its claim keys. A Redis frozen for
five seconds cost plain sockets every message of the freeze that way. They wait
here instead, in order and bounded in bytes per socket, and are delivered once the
socket's claim is confirmed; they are dropped, counted ``unconfirmed``, past the
bound or if the socket ends (or loses its name) first. A session's socket needs none
of this: its stream keeps its messages and is read once its claim is confirmed
(``Sessions.missed``).
"""

from collections import deque
from collections.abc import Callable, Iterator

from bushub.connection import Connection


class _Held:
    __slots__ = ("frames", "size")

    def __init__(self) -> None:
        self.frames: deque[bytes] = deque()
        self.size = 0


class UnconfirmedFrames:
    """Relay frames held per socket while its claim is unconfirmed.

    Args:
        most_bytes: Held per socket at most (the newest frame is held whatever its
            size); past it the oldest are dropped.
        on_dropped: Called with how many frames were given up.
    """

    def __init__(self, most_bytes: int, on_dropped: Callable[[int], None]) -> None:
        self._most = most_bytes
        self._on_dropped = on_dropped
        # The sockets frames wait for: looked at for every frame delivered (a
        # lookup, not a call), and empty but after a broker break.
        self.waiting_for: dict[Connection, _Held] = {}

    def hold(self, conn: Connection, data: bytes) -> None:
        held = self.waiting_for.get(conn)
        if held is None:
            held = self.waiting_for[conn] = _Held()
        held.frames.append(data)
        held.size += len(data)
        dropped = 0
        while held.size > self._most and len(held.frames) > 1:
            held.size -= len(held.frames.popleft())
            dropped += 1
        if dropped:
            self._on_dropped(dropped)

    def waiting(self) -> Iterator[Connection]:
        """The sockets frames wait for (a copy: ``take`` and ``let_go`` may follow)."""
        return iter(list(self.waiting_for))

    def take(self, conn: Connection) -> list[bytes]:
        """The frames held for ``conn``, oldest first; none are held for it after."""
        held = self.waiting_for.pop(conn, None)
        return list(held.frames) if held is not None else []

    def let_go(self, conn: Connection) -> None:
        """``conn`` ended or lost its name: what it was held for is dropped."""
        held = self.waiting_for.pop(conn, None)
        if held is not None:
            self._on_dropped(len(held.frames))
