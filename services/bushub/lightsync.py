"""Small stand-ins for ``asyncio.Event`` and ``asyncio.Queue``, for per-socket state.

A node holds thousands of mostly idle sockets, and every ``asyncio.Event`` or
``asyncio.Queue`` owns ``collections.deque`` objects of ~760 bytes each, empty or
not: a socket's events and uvicorn's receive queue came to ~6 KB of its memory.
These keep nothing until somebody waits, and then one future.
"""

import asyncio
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")


class _Waitable(Protocol):
    async def wait(self) -> Any: ...


async def wait_at_most(event: _Waitable, seconds: float) -> bool:
    """Wait for ``event`` (a ``Flag``, an ``asyncio.Event``) ``seconds`` at most;
    True if it was set.

    Not ``asyncio.wait_for``: on Python 3.11, when the waiting task is cancelled in
    the loop turn that sets the event, it returns as if set and the cancellation is
    lost, and a loop around it waits again for good (a node's stop hung on its
    heartbeat that way). ``asyncio.timeout`` lets the cancellation through.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


class Flag:
    """``asyncio.Event``'s ``set``/``clear``/``is_set``/``wait``, without a deque."""

    __slots__ = ("_callbacks", "_future", "_set")

    def __init__(self) -> None:
        self._set = False
        self._future: asyncio.Future[None] | None = None
        self._callbacks: list[Callable[[], None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback()

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when next set (at once if set now)."""
        if self._set:
            callback()
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        """Return once set; at once if set already."""
        if self._set:
            return True
        future = self._future
        if future is None:
            future = self._future = asyncio.get_running_loop().create_future()
        # Shielded: waiters share the future, and one waiter's cancellation must
        # not wake the others.
        await asyncio.shield(future)
        return True


class Inbox(Generic[T]):
    """A FIFO with ``asyncio.Queue``'s non-blocking API and ``get()``, unbounded.

    Args:
        on_put: Called with each item as it is put (after it is queued).
    """

    __slots__ = ("_items", "_ready", "on_put")

    def __init__(self, on_put: Callable[[T], None] | None = None) -> None:
        self._items: list[T] = []
        self._ready: Flag | None = None
        self.on_put = on_put

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        if self._ready is not None:
            self._ready.set()
        if self.on_put is not None:
            self.on_put(item)

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> T:
        while not self._items:
            ready = self._ready
            if ready is None:
                ready = self._ready = Flag()
            ready.clear()
            await ready.wait()
        return self._items.pop(0)
