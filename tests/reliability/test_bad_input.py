"""Hostile and broken input on a live node's endpoint.

One node (``--max-message-bytes 4096``, so uvicorn's transport limit is 64 KiB, and
``--rate-messages 500``) takes every case below on a fresh socket paired with a fresh
sink. Each case has its documented outcome: the frame is dropped and counted with a
reason, delivered, or the socket is closed with a code. After every case the sender's
socket still carries a valid message (unless the outcome is a close), a fresh pair on
the node still talks, and /healthz says 200. At the end of the module the node holds no
connections and its memory and file descriptors are back near where they started.

A bounded hypothesis-driven client then sends 300 random frames to the live endpoint
and checks the accounting identity

    bushub_messages_received_total = sum(bushub_messages_dropped_total) + delivered

(deltas over the run; ``delivered`` is bushub_messages_delivered_total, every frame
relayed to a client), and that the node stays healthy throughout.
"""

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect

from tests.reliability.harness import (
    OP_BINARY,
    OP_CONT,
    OP_TEXT,
    FaultNode,
    FaultRedis,
    Inbox,
    RawSocket,
    Samples,
    delta,
    fd_breakdown,
    in_thread,
    open_ws,
)
from tests.support.messages import SUBAGENTS, TASK_REQUEST, encode, task_request
from tests.support.reports import register_log
from tests.support.waiting import until, wait_until

pytestmark = pytest.mark.integration

MAX_MESSAGE = 4096
TRANSPORT_LIMIT = 65_536  # max(2 x --max-message-bytes, 64 KiB): what uvicorn enforces
RATE = 500
REGISTRY = SUBAGENTS + "BusAgentRegistryMessage"
MSGPACK = {"format": "msgpack"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultNode]:
    tmp = tmp_path_factory.mktemp("bad-input")
    redis = FaultRedis(tmp / "redis.log")
    redis.start()
    hub = FaultNode(
        "bad", tmp / "hub-bad.log", redis.url, max_message_bytes=MAX_MESSAGE, rate_messages=RATE
    )
    try:
        hub.start()
        hub.redis_port = redis.port  # type: ignore[attr-defined]
        hub.baseline = (hub.rss_kb(), fd_breakdown(hub, redis.port))  # type: ignore[attr-defined]
        yield hub
    finally:
        hub.stop()
        redis.stop()


@pytest.fixture(autouse=True)
def _hub_log_in_report(node: FaultNode, request: pytest.FixtureRequest) -> None:
    register_log(request, "hub bad log", node.log_path)


def msg(data: dict[str, Any], type_name: str = TASK_REQUEST) -> dict[str, Any]:
    return {"__type__": type_name, "__data__": data}


def valid(source: str, target: str, seq: int = 0) -> dict[str, Any]:
    return task_request(source, target, seq)


@dataclass
class Case:
    """One kind of bad input and what the node must do with it.

    ``frames`` are built from the sender and sink names; a bytes frame goes as a
    binary frame, a str as a text frame. ``raw`` frames go through `RawSocket`.
    """

    name: str
    frames: Any
    drops: dict[str, float] = field(default_factory=dict)
    received: int | None = None  # frames counted received (default: one per frame)
    delivered: int = 0  # frames the sink gets
    close: int | None = None  # the code the socket is closed with, if any
    raw: bool = False
    query: dict[str, str] = field(default_factory=dict)
    sink_query: dict[str, str] = field(default_factory=dict)
    peer: bool = True


def _nested(depth: int, type_name: str = "x.Y") -> bytes:
    head = b'{"__type__":"%s","__data__":{"source":"s","v":' % type_name.encode()
    return head + b"[" * depth + b"]" * depth + b"}}"


CASES = [
    Case("truncated JSON", lambda s, t: [encode(valid(s, t))[:40]], {"malformed": 1}),
    Case("malformed JSON", lambda s, t: [b"{not json at all}"], {"malformed": 1}),
    Case(
        "truncated MsgPack",
        lambda s, t: [encode(valid(s, t), "msgpack")[:-7]],
        {"malformed": 1},
        query=MSGPACK,
    ),
    Case(
        "MsgPack map with int keys",
        lambda s, t: [msgpack.packb({1: 2})],
        {"malformed": 1},
        query=MSGPACK,
    ),
    Case("JSON array at top level", lambda s, t: [b"[1, 2, 3]"], {"malformed": 1}),
    Case("JSON string at top level", lambda s, t: ['"just a string"'], {"malformed": 1}),
    Case("empty frame", lambda s, t: [b""], {"malformed": 1}),
    Case("binary garbage", lambda s, t: [bytes(range(0xC1, 0x100)) * 3], {"malformed": 1}),
    # Valid, but nested past what the parsers take: too complex, not malformed.
    Case("JSON nested 1500 deep", lambda s, t: [_nested(1500)], {"too_complex": 1}),
    Case("JSON nested 300 deep", lambda s, t: [_nested(300, TASK_REQUEST)], {"too_complex": 1}),
    Case(
        "MsgPack nested 2000 deep",
        lambda s, t: [b"\x81\xa1a" + b"\x91" * 2000 + b"\xc0"],
        {"too_complex": 1},
        query=MSGPACK,
    ),
    Case(
        "MsgPack frame on a JSON socket",
        lambda s, t: [encode(valid(s, t)), encode(valid(s, t, 1), "msgpack")],
        {"malformed": 1},
        delivered=1,
    ),
    Case("no __type__/__data__", lambda s, t: [encode({"hello": "world"})], {"not_a_message": 1}),
    Case(
        "__data__ is a string",
        lambda s, t: [encode({"__type__": TASK_REQUEST, "__data__": "x"})],
        {"not_a_message": 1},
    ),
    Case("missing source", lambda s, t: [encode(msg({"target": t}))], {"bad_source": 1}),
    Case(
        "source is a number",
        lambda s, t: [encode(msg({"source": 7, "target": t}))],
        {"bad_source": 1},
    ),
    Case(
        "target is a list",
        lambda s, t: [encode(msg({"source": s, "target": [t]}))],
        {"bad_target": 1},
    ),
    Case(
        "target is not an agent name",
        lambda s, t: [encode(msg({"source": s, "target": "a {b}"}))],
        {"bad_agent": 1},
    ),
    Case(
        "unqualified __type__",
        lambda s, t: [encode(msg({"source": s, "target": t}, "Foo"))],
        {"bad_type": 1},
    ),
    Case(
        "unknown __type__",
        lambda s, t: [encode(msg({"source": s, "target": t}, "evil.Exec"))],
        {"type_not_allowed": 1},
    ),
    Case(
        "unknown nested __type__",
        lambda s, t: [
            encode(msg({"source": s, "target": t, "x": {"__type__": "os.system", "__data__": {}}}))
        ],
        {"nested_type_not_allowed": 1},
    ),
    Case(
        "registry message from a client",
        lambda s, t: [encode(msg({"source": s, "agents": []}, REGISTRY))],
        {"registry": 1},
    ),
    Case(
        "untargeted with no peer",
        lambda s, t: [encode(msg({"source": s}))],
        {"no_route": 1},
        peer=False,
    ),
    Case(
        "target nobody holds",
        lambda s, t: [encode(valid(s, "nobody-anywhere"))],
        {"undeliverable": 1},
    ),
    Case(
        "over --max-message-bytes",
        lambda s, t: [encode(task_request(s, t, 0, pad=6000))],
        {"oversize": 1},
    ),
    Case("text frame, valid JSON", lambda s, t: [encode(valid(s, t)).decode()], delivered=1),
    Case("text frame, not JSON", lambda s, t: ["hello there"], {"malformed": 1}),
    Case(
        "NaN and a 100-digit integer",
        lambda s, t: [
            json.dumps(
                task_request(s, t, 0)
                | {
                    "__data__": {
                        "source": s,
                        "target": t,
                        "payload": {"seq": 0, "nan": float("nan"), "big": 10**100},
                    }
                }
            ).encode()
        ],
        delivered=1,
    ),
    Case(
        "bad base64 to a MsgPack peer",
        lambda s, t: [
            encode(msg({"source": s, "target": t, "b": {"__type__": "bytes", "__data__": "!!!"}}))
        ],
        {"malformed": 1},
        sink_query={"format": "msgpack"},
    ),
    Case(
        "declared json, first frame MsgPack",
        lambda s, t: [encode(valid(s, t), "msgpack")],
        {"format_mismatch": 1},
        close=1007,
        query={"format": "json"},
    ),
    Case(
        "flood past --rate-messages",
        lambda s, t: [encode(valid(s, t, i)) for i in range(2000)],
        {"rate_limited": (1000, 1500)},
        delivered=-1,
    ),
    # Below the hub: the transport (uvicorn + websockets) refuses these frames itself.
    Case("over the transport limit", lambda s, t: [b"{" + b" " * 70_000], close=1009, received=0),
    Case(
        "invalid UTF-8 in a text frame",
        lambda s, t: [(OP_TEXT, b'{"a":"\xff\xfe"}')],
        close=1007,
        received=0,
        raw=True,
    ),
    Case("reserved opcode", lambda s, t: [(0x3, b"{}")], close=1002, received=0, raw=True),
    Case(
        "continuation without a start",
        lambda s, t: [(OP_CONT, b"{}")],
        close=1002,
        received=0,
        raw=True,
    ),
    Case(
        "fragmented valid message",
        lambda s, t: [
            (OP_BINARY, encode(valid(s, t))[:10], False),
            (OP_CONT, encode(valid(s, t))[10:30], False),
            (OP_CONT, encode(valid(s, t))[30:], True),
        ],
        received=1,
        delivered=1,
        raw=True,
    ),
]


async def _check_pair_works(node: FaultNode, tag: str) -> None:
    a = await Inbox.open(node, f"ok-{tag}-a", f"ok-{tag}-b")
    b = await Inbox.open(node, f"ok-{tag}-b", f"ok-{tag}-a")
    await b.announced_peer(f"ok-{tag}-a")
    await a.ws.send(encode(valid(f"ok-{tag}-a", f"ok-{tag}-b", 7)))
    assert await b.wait(lambda: b.seqs == [7], 5), "a fresh pair no longer talks"
    await a.close()
    await b.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_bad_input_has_its_documented_outcome(node: FaultNode, case: Case) -> None:
    tag = str(CASES.index(case))
    sender, sink_name = f"bad-{tag}", f"sink-{tag}"
    sink = await Inbox.open(node, sink_name, sender, on_peer_lost="keep", **case.sink_query)
    query = {"peer": sink_name, **case.query} if case.peer else dict(case.query)
    frames = case.frames(sender, sink_name)
    before: Samples = await in_thread(node.metrics)
    if case.raw:
        raw = await RawSocket.open(node, sender, **query)
        for spec in frames:
            opcode, payload, fin = (*spec, True)[:3]
            await raw.send_frame(opcode, payload, fin=fin)
        ws = None
    else:
        ws = await open_ws(node, sender, **query)
        if case.peer:
            await sink.announced_peer(sender)
        for data in frames:
            await ws.send(data)
    expected_received = len(frames) if case.received is None else case.received

    async def settled() -> bool:
        now = await in_thread(node.metrics)
        return now.received() - before.received() >= expected_received

    assert await until(settled, timeout=10)

    code: int | None = None
    if case.close is not None:
        if case.raw:
            code = await raw.close_code()
        else:
            assert ws is not None
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(5):
                    while True:  # past the peer announcements
                        await ws.recv()
            code = ws.close_code
        assert code == case.close, f"{case.name}: closed with {code}, expected {case.close}"
    if case.delivered > 0:
        assert await sink.wait(lambda: len(sink.seqs) + len(sink.others) >= case.delivered, 5)
    await asyncio.sleep(0.2)  # anything else that would arrive or be counted
    after: Samples = await in_thread(node.metrics)
    dropped = delta(after.dropped(), before.dropped())
    received = after.received() - before.received()

    assert received == expected_received, (case.name, received)
    if case.close is not None:
        # The hub's peer announcements may still be queued for a socket the transport
        # closes at once: those are lost to the closing socket, and counted.
        assert dropped.pop("closing", 0) <= 2
    for reason, want in case.drops.items():
        got = dropped.pop(reason, 0)
        if isinstance(want, tuple):
            assert want[0] <= got <= want[1], (case.name, reason, got)
        else:
            assert got == want, (case.name, reason, got)
    if case.delivered >= 0:
        assert dropped == {}, f"{case.name}: unexpected drops {dropped}"
        assert len(sink.seqs) + len(sink.others) == case.delivered, case.name
    assert not sink.closed.is_set()

    # The connection still carries traffic unless the outcome was a close.
    if case.close is None:
        follow_up = encode(valid(sender, sink_name, 99), case.query.get("format", "json"))
        if case.raw:
            await raw.send_frame(OP_BINARY, follow_up)
        else:
            assert ws is not None
            await asyncio.sleep(1.1)  # a fresh second of rate budget after a flood
            await ws.send(follow_up)
        assert await sink.wait(lambda: 99 in sink.seqs, 5), f"{case.name}: socket no longer relays"
    if ws is not None:
        await ws.close()
    if case.raw:
        await raw.aclose()
    await sink.close()
    assert node.alive and node.get("/healthz")[0] == 200
    await _check_pair_works(node, tag)


async def test_frame_over_the_transport_limit_is_counted(node: FaultNode) -> None:
    """A frame past uvicorn's limit ends the socket with 1009 before the hub sees it; the
    hub must still say why the socket closed (closecodes: 1009 is ``too_big``) rather
    than count it as an ordinary client close."""
    before = await in_thread(node.metrics)
    ws = await open_ws(node, "too-big", "nobody")
    await ws.send(b"{" + b" " * 70_000)
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(5):
            while True:
                await ws.recv()
    assert ws.close_code == 1009
    assert await until(lambda: node.metrics().value("bushub_connections") == 0, timeout=5)
    after = await in_thread(node.metrics)
    closed = delta(
        after.by_label("bushub_connections_closed_total", "reason"),
        before.by_label("bushub_connections_closed_total", "reason"),
    )
    assert closed == {"too_big": 1}, f"a 1009 close was counted as {closed}"


async def test_a_broken_first_frame_does_not_switch_the_socket_to_msgpack(
    node: FaultNode,
) -> None:
    """docs/protocol.md, Routing: an undecodable frame is dropped and counted and "never kills the
    connection's other traffic". On a socket that did not declare its format, a first
    frame that merely starts like a MsgPack map but does not decode must not decide the
    format: the client's next (JSON) messages must still be relayed, and what the hub
    sends it must stay JSON."""
    sink = await Inbox.open(node, "sniff-sink", "sniff-src", on_peer_lost="keep")
    src = await Inbox.open(node, "sniff-src", "sniff-sink", on_peer_lost="keep")
    await sink.announced_peer("sniff-src")
    before = await in_thread(node.metrics)
    await src.ws.send(b"\x82\xa8__type__")  # a MsgPack map marker, then cut off
    await src.ws.send(encode(valid("sniff-src", "sniff-sink", 1)))
    await sink.ws.send(encode(valid("sniff-sink", "sniff-src", 2)))
    assert await src.wait(lambda: 2 in src.seqs, 5)
    arrived = await sink.wait(lambda: 1 in sink.seqs, 5)
    formats = set(src.formats[-1:])
    after = await in_thread(node.metrics)
    dropped = delta(after.dropped(), before.dropped())
    assert arrived, f"the JSON message after a broken first frame was dropped: {dropped}"
    assert dropped == {"malformed": 1}
    assert formats == {"json"}, f"the hub now writes {formats} to a JSON client"
    await src.close()
    await sink.close()


# ---- random frames ------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16)
)
_values = st.recursive(
    _scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
_names = st.sampled_from(["fz-sink", "fz-src", "nobody", "", "a b", "{x}", "x" * 200]) | st.text(
    max_size=10
)
_types = st.sampled_from(
    [TASK_REQUEST, SUBAGENTS + "BusFrameMessage", REGISTRY, "evil.Exec", "NoDot", ""]
) | st.text(max_size=24)
_messages = st.builds(
    lambda t, d: {"__type__": t, "__data__": d},
    _types,
    st.fixed_dictionaries(
        {},
        optional={
            "source": _names | _values,
            "target": _names | _values,
            "payload": _values,
            "blob": st.builds(lambda b: {"__type__": "bytes", "__data__": b}, st.text(max_size=12)),
            "pad": st.just("p" * 5000),  # pushes the frame over --max-message-bytes
        },
    ),
)


_near_valid = st.builds(
    lambda type_name, source, target, payload: {
        "__type__": type_name,
        "__data__": {"source": source, "payload": payload}
        | ({} if target is None else {"target": target}),
    },
    st.sampled_from([TASK_REQUEST, SUBAGENTS + "BusFrameMessage", SUBAGENTS + "BusDataMessage"]),
    st.just("fz-src") | _names,
    st.sampled_from(["fz-sink", "fz-sink", "fz-src", "nobody", None]),
    _values,
)
_trees = st.one_of(_near_valid, _near_valid, _messages, _values)


def _truncations(data: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, max(0, len(data) - 1)).map(lambda n: data[:n])


_json = _trees.map(lambda t: json.dumps(t).encode())
_msgpack = _trees.map(lambda t: bytes(msgpack.packb(t, use_bin_type=True)))
_junk = st.one_of(
    _json,  # valid JSON to either socket: malformed on the MsgPack one
    _msgpack,
    _json.flatmap(_truncations),
    _msgpack.flatmap(_truncations),
    st.binary(max_size=300),
    st.binary(min_size=1, max_size=64).map(lambda b: b"{" + b),
    st.binary(min_size=1, max_size=64).map(lambda b: b"\x82" + b),
)
# (which socket: 0 JSON, 1 MsgPack; the frame; as a text frame if it is valid UTF-8)
_sends = st.tuples(
    st.one_of(
        _json.map(lambda b: (0, b)),
        _msgpack.map(lambda b: (1, b)),
        st.tuples(st.integers(0, 1), _junk),
    ),
    st.booleans(),
).map(lambda x: (x[0][0], x[0][1], x[1]))


class _Drain(threading.Thread):
    """Reads a sync client socket until it closes; records the close code."""

    def __init__(self, ws: Any) -> None:
        super().__init__(daemon=True)
        self.ws = ws
        self.frames = 0
        self.close_code: int | None = None

    def run(self) -> None:
        try:
            for _ in self.ws:
                self.frames += 1
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code


def test_random_frames_keep_the_node_healthy_and_every_frame_counted(
    node: FaultNode, figures: Any
) -> None:
    """300 random frames from two sockets (one confirmed JSON, one MsgPack) to a sink."""
    sink = sync_connect(node.ws_url("fz-sink", peer="fz-src", on_peer_lost="keep"), max_size=None)
    srcs = [
        sync_connect(node.ws_url("fz-src", peer="fz-sink", on_peer_lost="keep"), max_size=None),
        sync_connect(node.ws_url("fz-src2", peer="fz-sink", on_peer_lost="keep"), max_size=None),
    ]
    # One valid message each confirms their formats before the random ones.
    srcs[0].send(encode(valid("fz-src", "fz-sink", 0)))
    srcs[1].send(encode(valid("fz-src2", "fz-sink", 0), "msgpack"))
    drains = [_Drain(ws) for ws in (sink, *srcs)]
    for d in drains:
        d.start()
    assert wait_until(lambda: drains[0].frames >= 4 and all(d.frames >= 2 for d in drains))
    time.sleep(0.2)
    before = node.metrics()
    sent = [0, 0]  # frames, of which text

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(_sends)
    def send_one(item: tuple[int, bytes, bool]) -> None:
        which, data, as_text = item
        ws = srcs[which]
        try:
            ws.send(data.decode() if as_text else data)
            sent[1] += as_text
        except UnicodeDecodeError:
            ws.send(data)
        sent[0] += 1
        assert drains[1 + which].close_code is None, f"socket closed after {data[:80]!r}"

    started = time.monotonic()
    send_one()
    took = time.monotonic() - started

    assert wait_until(lambda: node.metrics().received() - before.received() >= sent[0], 10)
    last = -1.0
    while True:  # until deliveries stop changing
        time.sleep(0.3)
        now = node.metrics()
        if now.delivered() == last:
            break
        last = now.delivered()
    after = node.metrics()
    received = after.received() - before.received()
    dropped = delta(after.dropped(), before.dropped())
    delivered = after.delivered() - before.delivered()
    figures("random frames sent (of which text)", f"{sent[0]} ({sent[1]}) in {took:.1f}s")
    figures(
        "received = dropped + delivered",
        f"{received:.0f} = {sum(dropped.values()):.0f} + {delivered:.0f}",
    )
    figures("drops by reason", dropped)

    assert received == sent[0]
    assert received == sum(dropped.values()) + delivered, (received, dropped, delivered)
    assert delivered > 0, "no random frame was valid enough to be relayed"
    assert all(d.close_code is None for d in drains)
    assert node.get("/healthz")[0] == 200
    for ws in (sink, *srcs):
        ws.close()
    for d in drains:
        d.join(5)
    asyncio.run(_check_pair_works(node, "fuzz"))


def test_node_is_back_to_baseline_after_all_of_it(node: FaultNode, figures: Any) -> None:
    """After every case above: no connection, agent or client socket left, the same
    non-socket descriptors as at start, RSS within 30 MB of where it started."""
    assert wait_until(lambda: node.metrics().value("bushub_connections") == 0, 10)
    samples = node.metrics()
    rss0, fds0 = node.baseline  # type: ignore[attr-defined]
    port = node.redis_port  # type: ignore[attr-defined]
    kinds = ("other", "tcp_other", "unmatched_sockets")

    def settled() -> bool:
        now = fd_breakdown(node, port)
        return now["clients"] == 0 and all(now[k] <= fds0[k] for k in kinds)

    wait_until(settled, 5)  # sockets closing right now
    fds = fd_breakdown(node, port)
    figures("VmRSS kB at start / end", f"{rss0} / {node.rss_kb()}")
    figures("fds at start", fds0)
    figures("fds at end", fds)
    assert samples.value("bushub_agents") == 0
    assert node.get("/healthz")[0] == 200 and node.get("/readyz")[0] == 200
    assert fds["clients"] == 0, fds
    for kind in kinds:
        assert fds[kind] <= fds0[kind], (kind, fds0, fds)
    # The Redis command pool keeps the connections it opened at peak concurrency.
    assert fds["redis"] <= fds0["redis"] + 8, (fds0, fds)
    assert node.rss_kb() - rss0 < 30_000
