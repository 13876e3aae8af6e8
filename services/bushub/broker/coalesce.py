"""Calls made in one event-loop iteration, sent to Redis as one batch.

In a reconnect storm thousands of handshakes each read a record, list a claim and
write a record at once; one command each would queue them all for the command pool's
connections (and time out there). Coalesced, the calls of one loop iteration become one
pipeline, or one command (MGET, SADD), on one connection.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Sends a batch; returns one result per item, or an exception for an item that failed
# alone. Raising fails the whole batch.
Send = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class Coalesced(Generic[T, R]):
    """A call whose concurrent invocations share one round trip.

    Args:
        send: Sends the batch of one loop iteration, in the order called.
    """

    def __init__(self, send: Send[T, R]) -> None:
        self._send = send
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._run(batch))
        # Held here: the loop keeps only a weak reference to a task.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[T, "asyncio.Future[R]"]]) -> None:
        try:
            results = await self._send([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every caller of the batch gets it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its caller gave up (cancelled)
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
