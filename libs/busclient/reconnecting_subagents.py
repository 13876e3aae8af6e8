"""A ``pipecat-ai-subagents`` client proxy that comes back after a hub node goes away.

`ReconnectingWebSocketProxyClientAgent` is the stock ``WebSocketProxyClientAgent`` with
the same constructor (plus the reconnect options) and the same filtering of what goes
out and what comes in, but:

- after a drain (1012), an overload (1013), a server error (1011), a dropped connection
  (1006, reset, a killed node) or a 1000/1001 close it did not ask for, it dials the
  SAME URL again (the load balancer picks a live node) with jittered exponential
  backoff, and fires ``on_reconnecting`` before each wait and ``on_reconnected`` once
  back;
- messages the local agent sends while no socket is open are held in a bounded buffer
  and sent in order once one is (the stock proxy drops them);
- with a hub that speaks sessions (docs/protocol.md, Sessions; on by default,
  ``session=False`` turns it off) delivery is exactly once and in order in both
  directions across reconnects: what the hub has not acknowledged is sent again, what
  it replays twice is dropped. A hub that could not replay fires ``on_resume_gap``.
  With any other server (an older hub, a stock server proxy) delivery stays at most
  once, as the stock proxy's;
- it fires ``on_disconnected`` only when it gives up: a definite refusal (4001 taken
  over, 4002 peer lost, 1008, HTTP 401/403 on the handshake...) or the policy's limit;
- only one socket and one receive loop exist at any time: activating it again while it
  is connected does not dial a second socket (it cuts a backoff wait short instead).

Example::

    from busclient.reconnecting import ReconnectPolicy
    from busclient.reconnecting_subagents import ReconnectingWebSocketProxyClientAgent

    proxy = ReconnectingWebSocketProxyClientAgent(
        "proxy",
        bus=runner.bus,
        url="wss://hub.example.com/ws/voice?peer=worker",
        remote_agent_name="worker",
        local_agent_name="voice",
        policy=ReconnectPolicy(max_elapsed=120),
    )

    @proxy.event_handler("on_reconnecting")
    async def on_reconnecting(agent, disconnect, attempt, delay):
        logger.info(f"hub link lost ({disconnect.describe()}), retry {attempt} in {delay:.2f}s")

    @proxy.event_handler("on_disconnected")
    async def on_disconnected(agent, websocket):
        logger.error(f"gave up: {agent.reconnect_stats.gave_up}")
"""

import asyncio
from typing import Any

from loguru import logger
from pipecat_subagents.agents.base_agent import BaseAgent
from pipecat_subagents.agents.proxy.websocket import WebSocketProxyClientAgent
from pipecat_subagents.bus import BusAgentRegistryMessage
from pipecat_subagents.bus.messages import BusLocalMessage
from websockets.asyncio.client import ClientConnection

from busclient.linkevents import LinkEvents
from busclient.reconnecting import (
    OutboundBuffer,
    ReconnectingLink,
    ReconnectPolicy,
    ReconnectStats,
)


class ReconnectingWebSocketProxyClientAgent(LinkEvents, WebSocketProxyClientAgent):  # type: ignore[misc]
    """``WebSocketProxyClientAgent`` that reconnects through the same URL and buffers.

    Event handlers available:

    - on_connected(agent, websocket): the first socket since activation opened.
    - on_reconnecting(agent, disconnect, attempt, delay): the socket (or a handshake)
      ended in a recoverable way; attempt ``attempt`` follows in ``delay`` seconds.
      ``disconnect`` is a `busclient.reconnecting.Disconnect`.
    - on_reconnected(agent, websocket, attempts): a new socket opened after an outage;
      buffered messages are being flushed into it.
    - on_disconnected(agent, websocket): the proxy gave up (``websocket`` is the socket
      that ended, or None when a handshake was refused); ``reconnect_stats.gave_up``
      says why. Activating the proxy again starts over.
    - on_resume_gap(agent, result, epoch): a session handshake lost messages: ``result``
      is ``gap`` (the hub could not replay, or this side gave up messages it sent:
      its send log over buffer_messages/buffer_bytes while away, told to the hub) or
      ``new`` (it forgot the session after this side had taken messages, or this
      side gave up sends before its first handshake); ``epoch`` is the hub's new one.
      The peers are announced again, so applications re-activate.
      (``recovered`` only when the hub named a window shorter than the last one and
      sends older than it were given up after the handshake: the next one tells it.)

    Args:
        policy: Retry, backoff and give-up rules (`ReconnectPolicy` defaults otherwise).
        buffer_messages: Messages held at most while disconnected (oldest dropped first).
        buffer_bytes: Bytes held at most while disconnected.
        buffer_max_age: Seconds a held message stays worth sending; None keeps it.
        open_timeout: Seconds one handshake may take; with sessions, also how long a
            send waits for acknowledgements when the send log is full before dropping
            the oldest (the log is bounded by buffer_messages and buffer_bytes).
        session: Speak sessions with a hub that answers them (exactly-once delivery).
        Every other argument is the stock proxy's.
    """

    def __init__(
        self,
        name: str,
        *,
        bus: Any,
        url: str,
        remote_agent_name: str,
        local_agent_name: str,
        forward_messages: tuple[type, ...] = (),
        headers: dict[str, str] | None = None,
        serializer: Any = None,
        policy: ReconnectPolicy | None = None,
        buffer_messages: int = 1000,
        buffer_bytes: int = 8 << 20,
        buffer_max_age: float | None = None,
        open_timeout: float = 10.0,
        session: bool = True,
    ) -> None:
        super().__init__(
            name,
            bus=bus,
            url=url,
            remote_agent_name=remote_agent_name,
            local_agent_name=local_agent_name,
            forward_messages=forward_messages,
            headers=headers,
            serializer=serializer,
        )
        self._receive_task: asyncio.Task[None] | None = None
        self._link = ReconnectingLink(
            url,
            self,
            headers=self._headers,
            policy=policy,
            buffer=OutboundBuffer(buffer_messages, buffer_bytes, buffer_max_age),
            open_timeout=open_timeout,
            session=session,
        )
        self._register_event_handler("on_reconnecting")
        self._register_event_handler("on_reconnected")
        self._register_event_handler("on_resume_gap")

    @property
    def reconnect_stats(self) -> ReconnectStats:
        """Connects, reconnects, held/overflowed messages, session counters, why it gave up."""
        return self._link.stats

    @property
    def websocket(self) -> ClientConnection | None:
        """The socket open now, if any (the stock ``_ws`` stays None)."""
        return self._link.websocket

    @property
    def connected(self) -> bool:
        """A socket is open and the buffer has been flushed into it."""
        return self._link.connected

    # ---- life cycle: one supervisor task instead of the stock connect ----------

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        """Start the link (the stock proxy connects here and raises on failure)."""
        await BaseAgent.on_activated(self, args)
        task = self._receive_task
        if task is not None and not task.done():
            logger.debug(f"Agent '{self}': already connected or connecting")
            self._link.retry_now()
            return
        logger.debug(f"Agent '{self}': connecting to {self._url}")
        self._link.start()  # hold what is sent from now on, until the socket opens
        # The stock cleanup() cancels _receive_task: here that is the supervisor.
        self._receive_task = self.create_asyncio_task(self._link.run(), f"{self.name}::ws_link")

    async def _stop(self) -> None:
        await self._close_link()
        await BaseAgent._stop(self)

    async def cleanup(self) -> None:
        """Close the socket, stop reconnecting and release resources."""
        await BaseAgent.cleanup(self)
        await self._close_link()

    async def _close_link(self) -> None:
        await self._link.close()
        task, self._receive_task = self._receive_task, None
        if task is not None and not task.done():
            await self.cancel_asyncio_task(task)

    # ---- outbound ---------------------------------------------------------------

    async def on_bus_message(self, message: Any) -> None:
        """Forward what the stock proxy forwards; held while disconnected."""
        await BaseAgent.on_bus_message(self, message)
        if self._receive_task is None or isinstance(message, BusLocalMessage):
            return
        if message.target == self._remote_agent_name or (
            isinstance(message, self._forward_messages) and message.source == self._local_agent_name
        ):
            await self._send_ws(message)

    async def _send_ws(self, message: Any) -> None:
        await self._link.send(self._serializer.serialize(message))

    # ---- link hooks ----------------------------------------------------------------

    async def link_frame(self, data: bytes | str) -> None:
        """The stock receive loop's filter, one frame at a time."""
        message = self._serializer.deserialize(data)
        if not message:
            return
        # Registry messages (target=None) for agent discovery.
        if isinstance(message, BusAgentRegistryMessage):
            if any(entry.name == self._remote_agent_name for entry in message.agents):
                self._link.saw_peer()
            await self.send_message(message)
            return
        # Additional message types (e.g. BusFrameMessage).
        if self._forward_messages and isinstance(message, self._forward_messages):
            await self.send_message(message)
            return
        if message.target != self._local_agent_name:
            logger.warning(
                f"Agent '{self}': dropped inbound message with unexpected target '{message.target}'"
            )
            return
        await self.send_message(message)


__all__ = ["ReconnectingWebSocketProxyClientAgent"]
