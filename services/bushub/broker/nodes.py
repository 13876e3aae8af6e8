"""The node registry: which nodes are alive, and what each has claimed.

Presence at rest costs one heartbeat per node, not a refresh per agent: a node's
presence records never expire on their own, and every claim it makes is listed in
the node's index (``"<conn> <agent>"``). A node whose heartbeat lapses is dead to
the others at once (their peers of its agents are lost), and the first node to see
it takes its index over (``take``) and deletes what it lists, owner-checked, so its
records go as they went when they expired.

The registry is the broker's; what an index member means is the caller's.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class BeatStatus(StrEnum):
    """What the registry knew of a node just before its heartbeat."""

    # Registered and within its lifetime: nothing to do.
    LIVE = "live"
    # Registered, but its heartbeat had lapsed (a stall or a partition): others may
    # have taken its peers for lost.
    LAPSED = "lapsed"
    # Not registered: a new node, one cleaned up after, or a Redis that lost its data.
    ABSENT = "absent"
    # Being cleaned up by another node right now: not registered again until done.
    COLLECTING = "collecting"


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat's answer.

    Args:
        status: What the registry knew of the beating node before.
        dead: Nodes whose heartbeat lapsed or that are being cleaned up.
    """

    status: BeatStatus
    dead: frozenset[str]


class NodeRegistry(ABC):
    """Heartbeats and per-node claim indexes, on the broker."""

    @abstractmethod
    async def beat(self, node: str, ttl: float) -> Beat:
        """Say ``node`` is alive for ``ttl`` more seconds (unless it is being
        collected), and learn which nodes are dead."""

    @abstractmethod
    async def enlist(self, node: str, members: Sequence[str]) -> None:
        """Add claims to ``node``'s index."""

    @abstractmethod
    async def delist(self, node: str, member: str) -> None:
        """Remove one claim from ``node``'s index."""

    @abstractmethod
    async def take(self, dead: str, hold: float) -> list[str] | None:
        """Take over a dead node's index to clean up after it, for at most ``hold``
        seconds.

        Returns:
            Its members; None when it is alive again, gone, or another node holds it.
        """

    @abstractmethod
    async def collected(self, dead: str, linger: float) -> None:
        """The cleanup of ``dead`` is done; it is still listed dead for ``linger``
        seconds (unless it beats again), so that every node's beat sees it dead."""

    @abstractmethod
    async def reset(self, node: str) -> list[str]:
        """Empty ``node``'s index at its start, returning what an earlier process of
        the same node id left in it (a node restarted under its name, never seen dead)."""

    @abstractmethod
    async def leave(self, node: str) -> None:
        """``node`` stops cleanly: deregister it and drop its (emptied) index."""
