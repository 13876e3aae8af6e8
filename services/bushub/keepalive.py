"""Keepalive: finding clients that are gone without costing the ones that are not.

The stock proxy pings every 20 s (``websockets``' default), so a live client is
heard from well within any interval. One sweep per node every ``--keepalive``
seconds looks at a flag each socket sets when a whole frame arrives (bytes that never
complete one do not count: a client trickling a frame a byte at a time held its
partial frame for good): a socket heard from
is left alone; a silent one is pinged; one still silent at the next sweep is closed
with 4009. A node so answers its clients' own pings and sends none of its own to
them, where per-socket ping timers (uvicorn's) cost every idle socket a timer, a
ping and a pong every interval. A dead client is found within two to three
intervals.
"""

import asyncio
import logging
from collections.abc import Callable, Iterable

from bushub.closecodes import CloseCode
from bushub.connection import Connection

log = logging.getLogger(__name__)


def sweep(connections: Iterable[Connection]) -> int:
    """One keepalive check of every socket on the direct path; returns how many
    were closed."""
    closed = 0
    for conn in connections:
        outlet = conn.outlet
        if outlet is None or conn.closing.is_set():
            continue
        if not outlet.keepalive_check():
            conn.request_close(CloseCode.KEEPALIVE_TIMEOUT)
            closed += 1
    return closed


async def run(connections: Callable[[], Iterable[Connection]], interval: float) -> None:
    """Sweep every ``interval`` seconds for the node's life."""
    while True:
        await asyncio.sleep(interval)
        closed = sweep(connections())
        if closed:
            log.info("keepalive: closed %d silent sockets", closed)
