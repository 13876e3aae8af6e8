"""uvicorn's WebSocket protocol, with a close that does not wait for the client.

uvicorn's ``send`` waits until the transport is writable before anything, a close
frame included. A client that stopped reading keeps the transport paused forever,
so the hub could never tell it 4008 (slow consumer): the frame is queued now,
behind the backlog the client will read first, and uvicorn's close timer ends the
connection if the client never answers.
"""

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class HubWebSocketProtocol(WebSocketsSansIOProtocol):
    """``websockets-sansio`` whose close frame skips the flow-control wait."""

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.close" and self.handshake_complete:
            # Nothing is sent after a close, so leaving the gate open is harmless.
            self.writable.set()
        await super().send(message)
