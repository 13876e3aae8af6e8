"""Which connection may receive an agent's messages on this node: the claim fence.

Redis puts every publish to an agent's channels in one order: the presence and the
message channel share a hash slot (one shard in a cluster), and a node receives both
on one pub/sub connection. So every node subscribed to them sees the same claims
and messages in the same relative order, and "the newest claim seen before this
message" names the same connection on every node. A node delivers a message only to
a local socket holding that newest claim, so no message reaches two sockets, however
the sockets' closes and handshakes interleave across nodes.

Two things make "newest seen" mean newest: a node is subscribed to the presence
channel before it publishes its claim, and it accepts a socket only once that
socket's own claim has come back (`ClaimFence.expect`): every later claim then
arrives after it, and every message its node receives from then on is ordered
against both.

A node whose pub/sub connection breaks may miss claims. From the break on it
delivers nothing (`ClaimFence.suspend`) until, subscribed again, it has read each
name's claim key (written in one step with the claim's publish) and found its own
socket's claim still the newest there (`ClaimFence.confirm`); a claim made after
that read arrives on the new subscription.
"""

import asyncio


class ClaimFence:
    """The newest claim seen per agent name, and sockets waiting for their own."""

    def __init__(self) -> None:
        # Agent -> connection id of the newest claim seen on its presence channel.
        self._newest: dict[str, str] = {}
        # Connection id -> resolved when that connection's own claim comes back.
        self._echoes: dict[str, asyncio.Future[None]] = {}

    def expect(self, conn_id: str) -> "asyncio.Future[None]":
        """A future resolved once ``conn_id``'s claim is seen; ask before publishing it."""
        future = asyncio.get_running_loop().create_future()
        self._echoes[conn_id] = future
        return future

    def unexpect(self, conn_id: str) -> None:
        """Stop waiting for ``conn_id``'s claim (the handshake is over either way)."""
        self._echoes.pop(conn_id, None)

    def seen(self, agent: str, conn_id: str) -> None:
        """A claim of ``agent`` by ``conn_id`` arrived: it is now the newest."""
        self._newest[agent] = conn_id
        echo = self._echoes.pop(conn_id, None)
        if echo is not None and not echo.done():
            echo.set_result(None)

    def suspend(self) -> None:
        """Claims may have been missed: no name is held here until confirmed."""
        self._newest.clear()

    def confirm(self, agent: str, conn_id: str) -> None:
        """The claim key read after a `suspend` still names ``conn_id``: it holds
        ``agent`` again, unless a claim seen since says otherwise."""
        self._newest.setdefault(agent, conn_id)

    def unconfirmed(self, agent: str) -> bool:
        """True if no claim of ``agent`` is known here since a ``suspend``: neither
        seen nor confirmed (one seen for another connection is known)."""
        return agent not in self._newest

    def holds(self, agent: str, conn_id: str) -> bool:
        """True if ``conn_id`` made the newest claim of ``agent`` seen here."""
        return self._newest.get(agent) == conn_id

    def forget(self, agent: str) -> None:
        """No connection here claims ``agent`` any more."""
        self._newest.pop(agent, None)

    def __len__(self) -> int:
        return len(self._newest) + len(self._echoes)
