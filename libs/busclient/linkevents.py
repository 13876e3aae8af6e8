"""The link hooks both reconnecting proxies share: a log line, then the proxy's event.

The two dialects' proxies differ in what they call themselves in their logs ("Agent"
in ``pipecat-ai-subagents``, "Worker" in pipecat core) and in how they filter frames
(``link_frame``, each its own); what they do when the link connects, resumes,
reconnects or gives up is the same, and lives here.
"""

from typing import Any, Protocol

from loguru import logger
from websockets.asyncio.client import ClientConnection

from busclient.reconnecting import Disconnect, ReconnectingLink


class _Proxy(Protocol):
    """What the hooks need of the proxy they are mixed into."""

    _kind: str
    _link: ReconnectingLink
    _url: str

    async def _call_event_handler(self, event_name: str, *args: Any) -> None: ...


class LinkEvents:
    """``ReconnectingLink`` hooks that log and fire the proxy's events (``on_connected``,
    ``on_reconnected``, ``on_resume_gap``, ``on_reconnecting``, ``on_disconnected``).

    Mixed in before the stock proxy class; ``_kind`` names the proxy in log lines.
    """

    _kind = "Agent"

    async def link_connected(
        self: _Proxy, websocket: ClientConnection, first: bool, attempts: int
    ) -> None:
        if first:
            logger.debug(f"{self._kind} '{self}': connected to {self._url}")
            await self._call_event_handler("on_connected", websocket)
            return
        held = self._link.stats.buffered + self._link.stats.unacked
        logger.info(
            f"{self._kind} '{self}': reconnected after {attempts} attempt(s); "
            f"sending {held} held message(s)"
        )
        await self._call_event_handler("on_reconnected", websocket, attempts)

    async def link_resumed(self: _Proxy, result: str, epoch: str) -> None:
        if not self._link.stats.last_resume_lost:
            logger.debug(f"{self._kind} '{self}': session {result} (epoch {epoch!r})")
            return
        logger.warning(
            f"{self._kind} '{self}': session {result} (epoch {epoch!r}): "
            "messages from the hub were lost"
        )
        await self._call_event_handler("on_resume_gap", result, epoch)

    async def link_reconnecting(
        self: _Proxy, disconnect: Disconnect, attempt: int, delay: float
    ) -> None:
        logger.warning(
            f"{self._kind} '{self}': {disconnect.describe()}; "
            f"reconnect attempt {attempt} in {delay:.2f}s"
        )
        await self._call_event_handler("on_reconnecting", disconnect, attempt, delay)

    async def link_gave_up(
        self: _Proxy, websocket: ClientConnection | None, disconnect: Disconnect, reason: str
    ) -> None:
        logger.warning(f"{self._kind} '{self}': WebSocket connection closed for good: {reason}")
        await self._call_event_handler("on_disconnected", websocket)
