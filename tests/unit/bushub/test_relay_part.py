"""The relay on its own, driven with bytes: no socket, no broker, no event loop."""

import json

import msgpack

from bushub.claims import ClaimFence
from bushub.connection import Connection
from bushub.metrics import Metrics
from bushub.outbound import Outbound
from bushub.relay import Relay
from bushub.settings import Settings
from buswire import Format, message_channel
from buswire.relayframe import as_resent, pack_relay, pack_stored, unpack_relay
from tests.support.messages import task_request
from tests.unit.bushub.helpers import as_json
from tests.unit.bushub.parts import connection, written

NOW = 1_700_000_000.25


class Wired:
    """A relay whose publishes are kept and whose clock stands still."""

    def __init__(self, **settings: object) -> None:
        self.metrics = Metrics()
        self.published: list[tuple[str, bytes]] = []
        self.holders: dict[str, Connection] = {}
        self.claims = ClaimFence()
        self.relay = Relay(
            Settings(node_id="unit", **settings),  # type: ignore[arg-type]
            self.metrics,
            self.holders,
            self.claims,
            lambda channel, data: self.published.append((channel, data)),
            Outbound(self.metrics, clock=lambda: NOW),
            clock=lambda: NOW,
        )

    def hold(self, conn: Connection) -> None:
        """Make ``conn`` the holder of its name, with the newest claim of it."""
        self.holders[conn.agent] = conn
        self.claims.seen(conn.agent, conn.id)

    def dropped(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "bushub_messages_dropped_total", {"reason": reason}
        )
        return value or 0.0


def test_a_frame_is_published_on_its_targets_channel_untouched_with_format_and_time() -> None:
    wired = Wired()
    data = as_json(task_request("a", "b", seq=7))
    wired.relay.route(connection("a", "b"), data)
    [(channel, frame)] = wired.published
    assert channel == message_channel("b")
    assert frame == pack_relay(Format.JSON, NOW, data)


def test_an_untargeted_frame_goes_to_the_peer_and_without_one_is_dropped() -> None:
    wired = Wired()
    data = as_json(task_request("a", None))
    wired.relay.route(connection("a", "b"), data)
    wired.relay.route(connection("a"), data)
    assert [channel for channel, _ in wired.published] == [message_channel("b")]
    assert wired.dropped("no_route") == 1


def test_an_oversize_frame_is_dropped_and_counted_as_received() -> None:
    wired = Wired(max_message_bytes=100)
    wired.relay.route(connection("a", "b"), as_json(task_request("a", "b", pad=200)))
    assert wired.published == []
    assert wired.dropped("oversize") == 1
    received = wired.metrics.registry.get_sample_value(
        "bushub_messages_received_total", {"format": "json"}
    )
    assert received == 1


def test_a_relay_frame_reaches_the_local_holder_in_its_own_format() -> None:
    wired = Wired()
    holder = connection("b", "a", fmt=Format.MSGPACK)
    wired.hold(holder)
    tree = task_request("a", "b", seq=3)
    wired.relay.deliver("b", pack_relay(Format.JSON, NOW - 0.5, as_json(tree)))
    [frame] = written(holder)
    assert msgpack.unpackb(frame) == tree
    latency = wired.metrics.registry.get_sample_value("bushub_relay_latency_seconds_sum")
    assert latency == 0.5


def test_same_format_delivery_forwards_the_senders_bytes() -> None:
    wired = Wired()
    holder = connection("b", "a")
    wired.hold(holder)
    data = as_json(task_request("a", "b"))
    wired.relay.deliver("b", pack_relay(Format.JSON, NOW, data))
    assert written(holder) == [data]
    assert json.loads(written(holder)[0])["__data__"]["target"] == "b"


def test_a_frame_for_no_local_holder_or_a_broken_relay_frame_is_counted() -> None:
    wired = Wired()
    wired.relay.deliver("nobody", pack_relay(Format.JSON, NOW, b"{}"))
    wired.hold(connection("b"))
    wired.relay.deliver("b", b"\x00")
    assert wired.dropped("no_local_agent") == 1
    assert wired.dropped("bad_relay_frame") == 1


def test_a_kept_frame_for_no_local_holder_is_kept_away_not_dropped() -> None:
    """Its session's socket left the node while the subscription lingered: the stream
    keeps it and the resume delivers it (counted then), so it is no drop: a session
    reconnecting often showed drops of messages it received once each."""
    wired = Wired()
    kept = pack_stored(7, pack_relay(Format.JSON, NOW, as_json(task_request("a", "b"))))
    wired.relay.deliver("b", kept)
    assert wired.dropped("no_local_agent") == 0
    away = wired.metrics.registry.get_sample_value(
        "bushub_session_messages_total", {"event": "kept_away"}
    )
    assert away == 1


def test_a_holder_whose_claim_is_not_the_newest_gets_nothing() -> None:
    wired = Wired()
    holder = connection("b", "a")
    wired.hold(holder)
    wired.claims.seen("b", "elsewhere.newer")
    wired.relay.deliver("b", pack_relay(Format.JSON, NOW, as_json(task_request("a", "b"))))
    assert written(holder) == []
    assert wired.dropped("unconfirmed") == 1


def frames_for_b(count: int, start: int = 0) -> list[bytes]:
    return [
        pack_relay(Format.JSON, NOW, as_json(task_request("a", "b", seq)))
        for seq in range(start, start + count)
    ]


def test_what_comes_while_a_claim_is_unconfirmed_is_held_and_delivered_once_it_is() -> None:
    """Other nodes send what they held through a broker break the moment it ends,
    before this node has confirmed its claims: a Redis frozen for 5 s cost plain
    sockets every message of the freeze (dropped ``unconfirmed``)."""
    wired = Wired()
    holder = connection("b", "a")
    wired.hold(holder)
    wired.claims.suspend()  # a broker break
    early = frames_for_b(3)
    for frame in early:
        wired.relay.deliver("b", frame)
    assert written(holder) == [] and wired.dropped("unconfirmed") == 0
    # Confirmed, but what came since waits behind what was held: in order.
    wired.claims.confirm("b", holder.id)
    [late] = frames_for_b(1, start=3)
    wired.relay.deliver("b", late)
    assert written(holder) == []
    wired.relay.claims_confirmed()
    assert written(holder) == [unpack_relay(f).payload for f in [*early, late]]
    [later] = frames_for_b(1, start=4)
    wired.relay.deliver("b", later)  # nothing held any more: straight through
    assert written(holder)[-1] == unpack_relay(later).payload
    assert wired.dropped("unconfirmed") == 0


def test_what_was_held_for_a_socket_that_lost_its_name_or_ended_is_dropped() -> None:
    wired = Wired()
    lost, ended, waits = connection("b", "a"), connection("c", "a"), connection("d", "a")
    for conn in (lost, ended, waits):
        wired.hold(conn)
    wired.claims.suspend()
    for agent in ("b", "c", "d"):
        for frame in frames_for_b(2):
            wired.relay.deliver(agent, frame)
    wired.claims.seen("b", "elsewhere.newer")  # a newer claim, heard once resubscribed
    wired.relay.let_go(ended)
    assert wired.dropped("unconfirmed") == 2
    wired.relay.claims_confirmed()  # ``d`` is not confirmed yet: it waits on
    assert wired.dropped("unconfirmed") == 4
    assert written(lost) == written(ended) == written(waits) == []
    wired.claims.confirm("d", waits.id)
    wired.relay.claims_confirmed()
    assert len(written(waits)) == 2 and wired.dropped("unconfirmed") == 4


def test_what_is_held_for_an_unconfirmed_claim_is_bounded_in_bytes() -> None:
    frames = frames_for_b(10)
    wired = Wired(queue_bytes=3 * len(frames[0]))
    holder = connection("b", "a")
    wired.hold(holder)
    wired.claims.suspend()
    for frame in frames:
        wired.relay.deliver("b", frame)
    assert wired.dropped("unconfirmed") == 7
    wired.claims.confirm("b", holder.id)
    wired.relay.claims_confirmed()
    assert written(holder) == [unpack_relay(f).payload for f in frames[7:]], "the newest"


def test_a_publish_nobody_received_is_undeliverable_only_on_message_channels() -> None:
    wired = Wired()
    wired.relay.published(message_channel("b"), 0)
    wired.relay.published(message_channel("b"), 1)
    wired.relay.published("bushub:presence:{b}", 0)
    assert wired.dropped("undeliverable") == 1
    assert unpack_relay(pack_relay(Format.JSON, NOW, b"x")).received_at == NOW


def resent_count(wired: Wired, outcome: str) -> float:
    value = wired.metrics.registry.get_sample_value("bushub_resent_total", {"outcome": outcome})
    return value or 0.0


def test_a_frame_sent_again_after_a_break_is_delivered_once() -> None:
    wired = Wired()
    holder = connection("b", "a")
    wired.hold(holder)
    first, lost = (
        pack_relay(Format.JSON, NOW + i, as_json(task_request("a", "b", i))) for i in (1, 2)
    )
    wired.relay.deliver("b", first)
    # The publishing node sends both again: the first came through, the second did not.
    wired.relay.deliver("b", as_resent(first))
    wired.relay.deliver("b", as_resent(lost))
    wired.relay.deliver("b", as_resent(lost))  # a second break: still once
    assert written(holder) == [unpack_relay(first).payload, unpack_relay(lost).payload]
    assert resent_count(wired, "duplicate") == 2
    assert resent_count(wired, "delivered") == 1


def test_an_original_coming_after_its_copy_is_not_delivered_twice() -> None:
    """A Redis Cluster primary that hung (SIGSTOP) runs a publish left unread when it
    wakes, and passes it to the new primary's subscribers, after the copy its node
    sent again was delivered: the stock receiver got it twice, seconds late."""
    wired = Wired()
    holder = connection("b", "a")
    wired.hold(holder)
    late, later = (
        pack_relay(Format.JSON, NOW + i, as_json(task_request("a", "b", i))) for i in (1, 2)
    )
    wired.relay.deliver("b", as_resent(late))  # the copy, sent again after the break
    wired.relay.deliver("b", late)  # the original, late
    wired.relay.deliver("b", later)
    assert written(holder) == [unpack_relay(late).payload, unpack_relay(later).payload]
    assert resent_count(wired, "duplicate") == 1
