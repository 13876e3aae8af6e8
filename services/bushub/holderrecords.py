"""What a node stores in the broker for each socket holding a name: its presence
record and its claim value, and the rewrite of records whose content changed."""

import asyncio
import logging
from collections.abc import Callable

from bushub.broker import Broker
from bushub.brokerhealth import BrokerHealth
from bushub.connection import Connection
from buswire import presence_key
from buswire.presence import PresenceRecord, encode_record

log = logging.getLogger(__name__)


def presence_record(conn: Connection, node_id: str) -> bytes:
    """The record under ``conn``'s presence key (connection id first: the owner)."""
    record = PresenceRecord(
        agent=conn.agent,
        conn=conn.id,
        node=node_id,
        since=conn.since,
        format=conn.format.value,
        dialect=conn.dialect.value if conn.dialect else "auto",
        peer=conn.peer,
        runner=conn.runner if conn.session is not None else None,
    )
    return encode_record(record)


def claim_value(conn: Connection, node_id: str) -> bytes:
    """The value under ``conn``'s claim key: connection id first, as in a record."""
    return f"{conn.id} {node_id}".encode()


class Rewriter:
    """Writes changed records again, the changes of one loop iteration together.

    Args:
        broker: Where the records are.
        health: Told of writes Redis refuses.
        node_id: This node.
        holds: Whether a connection still holds its name (only those are written).
    """

    def __init__(
        self,
        broker: Broker,
        health: BrokerHealth,
        node_id: str,
        holds: Callable[[Connection], bool],
    ) -> None:
        self._broker = broker
        self._health = health
        self._node_id = node_id
        self._holds = holds
        self._changed: set[Connection] = set()
        self._task: asyncio.Task[None] | None = None

    def changed(self, conn: Connection) -> None:
        """What ``conn``'s record says changed (its dialect became known)."""
        self._changed.add(conn)
        if self._task is None:
            self._task = asyncio.create_task(self._write(), name="rewrite-records")

    async def _write(self) -> None:
        try:
            await asyncio.sleep(0)  # gather what else changes in this loop iteration
            changed, self._changed = self._changed, set()
            items = [
                (presence_key(c.agent), c.id, presence_record(c, self._node_id))
                for c in changed
                if self._holds(c)
            ]
            with self._health.watching("presence_write"):
                # Never re-created: a socket that ended meanwhile deleted its own.
                await self._broker.refresh_records(items, None, create=False)
        except (ConnectionError, OSError) as exc:
            log.warning("could not update presence records: %s", exc)
        finally:
            self._task = None
