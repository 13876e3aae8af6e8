"""Hub parts wired in memory: a socket that takes every frame, and a connection on it.

The per-message benchmarks (``bench/hub_path.py``, ``bench/frame_cost.py``) and the
unit tests of the relay and presence drive the hub's real code with these in place of
a network: whatever they measure or check is the code production runs.
"""

from bushub.auth import OPEN_GRANT
from bushub.connection import Connection, ConnectionParams
from bushub.limits import TokenBucket
from buswire import Format


class TakingSocket:
    """A socket whose transport takes every frame at once, and keeps none."""

    def send_frame(self, payload: bytes) -> bool:
        return True

    def takes_frames(self) -> bool:
        return True

    def keepalive_check(self) -> bool:
        return True


def memory_connection(
    agent: str,
    peer: str | None = None,
    fmt: Format = Format.JSON,
    *,
    conn_id: str | None = None,
    close_on_peer_lost: bool = True,
    queue_bytes: int = 1 << 30,
) -> Connection:
    """An accepted socket's connection, with auth and rate limits off."""
    params = ConnectionParams(
        agent=agent,
        peer=peer,
        format=fmt,
        format_declared=True,
        dialect=None,
        close_on_peer_lost=close_on_peer_lost,
    )
    return Connection(
        conn_id or f"memory.{agent}",
        params,
        queue_bytes=queue_bytes,
        grant=OPEN_GRANT,
        message_rate=TokenBucket(0),
        byte_rate=TokenBucket(0, queue_bytes),
    )
