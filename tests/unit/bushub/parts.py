"""Stand-ins for the I/O around the hub's parts: a socket that keeps what it is
sent, timers that fire when the test says, and connections built in memory."""

from collections.abc import Callable
from typing import Any

from busbench.inmemory import TakingSocket, memory_connection

from bushub.connection import Connection
from buswire import Format


class KeepingSocket(TakingSocket):
    """A socket that takes every frame at once and keeps it."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_frame(self, payload: bytes) -> bool:
        self.frames.append(payload)
        return True


class ValveSocket(KeepingSocket):
    """A socket whose transport takes ``budget`` frames more, then none (a slow
    reader) until the test gives it more."""

    def __init__(self, budget: int = 0) -> None:
        super().__init__()
        self.budget = budget

    def send_frame(self, payload: bytes) -> bool:
        self.budget -= 1
        return super().send_frame(payload)

    def takes_frames(self) -> bool:
        return self.budget > 0


class FakeTimer:
    """A timer handle that fires only when the test calls ``fire``."""

    def __init__(self, delay: float, callback: Callable[..., object], args: tuple[Any, ...]):
        self.delay = delay
        self._callback = callback
        self._args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        assert not self.cancelled, "a cancelled timer fired"
        self._callback(*self._args)


class FakeTimers:
    """``loop.call_later`` for a test: every timer set is kept, none fires by itself."""

    def __init__(self) -> None:
        self.set: list[FakeTimer] = []

    def __call__(self, delay: float, callback: Callable[..., object], *args: Any) -> Any:
        timer = FakeTimer(delay, callback, args)
        self.set.append(timer)
        return timer

    def pending(self) -> list[FakeTimer]:
        return [t for t in self.set if not t.cancelled]


def connection(
    agent: str,
    peer: str | None = None,
    *,
    fmt: Format = Format.JSON,
    conn_id: str | None = None,
    close_on_peer_lost: bool = True,
    socket: KeepingSocket | None = None,
    queue_bytes: int = 1 << 20,
) -> Connection:
    """An accepted socket in memory, writing to ``socket`` (a new ``KeepingSocket``
    unless given)."""
    conn = memory_connection(
        agent,
        peer,
        fmt,
        conn_id=conn_id or f"test.{agent}",
        close_on_peer_lost=close_on_peer_lost,
        queue_bytes=queue_bytes,
    )
    conn.outlet = socket or KeepingSocket()
    return conn


def written(conn: Connection) -> list[bytes]:
    """The frames written to a ``connection()``'s socket."""
    outlet = conn.outlet
    assert isinstance(outlet, KeepingSocket)
    return outlet.frames
