"""Broker subscriptions shared by everything on a node that listens to a channel.

An agent's presence channel is wanted by each socket claiming the name and by each
local socket watching it as a peer; its message channel by the socket holding it.
The node subscribes on the first want and unsubscribes after the last.
"""

from collections import defaultdict

from bushub.broker import Broker


class Subscriptions:
    """Reference-counted subscriptions on one broker."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._wants: dict[str, int] = defaultdict(int)

    async def acquire(self, channel: str) -> None:
        """Want ``channel``; subscribe if nothing here wanted it yet."""
        self._wants[channel] += 1
        if self._wants[channel] == 1:
            await self._broker.subscribe(channel)

    async def release(self, channel: str) -> None:
        """Stop wanting ``channel``; unsubscribe once nothing here does."""
        self._wants[channel] -= 1
        if self._wants[channel] <= 0:
            del self._wants[channel]
            await self._broker.unsubscribe(channel)

    def __len__(self) -> int:
        return len(self._wants)
