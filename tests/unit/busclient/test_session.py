"""The client half of a session as pure logic: positions, duplicates, the send log and
its bounds, resume accounting and the acknowledgement schedule. No sockets, no loop."""

from urllib.parse import parse_qsl, urlsplit

import pytest

from busclient.session import (
    ACK_DELAY,
    ACK_EVERY,
    ClientSession,
    Receiver,
    SendLog,
    new_session_id,
    session_url,
)
from buswire.sessionframe import ResumeResult, valid_session_id

# ---- the session id and the handshake URL -------------------------------------------


def test_session_ids_are_valid_and_distinct() -> None:
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(valid_session_id(value) for value in ids)


def test_a_session_keeps_its_id() -> None:
    session = ClientSession()
    assert valid_session_id(session.id)
    first = session.url("ws://h/ws/a")
    session.receiver.take(5, 0.0)
    assert session.id in session.url("ws://h/ws/a") and session.id in first


def test_an_invalid_given_id_is_refused() -> None:
    with pytest.raises(ValueError):
        ClientSession(session_id="not valid!")


def test_the_url_gets_session_and_received_and_keeps_the_rest() -> None:
    url = session_url("wss://hub.example.com/ws/voice?peer=worker&format=msgpack", "abc", 7)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("wss", "hub.example.com", "/ws/voice")
    assert parse_qsl(parts.query) == [
        ("peer", "worker"),
        ("format", "msgpack"),
        ("session", "abc"),
        ("received", "7"),
        ("acks", "inline"),
    ]


def test_the_url_replaces_session_and_received_already_there() -> None:
    url = session_url("ws://h/ws/a?session=old&acks=no&peer=b&received=99&session=x", "new", 3)
    assert parse_qsl(urlsplit(url).query) == [
        ("peer", "b"),
        ("session", "new"),
        ("received", "3"),
        ("acks", "inline"),
    ]


def test_the_url_without_a_query_and_with_escaped_values() -> None:
    assert session_url("ws://h/ws/a", "s", 0) == "ws://h/ws/a?session=s&received=0&acks=inline"
    url = session_url("ws://h/ws/a?token=a%2Fb%20c&empty=", "s", 0)
    assert parse_qsl(urlsplit(url).query, keep_blank_values=True) == [
        ("token", "a/b c"),
        ("empty", ""),
        ("session", "s"),
        ("received", "0"),
        ("acks", "inline"),
    ]


def test_the_session_url_carries_the_received_position() -> None:
    session = ClientSession(session_id="me")
    assert session.url("ws://h/ws/a") == "ws://h/ws/a?session=me&received=0&acks=inline"
    session.receiver.take(1, 0.0)
    session.receiver.take(2, 0.0)
    assert session.url("ws://h/ws/a") == "ws://h/ws/a?session=me&received=2&acks=inline"


# ---- inbound: positions and duplicates ----------------------------------------------


def test_new_positions_are_taken_and_old_ones_are_duplicates() -> None:
    receiver = Receiver()
    assert receiver.take(1, 0.0)
    assert receiver.take(2, 0.0)
    assert not receiver.take(2, 0.0)
    assert not receiver.take(1, 0.0)
    assert receiver.take(5, 0.0)  # a jump is taken: the hub numbers, this side follows
    assert not receiver.take(3, 0.0)
    assert (receiver.received, receiver.duplicates) == (5, 3)


def test_a_replay_overlapping_what_was_taken_is_filtered() -> None:
    receiver = Receiver()
    for position in (1, 2, 3):
        receiver.take(position, 0.0)
    receiver.resumed(ResumeResult.RECOVERED)
    handed_on = [p for p in (2, 3, 4, 5) if receiver.take(p, 0.0)]
    assert handed_on == [4, 5]
    assert receiver.duplicates == 2


# ---- inbound: resume results --------------------------------------------------------


def test_a_first_new_is_not_a_gap() -> None:
    receiver = Receiver()
    assert not receiver.resumed(ResumeResult.NEW)
    assert (receiver.gaps, receiver.recovered, receiver.received) == (0, 0, 0)


def test_new_after_having_received_is_a_gap_and_resets_received() -> None:
    receiver = Receiver()
    receiver.take(4, 0.0)
    assert receiver.resumed(ResumeResult.NEW)
    assert (receiver.gaps, receiver.received) == (1, 0)
    assert receiver.take(1, 0.0)  # the hub's numbering started again


def test_new_after_an_earlier_handshake_is_a_gap_even_with_nothing_received() -> None:
    """The hub forgot the session (away past the window, or Redis lost it): what was
    sent to it meanwhile was not kept, whether or not anything had come before."""
    receiver = Receiver()
    assert not receiver.resumed(ResumeResult.NEW)
    assert receiver.resumed(ResumeResult.NEW)
    assert not receiver.resumed(ResumeResult.RECOVERED)
    assert receiver.resumed(ResumeResult.NEW)
    assert (receiver.gaps, receiver.recovered) == (2, 1)


def test_gap_is_a_gap_even_with_nothing_received() -> None:
    receiver = Receiver()
    assert receiver.resumed(ResumeResult.GAP)
    receiver.take(9, 0.0)
    assert receiver.resumed(ResumeResult.GAP)
    assert (receiver.gaps, receiver.received) == (2, 0)


def test_recovered_keeps_received_and_counts() -> None:
    receiver = Receiver()
    receiver.take(4, 0.0)
    assert not receiver.resumed(ResumeResult.RECOVERED)
    assert (receiver.recovered, receiver.gaps, receiver.received) == (1, 0, 4)


# ---- inbound: the acknowledgement schedule -----------------------------------------


def test_nothing_is_due_before_anything_arrives() -> None:
    receiver = Receiver()
    assert receiver.ack_deadline is None
    assert not receiver.ack_due(100.0)


def test_an_ack_falls_due_ack_delay_after_the_first_unacknowledged_one() -> None:
    receiver = Receiver()
    receiver.take(1, 10.0)
    receiver.take(2, 10.1)  # one timer: the first arrival starts it, later ones do not
    assert receiver.ack_deadline == pytest.approx(10.0 + ACK_DELAY)
    assert not receiver.ack_due(10.0 + ACK_DELAY - 0.01)
    assert receiver.ack_due(10.0 + ACK_DELAY)
    receiver.acknowledged(2)
    assert receiver.ack_deadline is None and not receiver.ack_due(99.0)


def test_an_ack_falls_due_at_once_after_ack_every_positions() -> None:
    receiver = Receiver()
    for position in range(1, ACK_EVERY):
        receiver.take(position, 0.0)
        assert not receiver.ack_due(0.0)
    receiver.take(ACK_EVERY, 0.0)
    assert receiver.ack_due(0.0)
    receiver.acknowledged(ACK_EVERY)
    receiver.take(ACK_EVERY + 1, 1.0)
    assert not receiver.ack_due(1.0)  # counted again from the last acknowledgement
    assert receiver.ack_deadline == pytest.approx(1.0 + ACK_DELAY)


def test_an_ack_for_less_than_received_keeps_the_timer() -> None:
    receiver = Receiver()
    receiver.take(1, 0.0)
    receiver.take(2, 0.0)
    receiver.acknowledged(1)
    assert receiver.ack_deadline is not None


def test_duplicates_do_not_start_the_timer() -> None:
    receiver = Receiver()
    receiver.take(1, 0.0)
    receiver.acknowledged(1)
    receiver.take(1, 5.0)
    assert receiver.ack_deadline is None


def test_the_handshake_carries_the_ack() -> None:
    """No ack is owed after a resume: the query's received told the hub."""
    receiver = Receiver()
    receiver.take(1, 0.0)
    receiver.take(2, 0.0)
    receiver.resumed(ResumeResult.RECOVERED)
    assert receiver.acked == 2
    assert receiver.ack_deadline is None and not receiver.ack_due(100.0)


def test_what_was_taken_rides_once_on_the_next_message() -> None:
    receiver = Receiver()
    assert receiver.ride() == 0, "nothing taken: nothing owed"
    receiver.take(1, 0.0)
    receiver.take(2, 0.0)
    assert receiver.ride() == 2
    assert receiver.ride() == 0, "acknowledged already"
    assert receiver.ack_deadline is None and not receiver.ack_due(100.0)


def test_a_ride_counted_before_a_resume_is_not_overtaken_by_it() -> None:
    """Counted before the write: a gap's resume meanwhile starts numbering again from
    1, and the next message owes what is taken after it, not the old count."""
    receiver = Receiver()
    receiver.take(5, 0.0)
    assert receiver.ride() == 5
    receiver.resumed(ResumeResult.GAP)
    receiver.take(1, 1.0)
    assert receiver.ride() == 1


# ---- outbound: the send log ----------------------------------------------------------


def test_positions_count_from_one_and_never_reset() -> None:
    send_log = SendLog()
    assert [send_log.append(b"m", 0.0)[0] for _ in range(3)] == [1, 2, 3]
    send_log.ack(3)
    send_log.clear()
    assert send_log.append(b"m", 0.0) == (4, 0)


def test_an_ack_trims_everything_up_to_it() -> None:
    send_log = SendLog()
    for i in range(5):
        send_log.append(b"m%d" % i, 0.0)
    assert send_log.ack(3) == 3
    assert [e.position for e in send_log.entries()] == [4, 5]
    assert send_log.bytes == 4
    assert send_log.ack(2) == 0  # an older ack changes nothing
    assert send_log.acked == 3
    assert send_log.ack(5) == 2 and len(send_log) == 0 and send_log.bytes == 0


def test_entries_come_back_in_order_with_their_positions() -> None:
    send_log = SendLog()
    for i in range(4):
        send_log.append(b"m%d" % i, 0.0)
    send_log.ack(1)
    assert [(e.position, e.payload) for e in send_log.entries()] == [
        (2, b"m1"),
        (3, b"m2"),
        (4, b"m3"),
    ]


def test_entries_is_a_copy() -> None:
    send_log = SendLog()
    send_log.append(b"a", 0.0)
    entries = send_log.entries()
    send_log.ack(1)
    assert [e.payload for e in entries] == [b"a"]


def test_the_message_bound_drops_the_oldest_and_counts() -> None:
    send_log = SendLog(max_messages=3)
    dropped = [send_log.append(b"m%d" % i, 0.0)[1] for i in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert [e.position for e in send_log.entries()] == [3, 4, 5]
    assert send_log.overflowed == 2


def test_the_byte_bound_drops_the_oldest_and_counts() -> None:
    send_log = SendLog(max_bytes=10)
    send_log.append(b"aaaa", 0.0)
    send_log.append(b"bbbb", 0.0)
    position, dropped = send_log.append(b"cccc", 0.0)
    assert (position, dropped) == (3, 1)
    assert [e.payload for e in send_log.entries()] == [b"bbbb", b"cccc"]
    assert send_log.bytes == 8 and send_log.overflowed == 1


def test_one_message_larger_than_the_byte_bound_is_kept_alone() -> None:
    send_log = SendLog(max_bytes=4)
    send_log.append(b"ab", 0.0)
    assert send_log.append(b"x" * 10, 0.0) == (2, 1)
    assert [e.position for e in send_log.entries()] == [2]


def test_fits_says_whether_a_send_must_wait() -> None:
    send_log = SendLog(max_messages=2, max_bytes=10)
    assert send_log.fits(100)  # empty: anything fits, alone
    send_log.append(b"12345", 0.0)
    assert send_log.fits(5) and not send_log.fits(6)
    send_log.append(b"1", 0.0)
    assert not send_log.fits(1)  # the message bound
    send_log.ack(1)
    assert send_log.fits(1)


def test_drop_oldest_counts() -> None:
    send_log = SendLog()
    send_log.drop_oldest()  # empty: nothing to count
    send_log.append(b"a", 0.0)
    send_log.append(b"b", 0.0)
    send_log.drop_oldest()
    assert [e.payload for e in send_log.entries()] == [b"b"]
    assert send_log.overflowed == 1


def test_expire_drops_old_messages_from_the_head() -> None:
    send_log = SendLog(max_age=5.0)
    send_log.append(b"old", 0.0)
    send_log.append(b"older-than-now", 2.0)
    send_log.append(b"fresh", 9.0)
    assert send_log.expire(7.5) == 2
    assert [e.payload for e in send_log.entries()] == [b"fresh"]
    assert send_log.expired == 2


def test_only_what_was_written_before_the_cutoff_is_dropped_as_sent() -> None:
    send_log = SendLog()
    for payload in (b"a", b"b", b"c"):
        send_log.append(payload, 0.0)
    first, second, _ = send_log.entries()
    send_log.written(first, 1.0)
    send_log.written(second, 5.0)
    send_log.written(first, 9.0)  # written again: its first write counts
    assert send_log.drop_sent_before(6.0) == 2
    assert [e.payload for e in send_log.entries()] == [b"c"], "held, never written: kept"
    assert send_log.drop_sent_before(1e9) == 0
    assert send_log.expired == 2


def test_without_max_age_nothing_expires() -> None:
    send_log = SendLog()
    send_log.append(b"a", 0.0)
    assert send_log.expire(1e9) == 0 and len(send_log) == 1


def test_pop_oldest_and_clear() -> None:
    send_log = SendLog()
    send_log.append(b"a", 0.0)
    send_log.append(b"bb", 0.0)
    assert send_log.pop_oldest().payload == b"a"
    assert send_log.bytes == 2
    assert send_log.clear() == 1 and send_log.bytes == 0


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SendLog(max_messages=0)
    with pytest.raises(ValueError):
        SendLog(max_bytes=0)
