"""Taps without sockets: the recording side (TapRecorder), its summaries, and a tap
stream's opening (TapStreams)."""

import asyncio
import json
import time
from typing import Any

from bushub.broker import MemoryBroker
from bushub.opsnotices import Watched, tap_notice
from bushub.subscriptions import Subscriptions
from bushub.tap_cli import describe
from bushub.taps import EVENT_RATE, LOSSES_TOLD_AFTER, TapRecorder, TapStreams, summarise
from buswire import Format


class Side:
    """Stands in for the side publisher: keeps what it is given."""

    def __init__(self, takes: bool = True) -> None:
        self.takes = takes
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, channel: str, data: bytes) -> bool:
        if self.takes:
            self.published.append((channel, json.loads(data)))
        return self.takes


def recorder(side: Side, *tapped: str) -> tuple[TapRecorder, dict[str, int]]:
    watched = Watched()
    for agent in tapped:
        watched.heard(tap_notice(agent))
    counts = {"published": 0, "dropped": 0}

    def counted(outcome: str, n: int) -> None:
        counts[outcome] += n

    return TapRecorder("n1", watched, side, counted), counts  # type: ignore[arg-type]


def test_the_node_bound_drops_before_summarising_and_later_events_say_how_many() -> None:
    side = Side()
    tap, counts = recorder(side, "b")
    summarised = 0

    class Counted(dict[str, Any]):
        def items(self) -> Any:  # summarise walks a map by its items
            nonlocal summarised
            summarised += 1
            return super().items()

    over = 2 * int(EVENT_RATE)
    for _ in range(over):  # in well under a second: past the bucket's burst of a second
        tap.seen("a", "m.T", "a", "b", Counted(x=1), 10, Format.JSON)
    assert counts["published"] == len(side.published) == summarised
    assert counts["dropped"] == over - counts["published"] > 0
    time.sleep(2 / EVENT_RATE)
    tap.seen("a", "m.T", "a", "b", {"x": 1}, 10, Format.JSON)
    # Every drop is told, in the events that got through after it.
    assert sum(event.get("lost", 0) for _, event in side.published) == counts["dropped"]
    assert side.published[-1][0] == "bushub:tap:{b}"


def test_one_event_per_tapped_name_with_its_direction() -> None:
    side = Side()
    tap, _ = recorder(side, "a", "b", "sock")
    tap.seen("sock", "m.T", "a", "b", {"k": "v"}, 5, Format.MSGPACK)
    got = {channel: event["direction"] for channel, event in side.published}
    assert got == {
        "bushub:tap:{a}": "sent",
        "bushub:tap:{sock}": "sent",
        "bushub:tap:{b}": "received",
    }
    assert all(e["format"] == "msgpack" and e["node"] == "n1" for _, e in side.published)
    side.published.clear()
    tap.seen("x", "m.T", "x", "y", {}, 5, Format.JSON)  # nobody tapped
    assert side.published == []


def test_a_refusing_publisher_counts_drops_and_they_are_told_later() -> None:
    side = Side(takes=False)
    tap, counts = recorder(side, "b")
    tap.seen("a", "m.T", "a", "b", {}, 1, Format.JSON)
    tap.seen("a", "m.T", "a", "b", {}, 1, Format.JSON)
    assert counts == {"published": 0, "dropped": 2}
    side.takes = True
    tap.seen("a", "m.T", "a", "b", {}, 1, Format.JSON)
    assert side.published[0][1]["lost"] == 2


def test_summaries_show_bytes_as_sizes_and_cut_what_is_long() -> None:
    tree = {
        "__type__": "m.T",
        "__data__": {
            "raw": b"\x00" * 640,
            "tagged": {"__type__": "bytes", "__data__": "AAECAw=="},
            "bad": {"__type__": "bytes", "__data__": "not base64!"},
            "text": "y" * 600,
            "many": list(range(150)),
        },
    }
    shown = summarise(tree)["__data__"]
    assert shown["raw"] == "<640 bytes>" and shown["tagged"] == "<4 bytes>"
    assert shown["bad"] == "<11 chars of base64>"
    assert shown["text"].startswith("y" * 512) and shown["text"].endswith("(+88 chars)")
    assert len(shown["many"]) == 101 and shown["many"][-1] == "… +50 items"
    deep: Any = "leaf"
    for _ in range(40):
        deep = [deep]
    assert "…" in json.dumps(summarise(deep), ensure_ascii=False)


async def test_a_tap_whose_reader_leaves_while_it_opens_leaves_nothing_behind() -> None:
    subscriptions = Subscriptions(MemoryBroker())
    wanted: list[set[str]] = []
    never = asyncio.Event()
    streams = TapStreams(subscriptions, wanted.append, never.wait, lambda a: None, lambda n: None)
    opening = asyncio.create_task(streams.open("b"))
    await asyncio.sleep(0.01)
    assert streams.open_count == 1 and len(subscriptions) == 1
    opening.cancel()
    await asyncio.gather(opening, return_exceptions=True)
    assert streams.open_count == 0 and len(subscriptions) == 0
    assert wanted[-1] == set()  # its notice is no longer renewed


async def test_the_node_serving_a_tap_watches_at_once_without_its_notice_coming_back() -> None:
    from bushub.metrics import Metrics
    from bushub.operators import Operators
    from bushub.settings import Settings

    broker = MemoryBroker()  # no handlers set: nothing published comes back
    await broker.start()
    operators = Operators(
        Settings(node_id="n1"),
        broker,
        Subscriptions(broker),
        Metrics(),
        {},
        lambda: 0,
        lambda: {"ready": True, "broker_up": True, "draining": False, "broker_refuses": None},
    )
    stream = await operators.streams.open("b")
    assert operators.watched.is_tapped("b")  # a message entering here now is seen
    await operators.streams.close(stream)
    await operators.stop()
    await broker.close()


def test_a_refused_message_is_shown_with_its_reason_and_what_was_read() -> None:
    side = Side()
    tap, _ = recorder(side, "a")
    tap.seen("a", None, None, None, None, 9000, Format.JSON, "oversize")
    tap.seen("a", "m.T", "a", "b", {"k": 1}, 5, Format.JSON, "target_not_allowed")
    tap.seen("a", "m.T", "a", "b", {"k": 2}, 5, Format.JSON)
    events = [event for _, event in side.published]
    assert [e.get("dropped") for e in events] == ["oversize", "target_not_allowed", None]
    assert (events[0]["type"], events[0]["body"], events[0]["direction"]) == (None, None, "sent")
    assert events[1]["body"] == {"k": 1}


def test_bushub_tap_prints_a_refused_message_with_its_reason() -> None:
    base = {"kind": "message", "t": 0.0, "node": "n1", "direction": "sent", "format": "json"}
    unread = {**base, "type": None, "source": None, "target": None, "size": 9000, "body": None}
    assert describe({**unread, "dropped": "oversize"}).endswith(
        "-> ? ? -> ? 9000 B json  DROPPED by the hub: oversize"
    )
    read = {**base, "type": "m.T", "source": "a", "target": "b", "size": 5, "body": {"k": 1}}
    header, body = describe({**read, "dropped": "type_not_allowed"}).split("\n")
    assert header.endswith("T a -> b 5 B json  DROPPED by the hub: type_not_allowed")
    assert body.strip() == '{"k": 1}'
    assert "DROPPED" not in describe(read)


async def test_losses_no_later_event_tells_are_told_on_their_own() -> None:
    # The last losses of a burst waited for the agent's next message, which may never
    # come (and were then told to whatever tap was open by then).
    side = Side(takes=False)
    tap, counts = recorder(side, "b")
    tap.seen("a", "m.T", "a", "b", {}, 1, Format.JSON)
    tap.seen("a", "m.T", "a", "b", {}, 1, Format.JSON)
    side.takes = True
    await asyncio.sleep(LOSSES_TOLD_AFTER + 0.2)
    assert side.published == [
        (
            "bushub:tap:{b}",
            {"kind": "lost", "t": side.published[0][1]["t"], "node": "n1", "lost": 2},
        )
    ]
    assert counts == {"published": 0, "dropped": 2}


def test_an_event_names_the_socket_it_came_through_where_not_its_source() -> None:
    side = Side()
    tap, _ = recorder(side, "victim")
    tap.seen("claimer", "m.T", "victim", "b", {}, 1, Format.JSON)
    tap.seen("victim", "m.T", "victim", "b", {}, 1, Format.JSON)
    assert [event.get("via") for _, event in side.published] == ["claimer", None]
