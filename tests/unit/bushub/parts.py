"""Stand-ins for the I/O around the hub's parts: a socket that keeps what it is
sent, timers that fire when the test says, and connections built in memory."""

from collections.abc import Callable
from typing import Any

from bushub.auth import Grant, TokenVerifier
from bushub.connection import Connection, ConnectionParams
from bushub.limits import TokenBucket
from buswire import Format


class KeepingSocket:
    """A socket that takes every frame at once and keeps it."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_frame(self, payload: bytes) -> bool:
        self.frames.append(payload)
        return True

    def takes_frames(self) -> bool:
        return True


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


def open_grant() -> Grant:
    """What a socket may do with auth off: anything."""
    return TokenVerifier(None, [], 0, None).verify(None)


def connection(
    agent: str,
    peer: str | None = None,
    *,
    fmt: Format = Format.JSON,
    conn_id: str | None = None,
    close_on_peer_lost: bool = True,
) -> Connection:
    """An accepted socket in memory, writing to a ``KeepingSocket``."""
    params = ConnectionParams(
        agent=agent,
        peer=peer,
        format=fmt,
        format_declared=True,
        dialect=None,
        close_on_peer_lost=close_on_peer_lost,
    )
    conn = Connection(
        conn_id or f"test.{agent}",
        params,
        queue_bytes=1 << 20,
        grant=open_grant(),
        message_rate=TokenBucket(0),
        byte_rate=TokenBucket(0, 1 << 20),
    )
    conn.outlet = KeepingSocket()
    return conn


def written(conn: Connection) -> list[bytes]:
    """The frames written to a ``connection()``'s socket."""
    outlet = conn.outlet
    assert isinstance(outlet, KeepingSocket)
    return outlet.frames
