"""A tap event is bounded in bytes, whatever the frame it shows (TapRecorder).

Before: a body's map keys, the type, the source and the target went into the event
uncut, so a frame of ~1 MB whose one key was control characters (six bytes of JSON
each) became an event of ~6 MB on the tapping node's broker connection; and a lone
surrogate in a source failed the event's encoder, so the message was counted as lost
("the tap fell behind") and never shown.
"""

import orjson

from bushub.opsnotices import Watched, tap_notice
from bushub.taps import EVENT_MAX_BYTES, TapRecorder, summarise
from buswire import Format


class Side:
    """Stands in for the side publisher: keeps the bytes it is given."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish(self, channel: str, data: bytes) -> bool:
        self.published.append((channel, data))
        return True


def recorder(*tapped: str) -> tuple[TapRecorder, Side, dict[str, int]]:
    watched = Watched()
    for agent in tapped:
        watched.heard(tap_notice(agent))
    side = Side()
    counts = {"published": 0, "dropped": 0}

    def counted(outcome: str, n: int) -> None:
        counts[outcome] += n

    return TapRecorder("n1", watched, side, counted), side, counts  # type: ignore[arg-type]


def test_a_hostile_refused_frame_gives_a_bounded_event_that_still_shows() -> None:
    tap, side, counts = recorder("a", "b")
    huge_key = {"__type__": "m.T", "__data__": {"payload": {"\x01" * 1_000_000: 1}}}
    tap.seen(
        "a",
        "x." + "\x02" * 500_000,  # a type no policy allows: refused, shown with its reason
        "\x01" * 150_000,
        "b",
        huge_key,
        1_000_000,
        Format.MSGPACK,
        "type_not_allowed",
    )
    assert counts == {"published": 2, "dropped": 0}
    for _, data in side.published:
        assert len(data) <= EVENT_MAX_BYTES, len(data)
        event = orjson.loads(data)
        assert event["dropped"] == "type_not_allowed" and event["target"] == "b"
        assert event["source"].endswith("… (+149488 chars)")
        assert event["type"].endswith(f"… (+{500_002 - 512} chars)")
        [key] = event["body"]["__data__"]["payload"]
        assert key == "\x01" * 512 + f"… (+{1_000_000 - 512} chars)"


def test_a_body_too_large_to_show_is_replaced_by_a_note_and_the_event_kept() -> None:
    tap, side, counts = recorder("b")
    # Each string is cut, but 100 of them, each of 512 control characters, are ~300 kB
    # of JSON.
    wide = {"__type__": "m.T", "__data__": {f"k{i}": "\x01" * 600 for i in range(100)}}
    tap.seen("a", "m.T", "a", "b", wide, 70_000, Format.MSGPACK)
    tap.seen("a", "m.T", "a", "b", {"__type__": "m.T", "__data__": {"k": "v"}}, 9, Format.JSON)
    assert counts == {"published": 2, "dropped": 0}
    large, small = (orjson.loads(data) for _, data in side.published)
    assert len(side.published[0][1]) <= EVENT_MAX_BYTES
    assert large["body"].startswith("<too large to show: ") and large["size"] == 70_000
    assert (large["type"], large["source"], large["target"]) == ("m.T", "a", "b")
    assert small["body"] == {"__type__": "m.T", "__data__": {"k": "v"}}


def test_map_keys_that_are_not_strings_are_shown_short() -> None:
    shown = summarise({b"\x00" * 100_000: 1, 7: 2, ("t", "u"): 3})
    assert shown == {"<100000 bytes>": 1, "7": 2, "['t', 'u']": 3}


def test_a_lone_surrogate_in_the_source_or_type_is_shown_not_lost() -> None:
    tap, side, counts = recorder("b")
    tap.seen("a\ud800", "m.\udfffT", "a\ud800", "b", {"k": "v\ud800"}, 40, Format.JSON)
    assert counts == {"published": 1, "dropped": 0}
    event = orjson.loads(side.published[0][1])
    assert (event["source"], event["type"]) == ("a\\ud800", "m.\\udfffT")
    assert event["body"] == {"k": "v\\ud800"} and "lost" not in event
