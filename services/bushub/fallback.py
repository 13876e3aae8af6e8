"""Agent sockets under an ASGI server other than the hub's own protocol.

``bushub serve`` runs every socket on the direct path (``bushub.wsprotocol``). Under
another server (uvicorn with its stock WebSocket protocols, for one) a socket is one
connection, two tasks, one owner: a reader that checks and routes, a writer that
drains the connection's bounded queue, and whichever ends first ends the other. The
hub's parts are the same on both paths: ``Hub.route`` on the way in, the
connection's queue and ``Hub.sent`` on the way out.
"""

import asyncio
from collections.abc import Coroutine
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from bushub.closecodes import SOCKET_CLOSE_REASONS, CloseCode
from bushub.connection import Connection
from bushub.hub import Hub


async def serve_fallback(websocket: WebSocket, conn: Connection, hub: Hub) -> None:
    """Serve an accepted socket until it ends or the hub ends it."""
    await _first_to_end(
        _reader(websocket, conn, hub),
        _writer(websocket, conn, hub),
        # Ends the connection at once on a close that must not wait for the
        # writer, which may be stuck on a client that does not read.
        conn.closing.wait(),
    )


async def _reader(websocket: WebSocket, conn: Connection, hub: Hub) -> None:
    publisher = hub.publisher
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            _fallback_ended(conn, int(message.get("code", 1005)))
            return
        data = message.get("bytes")
        if data is None:
            text = message.get("text")
            if text is None:
                continue
            data = text.encode()
            if conn.session is not None:  # its frames are binary
                wait = hub.relay.refuse_text(conn, data)
                if wait:
                    await asyncio.sleep(wait)
                continue
        wait = hub.relay.route(conn, data)
        while wait:  # a session's message over the rate: the same one again, later
            await asyncio.sleep(wait)
            wait = hub.relay.route(conn, data)
        if publisher.crowded:
            await publisher.room()


def _fallback_ended(conn: Connection, code: int) -> None:
    """Record the end of a socket served by another ASGI server.

    Its disconnect event does not say who closed, so codes the WebSocket layer sends
    on its own (1002, 1007, 1009) are taken as the server's, which is how such
    servers use them; on the direct path the hub's protocol says so itself.
    """
    try:
        sent = CloseCode(code)
    except ValueError:
        sent = None
    if sent in SOCKET_CLOSE_REASONS and sent is not CloseCode.INTERNAL_ERROR:
        conn.socket_ended(code, sent)
    else:
        conn.socket_ended(code)


async def _writer(websocket: WebSocket, conn: Connection, hub: Hub) -> None:
    send = websocket.send
    while True:
        item = conn.pop()
        if item is None:
            if not await conn.wait_for_frames():
                return
            continue
        # Held while in flight: a frame cut off by a close is counted as lost.
        conn.sending = item
        await send({"type": "websocket.send", "bytes": item[0]})
        conn.sending = None
        hub.outbound.sent(conn, item[0], item[1])


async def _first_to_end(*coros: Coroutine[Any, Any, object]) -> None:
    """Run until one coroutine ends; cancel and await the rest."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect | OSError):
                raise exc
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
