"""A socket's life as one explicit state: each way through it, transition by transition."""

from bushub.closecodes import CloseCode
from bushub.connection import Enqueued, State
from tests.unit.bushub.parts import KeepingSocket, connection


class StalledSocket(KeepingSocket):
    """A socket whose transport is over its high-water mark: frames wait in the queue."""

    def takes_frames(self) -> bool:
        return False


def test_a_socket_is_claimed_opened_closed_and_forgotten() -> None:
    conn = connection("a")
    assert conn.state is State.CLAIMING
    conn.opened()
    assert conn.state is State.OPEN and not conn.closing.is_set()
    conn.request_close(CloseCode.TAKEN_OVER)
    assert conn.state is State.CLOSING and conn.closing.is_set()
    assert conn.enqueue(b"late", 0.0) is Enqueued.CLOSING
    conn.forgotten()
    assert conn.state is State.CLOSED and conn.closed.is_set()


def test_a_drain_writes_the_queue_first_and_ends_once_it_is_empty() -> None:
    conn = connection("a")
    conn.outlet = StalledSocket()
    conn.opened()
    assert conn.enqueue(b"queued", 0.0) is Enqueued.QUEUED
    conn.request_close(CloseCode.SERVICE_RESTART, flush=True)
    assert conn.state is State.DRAINING and not conn.closing.is_set()
    assert conn.enqueue(b"still taken", 0.0) is Enqueued.QUEUED
    assert conn.pop() is not None and conn.pop() is not None
    conn.drained()
    assert conn.state is State.CLOSING and conn.closing.is_set()


def test_the_first_reason_wins_and_an_ended_socket_stays_ending() -> None:
    conn = connection("a")
    conn.opened()
    conn.socket_ended(1006)
    assert conn.state is State.CLOSING and conn.client_close_code == 1006
    conn.request_close(CloseCode.SERVICE_RESTART, flush=True)
    assert conn.state is State.CLOSING  # nothing left to drain into
    conn.request_close(CloseCode.PEER_LOST)
    assert conn.close_code is CloseCode.SERVICE_RESTART
    conn.drained()
    assert conn.state is State.CLOSING


def test_a_connection_keeps_no_dict_of_its_own() -> None:
    # Slotted: a dict per connection was ~1.6 KB of an idle socket's ~13 KB.
    conn = connection("a", "b")
    assert not hasattr(conn, "__dict__")
    conn.session = None  # every attribute it is given has its slot
    conn.client_gone = None
