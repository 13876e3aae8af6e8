"""How redis-py's pub/sub link merges what it was asked since its last write."""

from bushub.broker.redispubsub import _merged
from bushub.broker.subscriber import SUBSCRIBE_BATCH


def test_consecutive_subscribes_go_as_one_command_in_the_order_asked() -> None:
    asked = [
        ("subscribe", ("a",)),
        ("subscribe", ("b", "c")),
        ("unsubscribe", ("a",)),
        ("unsubscribe", ("d",)),
        ("subscribe", ("a",)),
    ]
    assert _merged(asked) == [
        ("subscribe", ("a", "b", "c")),
        ("unsubscribe", ("a", "d")),
        ("subscribe", ("a",)),
    ]


def test_each_ping_stays_where_it_was_asked() -> None:
    asked = [("subscribe", ("a",)), ("ping", ()), ("ping", ()), ("subscribe", ("b",))]
    assert _merged(asked) == asked


def test_a_command_holds_at_most_a_batch_of_channels() -> None:
    asked = [("subscribe", (f"c{i}",)) for i in range(SUBSCRIBE_BATCH + 3)]
    merged = _merged(asked)
    assert [len(channels) for _, channels in merged] == [SUBSCRIBE_BATCH, 3]
    names = [c for _, channels in merged for c in channels]
    assert names == [f"c{i}" for i in range(SUBSCRIBE_BATCH + 3)]
