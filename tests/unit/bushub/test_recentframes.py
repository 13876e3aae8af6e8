"""The frames a node delivered lately: found again by their bytes, within bounds."""

from bushub.recentframes import RecentFrames


def frame(i: int, size: int = 10) -> bytes:
    return str(i).encode().ljust(size, b".")


def test_a_recorded_frame_is_seen_and_another_is_not() -> None:
    recent = RecentFrames()
    for i in range(5):
        recent.add(frame(i))
    assert recent.seen(frame(3))
    assert recent.seen(bytes(bytearray(frame(4))))  # by value, not identity
    assert not recent.seen(frame(5))


def test_frames_recorded_after_the_first_lookup_are_seen_too() -> None:
    recent = RecentFrames()
    recent.add(frame(1))
    assert not recent.seen(frame(2))
    recent.add(frame(2))
    assert recent.seen(frame(2)) and recent.seen(frame(1))


def test_the_oldest_go_past_the_count_bound() -> None:
    recent = RecentFrames(max_frames=3)
    for i in range(5):
        recent.add(frame(i))
    assert len(recent) == 3
    assert [recent.seen(frame(i)) for i in range(5)] == [False, False, True, True, True]
    recent.add(frame(5))  # evicted from the lookup set as well
    assert [recent.seen(frame(i)) for i in range(6)] == [False] * 3 + [True] * 3


def test_the_oldest_go_past_the_byte_bound() -> None:
    recent = RecentFrames(max_bytes=250)
    for i in range(5):
        recent.add(frame(i, size=100))
    assert len(recent) == 2
    assert [recent.seen(frame(i, size=100)) for i in range(5)] == [False] * 3 + [True] * 2


def test_frames_are_looked_up_by_their_key_while_recorded_as_they_came() -> None:
    recent = RecentFrames(key=lambda data: data[1:], max_frames=2)
    recent.add(b"x" + frame(1))
    assert recent.seen(frame(1)) and not recent.seen(b"x" + frame(1))
    recent.add(b"y" + frame(2))  # recorded after the lookup set was built
    recent.add(b"z" + frame(3))  # the oldest leaves the set by its key
    assert [recent.seen(frame(i)) for i in (1, 2, 3)] == [False, True, True]
