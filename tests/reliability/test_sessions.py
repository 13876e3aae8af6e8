"""Sessions on real nodes and a real Redis, spoken by hand (docs/protocol.md, Sessions).

Each test drives a session socket frame by frame (`tests.support.sessionclient`), so
that what the hub promises is seen exactly: which positions are replayed, which are
not written twice, what a resume answers, and what the peers are told. The proxies'
own half is tested in ``tests/unit/busclient`` and end to end with real pipecat
agents in ``tests/deployment``.
"""

import asyncio
import base64
import os
import signal
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from bushub.broker.sessionscripts import REPLAY_PAGE
from buswire.channels import relayed_key
from tests.integration.redis_cluster import ClusterNodeServer, RedisClusterServers
from tests.reliability.conftest import Faults
from tests.reliability.harness import FaultNode, FaultRedis
from tests.support.messages import encode, task_request
from tests.support.reports import register_log
from tests.support.sessionclient import PlainSocket, SessionSocket
from tests.support.waiting import TIMEOUT, until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("sessions-cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def cluster_nodes(
    redis_cluster: RedisClusterServers, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[list[FaultNode]]:
    """Two nodes on the module's Redis Cluster (emptied first), stopped at the end."""
    redis_cluster.flush()
    nodes = [FaultNode(n, tmp_path / f"hub-{n}.log", redis_cluster.url) for n in ("n1", "n2")]
    try:
        for node in nodes:
            register_log(request, f"hub {node.node_id} log", node.log_path)
            node.spawn()
        for node in nodes:
            node.wait_ready()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def two_nodes(
    broker: str, faults: Faults, request: pytest.FixtureRequest, key: str
) -> tuple[FaultNode, FaultNode, FaultRedis | ClusterNodeServer]:
    """Two nodes on the test's Redis (``redis-tls``: over TLS) or on the module's Redis
    Cluster, and the Redis that holds ``key`` (a cluster's shard primary)."""
    if broker != "redis-cluster":
        server = faults.start_redis(tls=broker == "redis-tls")
        n1, n2 = faults.ready("n1", "n2")
        return n1, n2, server
    n1, n2 = request.getfixturevalue("cluster_nodes")
    return n1, n2, request.getfixturevalue("redis_cluster").primary_for(key)


async def received(sock: SessionSocket, count: int, what: str) -> None:
    await until(lambda: len(sock.messages) >= count, what=what)


async def gone_away(holder: FaultNode, other: FaultNode) -> tuple[SessionSocket, PlainSocket]:
    """Session ``S1`` of ``a`` on ``holder`` and a plain ``b`` on ``other``, each told of
    the other; then ``a`` dropped with no close, and ``holder`` seeing it gone."""
    a = await SessionSocket.open(holder.url, "a", "b", "S1")
    b = await PlainSocket.open(other.url, "b", "a", on_peer_lost="keep")
    await until(
        lambda: len(a.announcements) >= 1 and len(b.runners()) >= 1,
        what="a and b told of each other",
    )
    await a.vanish()
    await until(
        lambda: holder.metrics().value("bushub_connections") == 0,
        what=f"{holder.node_id} seeing a gone",
    )
    return a, b


async def away_and_back(
    sock: SessionSocket,
    names: tuple[str, str, str],
    holder: FaultNode,
    to: FaultNode,
    send: Callable[[], Awaitable[None]],
) -> SessionSocket:
    """Drop ``sock`` with no close, wait for its node to see it gone, ``send`` while
    it is away, and resume its session on ``to`` from what it received: recovered,
    with what was kept meanwhile (one message at least) read.

    Args:
        names: The session's agent, its peer and the session id.
    """
    agent, peer, session = names
    await sock.vanish()
    await until(
        lambda: holder.metrics().value("bushub_connections") == 0,
        what=f"{holder.node_id} seeing {agent} gone",
    )
    await send()
    back = await SessionSocket.open(to.url, agent, peer, session, received=sock.positions[-1])
    assert back.result == "recovered"
    await received(back, 1, f"what was kept while {agent} was away")
    return back


@pytest.mark.parametrize("broker", ["redis", "redis-tls", "redis-cluster"])
async def test_what_an_away_session_missed_is_replayed_in_order_on_another_node(
    broker: str, faults: Faults, request: pytest.FixtureRequest
) -> None:
    n1, n2, server = two_nodes(broker, faults, request, "bushub:stream:{a}")
    a = await SessionSocket.open(n1.url, "a", "b", "S1")
    assert a.result == "new"
    b = await PlainSocket.open(n2.url, "b", "a", on_peer_lost="keep")
    await until(lambda: len(a.announcements) >= 1, what="a told b is there")
    for seq in (1, 2, 3):
        await b.send("b", "a", seq)
    await received(a, 3, "the first three, live")
    assert a.seqs() == [1, 2, 3]
    # It took all three but only acknowledged two when its connection died.
    await a.ack(a.positions[1])
    await until(
        lambda: server.cli("XLEN", "bushub:stream:{a}").strip() == "1",
        what="the two acknowledged trimmed from a's stream",
    )
    last_taken = a.positions[2]
    await a.vanish()
    await until(lambda: n1.metrics().value("bushub_connections") == 0, what="n1 seeing a gone")
    for seq in (4, 5, 6):
        await b.send("b", "a", seq)
    await until(
        lambda: n2.metrics().value("bushub_session_messages_total", event="kept_away") >= 3,
        what="three messages kept while a was away",
    )

    back = await SessionSocket.open(n2.url, "a", "b", "S1", received=last_taken)
    assert back.result == "recovered"
    assert back.epoch == a.epoch
    await received(back, 3, "the replay")
    await b.send("b", "a", 7)
    await received(back, 4, "live after the replay")
    await asyncio.sleep(0.3)
    assert back.seqs() == [4, 5, 6, 7], "each missed message once, in order, then live"
    assert back.positions == sorted(back.positions)
    metrics = n2.metrics()
    assert metrics.value("bushub_resumes_total", result="recovered") == 1
    assert metrics.value("bushub_session_messages_total", event="replayed") == 3
    # b's peer came back as the same session: not announced anew.
    await b.send("b", "a", 8)
    await received(back, 5, "another live one")
    assert len(set(b.runners())) == 1, b.runners()
    await back.close()
    await b.close()


@pytest.mark.parametrize("broker", ["redis", "redis-cluster"])
async def test_a_proxy_that_gave_up_messages_it_sent_resumes_as_a_gap_its_peer_told(
    broker: str, faults: Faults, request: pytest.FixtureRequest
) -> None:
    """A proxy whose send log went over its bounds while away says so in its
    handshake: the resume is a gap (a new epoch, so its peer announces it anew, as
    after any gap), counted and logged, and what it missed is replayed all the same."""
    n1, n2, _ = two_nodes(broker, faults, request, "bushub:stream:{a}")
    a, b = await gone_away(n1, n2)
    for seq in (1, 2):
        await b.send("b", "a", seq)
    await until(
        lambda: n2.metrics().value("bushub_session_messages_total", event="kept_away") >= 2,
        what="two kept while a was away",
    )
    back = await SessionSocket.open(n2.url, "a", "b", "S1", sent_lost=5)
    assert back.result == "gap" and back.epoch != a.epoch
    await received(back, 2, "what a missed, replayed")
    assert back.seqs() == [1, 2]
    await until(lambda: len(set(b.runners())) == 2, what="b told of a anew")
    metrics = n2.metrics()
    assert metrics.value("bushub_resumes_total", result="gap") == 1
    assert metrics.value("bushub_session_messages_total", event="sent_lost") == 5
    await back.close()
    await b.close()


@pytest.mark.parametrize("broker", ["redis", "redis-cluster"])
async def test_a_replay_past_one_page_comes_whole_in_order_before_live(
    broker: str, faults: Faults, request: pytest.FixtureRequest
) -> None:
    """A resume reads ``REPLAY_PAGE`` kept messages and its node the rest a page per
    read (a session at its bound read in one script held Redis ~120 ms, every other
    client waiting): each message once, in order, then what came live meanwhile."""
    n1, n2, server = two_nodes(broker, faults, request, "bushub:stream:{a}")
    _, b = await gone_away(n1, n2)
    kept = 2 * REPLAY_PAGE + 10
    for seq in range(1, kept + 1):
        await b.send("b", "a", seq)
    await until(
        lambda: n2.metrics().value("bushub_session_messages_total", event="kept_away") >= kept,
        what=f"{kept} messages kept while a was away",
    )
    server.cli("CONFIG", "RESETSTAT")

    back = await SessionSocket.open(n2.url, "a", "b", "S1", received=0)
    assert back.result == "recovered"
    await b.send("b", "a", kept + 1)
    await received(back, kept + 1, "the replay, then the live one")
    await asyncio.sleep(0.3)
    assert back.seqs() == list(range(1, kept + 2)), "each once, in order, then live"
    assert back.positions == list(range(1, kept + 2))
    metrics = n2.metrics()
    assert metrics.value("bushub_session_messages_total", event="replayed") == kept
    assert metrics.value("bushub_session_messages_total", event="lost") == 0
    # The resume's page, two more and none after: read a page at a time.
    stats = server.cli("INFO", "commandstats")
    xrange_calls = int(stats.split("cmdstat_xrange:calls=")[1].split(",")[0])
    assert xrange_calls == 3, stats
    await back.close()
    await b.close()


async def test_a_slow_readers_long_replay_is_read_as_it_reads(faults: Faults) -> None:
    """A reader that takes little of a long replay (a small receive buffer, a client
    that stops reading): its node reads the next page once the socket's queue is back
    within --queue-bytes, so the backlog stays in Redis, not in the node's memory
    (read as fast as Redis answered, a session at --resume-bytes put it all there).
    Once it reads, each message comes once, in order, then what came live meanwhile."""
    server = faults.start_redis()
    n1, n2 = faults.ready(
        "n1",
        "n2",
        max_message_bytes=1 << 16,
        queue_bytes=1 << 18,
        resume_bytes=1 << 26,
        rate_bytes=0,
        rate_messages=0,
    )
    _, b = await gone_away(n1, n2)
    # 32 MB kept: 16 pages, each 2 MB.
    kept = 16 * REPLAY_PAGE
    for seq in range(1, kept + 1):
        await b.ws.send(encode(task_request("b", "a", seq, pad=8000)))
    await until(
        lambda: n2.metrics().value("bushub_session_messages_total", event="kept_away") >= kept,
        timeout=TIMEOUT * 2,
        what=f"{kept} messages kept while a was away",
    )
    server.cli("CONFIG", "RESETSTAT")
    rss_before = n1.rss_kb()

    back = await SessionSocket.open(n1.url, "a", "b", "S1", stalled=True)
    assert back.result == "recovered"
    for seq in (kept + 1, kept + 2):
        await b.send("b", "a", seq)  # live, held behind the replay
    await asyncio.sleep(2.0)
    stats = server.cli("INFO", "commandstats")
    reads = int(stats.split("cmdstat_xrange:calls=")[1].split(",")[0])
    grown_mb = (n1.rss_kb() - rss_before) / 1024
    # The resume's page and what the kernel's buffers (4 MB at most here) and the
    # queue took: a few pages of the 16, and their megabytes.
    assert reads <= 6, stats
    assert grown_mb < 16, f"the node grew {grown_mb:.1f} MB for a stalled reader"

    back.read_on()
    await received(back, kept + 2, "the replay, then the live ones")
    assert back.positions == list(range(1, kept + 3)), "each once, in order, then live"
    assert back.seqs() == list(range(1, kept + 3))
    metrics = n1.metrics()
    assert metrics.value("bushub_session_messages_total", event="replayed") == kept
    assert metrics.value("bushub_session_messages_total", event="lost") == 0
    assert metrics.value("bushub_messages_dropped_total", reason="slow_consumer") == 0
    await back.close()
    await b.close()


async def test_text_frames_on_a_session_socket_are_held_to_its_rate(faults: Faults) -> None:
    """Session frames are binary: a text frame is dropped ``malformed``, and costs the
    socket's rate as any frame does. A flood of them went through at once, past
    ``--rate-messages``, where a flood of binary junk is held back."""
    (n1,) = faults.ready("n1", rate_messages=50)
    a = await SessionSocket.open(n1.url, "a", "b", "S1")
    b = await PlainSocket.open(n1.url, "b", "a", on_peer_lost="keep")
    for _ in range(500):
        await a.ws.send("not a session frame")
    await asyncio.sleep(1.0)
    metrics = n1.metrics()
    malformed = metrics.value("bushub_messages_dropped_total", reason="malformed")
    # A second's worth of burst and a second or two at the rate: well short of 500.
    assert 50 <= malformed <= 300, malformed
    assert metrics.value("bushub_session_messages_total", event="throttled") >= 1
    # The socket is open and goes on once the flood is read (at its rate).
    await until(
        lambda: n1.metrics().value("bushub_messages_dropped_total", reason="malformed") == 500,
        timeout=TIMEOUT * 2,
        what="the flood read at the socket's rate",
    )
    await a.send(1, "a", "b", 1)
    await until(lambda: b.seqs() == [1], what="a's message after the flood")
    await a.close()
    await b.close()


async def test_what_a_session_sends_again_after_a_reconnect_is_relayed_once(
    faults: Faults,
) -> None:
    n1, n2 = faults.ready("n1", "n2")
    b = await PlainSocket.open(n2.url, "b", "a", on_peer_lost="keep")
    a = await SessionSocket.open(n1.url, "a", "b", "S1")
    for position in (1, 2, 3):
        await a.send(position, "a", "b", position)
    await until(lambda: a.acked == 3, what="the hub acknowledging all three")
    await until(lambda: b.seqs() == [1, 2, 3], what="b receiving them")
    await a.vanish()
    # As if the acknowledgement had been lost with the connection: all sent again.
    again = await SessionSocket.open(n2.url, "a", "b", "S1")
    for position in (1, 2, 3, 4):
        await again.send(position, "a", "b", position)
    await until(lambda: again.acked == 4, what="the hub acknowledging the resend")
    await until(lambda: 4 in b.seqs(), what="the new one reaching b")
    await asyncio.sleep(0.3)
    assert b.seqs() == [1, 2, 3, 4], "a resent message is relayed once"
    taken = n2.metrics().value("bushub_session_messages_total", event="resent_taken")
    assert taken == 3
    await again.close()
    await b.close()


@pytest.mark.parametrize("broker", ["redis", "redis-cluster"])
async def test_a_key_written_by_hand_costs_its_agents_messages_and_nothing_else(
    broker: str, faults: Faults, request: pytest.FixtureRequest
) -> None:
    # x's relay record written by hand as a string: the delivery script answers every
    # session's message to x with WRONGTYPE. Those are lost (counted, logged); the node
    # stays ready, the sending session's socket stays open with every position
    # acknowledged, and its messages to y flow.
    key = relayed_key("x")
    n1, n2, server = two_nodes(broker, faults, request, key)
    server.cli("SET", key, "written by hand")
    x = await PlainSocket.open(n2.url, "x", "s", on_peer_lost="keep")
    y = await SessionSocket.open(n2.url, "y", "s", "Y1")
    s = await SessionSocket.open(n1.url, "s", "y", "S1")
    await until(lambda: len(s.announcements) >= 1, what="s told y is there")
    for position, target in enumerate(("x", "y", "x", "y"), start=1):
        await s.send(position, "s", target, position)
    await until(lambda: s.acked == 4, what="the hub acknowledging all four")
    await received(y, 2, "s's messages to y")
    assert y.seqs() == [2, 4]
    metrics = n1.metrics()
    assert {k: v for k, v in metrics.dropped().items() if v} == {"broker_refused": 2}
    assert metrics.value("bushub_redis_errors_total", op="publish", kind="wrongtype") == 2
    assert n1.get("/readyz")[0] == 200
    await s.send(5, "s", "y", 5)
    await received(y, 3, "s's next message to y")
    assert s.ws.close_code is None and y.ws.close_code is None
    assert x.seqs() == []
    said = "redis refused a message on bushub:msg:{x} for what the target's keys hold: "
    assert said + "WRONGTYPE" in n1.log_text()
    # The key put right, x's messages go through again.
    server.cli("DEL", key)
    await s.send(6, "s", "x", 6)
    await until(lambda: x.seqs() == [6], what="s's next message to x")
    for sock in (s, y, x):
        await sock.close()


async def test_a_session_whose_node_was_killed_resumes_elsewhere(faults: Faults) -> None:
    n1, n2 = faults.ready("n1", "n2")
    redis = faults.start_redis()
    a = await SessionSocket.open(n1.url, "a", "b", "S1")
    b = await PlainSocket.open(n2.url, "b", "a", on_peer_lost="keep")
    n1.kill()
    await a.vanish()
    for seq in (1, 2):
        await b.send("b", "a", seq)
    # Once the dead node is cleaned up, its session is kept for the window, no longer.
    await until(
        lambda: int(redis.cli("PTTL", "bushub:session:{a}").strip()) > 0,
        timeout=TIMEOUT * 2,
        what="the dead node's session given the window",
    )
    back = await SessionSocket.open(n2.url, "a", "b", "S1")
    assert back.result == "recovered"
    await received(back, 2, "what was sent while a's node was dead")
    assert back.seqs() == [1, 2]
    assert int(redis.cli("PTTL", "bushub:session:{a}").strip()) == -1, "held again: no expiry"
    await back.close()
    await b.close()


async def test_away_past_the_window_is_a_gap_and_the_peer_is_announced_anew(
    faults: Faults,
) -> None:
    (n1,) = faults.ready("n1", resume_window=1.0, peer_grace=5.0)
    a = await SessionSocket.open(n1.url, "a", "b", "S1")
    b = await PlainSocket.open(n1.url, "b", "a")
    await b.send("b", "a", 1)
    await received(a, 1, "the first message")
    await until(lambda: len(b.runners()) == 1, what="b told of a")
    await a.vanish()
    await b.send("b", "a", 2)
    await asyncio.sleep(1.5)  # past the window: the session and what it kept are gone
    back = await SessionSocket.open(n1.url, "a", "b", "S1", received=a.positions[0])
    assert back.result == "gap"
    assert back.epoch != a.epoch
    await asyncio.sleep(0.3)
    assert back.messages == [], "nothing to replay: it expired"
    await until(lambda: len(set(b.runners())) == 2, what="b told of a anew (a new runner)")
    assert n1.metrics().value("bushub_resumes_total", result="gap") == 1
    await b.send("b", "a", 3)
    await received(back, 1, "live traffic after the gap")
    assert back.seqs() == [3]
    await back.close()
    await b.close()


async def test_what_an_away_session_was_sent_expires_with_it(faults: Faults) -> None:
    """A session that ended before anything was kept for it, then sent a message while
    away: the stream that made outlived the session for good, one per agent name."""
    (n1,) = faults.ready("n1", resume_window=1.0)
    a = await SessionSocket.open(n1.url, "once", "b", "S1")
    b = await PlainSocket.open(n1.url, "b", "once")
    await a.vanish()
    await until(lambda: n1.metrics().value("bushub_connections") == 1, what="a gone")
    await b.send("b", "once", 1)
    await until(lambda: faults.redis.keys("bushub:stream:*") != [], what="the message kept")
    await until(lambda: faults.redis.keys("bushub:s*") == [], what="session and stream gone")
    await b.close()


async def test_a_session_peer_away_past_the_peer_grace_is_not_lost_to_its_watchers(
    faults: Faults,
) -> None:
    """A reconnecting proxy away longer than --peer-grace (its node drained, its
    backoff at a few seconds) is on its way back, not gone: its watchers that asked
    on_peer_lost=close stay open while its session lasts, and what they send it is
    there when it resumes on another node (a stock peer is lost after the grace:
    tests/unit/bushub/test_presence.py)."""
    n1, n2 = faults.ready("n1", "n2", peer_grace=0.5, resume_window=30.0)
    w = await SessionSocket.open(n1.url, "w", "c", "SW")
    c = await SessionSocket.open(n2.url, "c", "w", "SC", on_peer_lost="close")
    stock = await PlainSocket.open(n2.url, "s", "w")  # a stock watcher, on_peer_lost=close
    await until(lambda: bool(c.announcements) and bool(stock.runners()), what="told of w")
    told = len(c.announcements)
    await w.vanish()
    await asyncio.sleep(4 * 0.5)  # four peer graces
    await c.send(1, "c", "w", 1)
    await until(lambda: c.acked == 1, what="c's message taken (kept for w)")
    back = await SessionSocket.open(n2.url, "w", "c", "SW", received=0)
    assert back.result == "recovered"
    await received(back, 1, "what c sent while w was away")
    assert back.seqs() == [1]
    for watcher in (c.ws, stock.ws):
        assert watcher.close_code is None, "closed while its peer's session lasted"
    assert len(c.announcements) == told, "w, resumed, is the same agent: not announced anew"
    await back.close()
    await c.close()
    await stock.close()


async def test_a_peer_that_left_while_its_watcher_was_away_is_lost_where_it_resumes(
    faults: Faults,
) -> None:
    """c (a session, on_peer_lost=close) was told of the stock w on n2; n2 went (here:
    c's socket dropped) and w left meanwhile. c resumes on n1, which never saw w: its
    handshake says it was told of w, so n1 takes w for lost after the peer grace
    (4002). A session that was never told of w waits for it, as stock proxies do."""
    n1, n2 = faults.ready("n1", "n2", peer_grace=0.5)
    w = await PlainSocket.open(n2.url, "w", "c", on_peer_lost="keep")
    c = await SessionSocket.open(n2.url, "c", "w", "SC", on_peer_lost="close")
    await until(lambda: bool(c.announcements), what="c told of w")
    await c.vanish()
    await w.close()
    back = await SessionSocket.open(n1.url, "c", "w", "SC", on_peer_lost="close", peer_seen=True)
    never = await SessionSocket.open(n1.url, "d", "w", "SD", on_peer_lost="close")
    assert back.result == "recovered"
    await until(lambda: back.ws.close_code == 4002, what="w taken for lost where c resumed")
    assert never.ws.close_code is None, "never told of w: waits for it"
    await never.close()
    await back.close()


async def test_over_the_bounds_the_oldest_go_and_the_resume_says_gap(faults: Faults) -> None:
    (n1,) = faults.ready("n1", resume_messages=3)
    a = await SessionSocket.open(n1.url, "a", "b", "S1")
    b = await PlainSocket.open(n1.url, "b", "a", on_peer_lost="keep")
    await a.vanish()
    for seq in range(1, 6):
        await b.send("b", "a", seq)
    await asyncio.sleep(0.3)
    back = await SessionSocket.open(n1.url, "a", "b", "S1")
    assert back.result == "gap"
    await received(back, 3, "the three kept")
    assert back.seqs() == [3, 4, 5]
    await back.close()
    await b.close()


def _upgrade_and_reset(port: int, agent: str, session: str, wait: float) -> None:
    """Ask for a session socket, then drop the connection (RST) before the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws/{agent}?peer=x&session={session}&received=0 HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    time.sleep(wait)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_a_client_gone_during_the_handshake_leaves_its_session_for_the_window(
    faults: Faults,
) -> None:
    """A client that drops its connection between the resume and the accept: the
    session is released for the window like any other (it was left held, with no
    expiry, for good: a probe saw 15 of 20 so; messages to the agent then kept)."""
    (n1,) = faults.ready("n1", resume_window=5.0)
    redis = faults.redis
    assert redis is not None
    agents = [f"h{i}" for i in range(20)]
    for i, agent in enumerate(agents):
        # Resets from at once to 18 ms after the request: some land between the
        # resume and the accept however fast the node answers (on a busy machine a
        # reset within 3 ms came before every resume).
        await asyncio.to_thread(_upgrade_and_reset, n1.port, agent, f"S{i}", (i % 10) * 0.002)

    def settled() -> bool:
        # Each either released for the window, or never resumed at all.
        ttls = [int(redis.cli("PTTL", f"bushub:session:{{{a}}}").strip()) for a in agents]
        return all(ttl == -2 or 0 < ttl <= 5000 for ttl in ttls)

    assert await until(settled, timeout=TIMEOUT), [
        (a, redis.cli("PTTL", f"bushub:session:{{{a}}}").strip()) for a in agents
    ]
    resumed = [a for a in agents if redis.cli("EXISTS", f"bushub:session:{{{a}}}").strip() == "1"]
    assert resumed, "no handshake got as far as the resume: the test proved nothing"


async def test_a_new_session_of_the_name_gets_no_replay_and_is_announced_anew(
    faults: Faults,
) -> None:
    (n1,) = faults.ready("n1")
    a = await SessionSocket.open(n1.url, "a", "b", "S1")
    b = await PlainSocket.open(n1.url, "b", "a", on_peer_lost="keep")
    await until(lambda: len(b.runners()) == 1, what="b told of a")
    await a.vanish()
    await b.send("b", "a", 1)
    await asyncio.sleep(0.3)
    restarted = await SessionSocket.open(n1.url, "a", "b", "S2")
    assert restarted.result == "new"
    await until(lambda: len(set(b.runners())) == 2, what="b told of the new a")
    await asyncio.sleep(0.3)
    assert restarted.messages == [], "a restarted agent gets nothing of its predecessor's"
    await restarted.close()
    await b.close()


async def test_the_in_process_broker_resumes_a_session_on_its_one_node(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    node = FaultNode("solo", tmp_path / "hub-solo.log", None)
    register_log(request, "hub solo log", node.log_path)
    node.start()
    try:
        a = await SessionSocket.open(node.url, "a", "b", "S1")
        b = await PlainSocket.open(node.url, "b", "a", on_peer_lost="keep")
        await b.send("b", "a", 1)
        await received(a, 1, "the first message")
        await a.vanish()
        await b.send("b", "a", 2)
        back = await SessionSocket.open(node.url, "a", "b", "S1", received=a.positions[0])
        assert back.result == "recovered"
        await received(back, 1, "the replay")
        assert back.seqs() == [2]
        await back.close()
        await b.close()
    finally:
        node.stop()


async def test_a_redis_that_restarted_empty_gets_connected_sessions_back(
    faults: Faults,
) -> None:
    n1, n2 = faults.ready("n1", "n2")
    redis = faults.start_redis()
    a = await SessionSocket.open(n1.url, "a", "b", "S1")
    b = await PlainSocket.open(n2.url, "b", "a", on_peer_lost="keep")
    for seq in (1, 2):
        await b.send("b", "a", seq)
    await received(a, 2, "two messages before the outage")
    redis.kill()
    await asyncio.sleep(1.0)
    redis.restart()  # empty: no persistence
    for node in (n1, n2):
        node.wait_ready()
    await until(
        lambda: redis.cli("HGET", "bushub:session:{a}", "seq").strip() == str(a.positions[-1]),
        what="n1 putting a's session back, numbered after what a was given",
    )
    await b.send("b", "a", 3)
    await received(a, 3, "a live message after the outage, numbered on")
    assert a.positions == sorted(a.positions) and len(set(a.positions)) == 3
    await a.vanish()
    await until(lambda: n1.metrics().value("bushub_connections") == 0, what="n1 seeing a gone")
    await b.send("b", "a", 4)
    back = await SessionSocket.open(n1.url, "a", "b", "S1", received=a.positions[-1])
    assert back.result == "recovered", "the outage lost nothing a had been given"
    await received(back, 1, "what was kept after the outage")
    assert back.seqs() == [4]
    await back.close()
    await b.close()


async def test_a_session_redis_lost_while_connected_is_put_back_at_its_next_message(
    faults: Faults,
) -> None:
    """``FLUSHALL`` (or an eviction, or a deleted key) under a connected session, with
    no connection broken to tell the nodes: the next message for it comes unkept, and
    its node puts the session back, so what is sent while its socket is away is kept
    and replayed. Before, every later message came unkept for good, and a drop of
    the socket lost what was sent meanwhile with nothing reported."""
    n1, n2 = faults.ready("n1", "n2")
    redis = faults.start_redis()
    a = await SessionSocket.open(n1.url, "a", "b", "S1")
    b = await PlainSocket.open(n2.url, "b", "a", on_peer_lost="keep")
    await b.send("b", "a", 1)
    await received(a, 1, "a's first, kept")
    redis.cli("FLUSHALL")
    await b.send("b", "a", 2)
    await until(lambda: a.arrivals == [1, 2], what="the message after the flush, unkept")
    await until(
        lambda: redis.cli("HGET", "bushub:session:{a}", "seq").strip() == str(a.positions[-1]),
        what="n1 putting a's session back, numbered after what a was given",
    )
    assert n1.metrics().value("bushub_session_messages_total", event="unkept") == 1
    assert "session of a was gone from redis" in n1.log_text()
    await b.send("b", "a", 3)
    await received(a, 2, "numbered again")
    assert a.seqs() == [1, 3] and a.positions == [1, 2]
    back = await away_and_back(a, ("a", "b", "S1"), n1, n2, lambda: b.send("b", "a", 4))
    assert back.seqs() == [4]
    await back.close()
    await b.close()


async def test_a_node_taken_for_dead_holds_its_connected_sessions_again(faults: Faults) -> None:
    """Node 1 stalls past the presence TTL: node 2 takes it for dead and releases its
    sessions for the window, as if their sockets had ended. Running again, node 1
    holds them again (no expiry on the session or its stream), so a drop of its
    still connected socket after the window has passed loses nothing. Before, the
    session expired under the connected socket, and what was sent after a later drop
    was lost (a resume said gap, or recovered with a message missing)."""
    window = 4.0
    n1, n2 = faults.ready("n1", "n2", resume_window=window)
    redis = faults.start_redis()
    c = await SessionSocket.open(n1.url, "c", "w", "S1")
    w = await PlainSocket.open(n2.url, "w", "c", on_peer_lost="keep")
    await w.send("w", "c", 1)
    await received(c, 1, "c's first, kept")

    def ttl(key: str) -> int:
        return int(redis.cli("PTTL", key).strip())

    n1.signal(signal.SIGSTOP)
    try:
        await until(
            lambda: "node n1 is dead" in n2.log_text(), timeout=30, what="n2 taking n1 for dead"
        )
        assert ttl("bushub:session:{c}") > 0, "released for the window, as the test needs"
    finally:
        n1.signal(signal.SIGCONT)
    await until(
        lambda: ttl("bushub:session:{c}") == -1 and ttl("bushub:stream:{c}") == -1,
        what="n1 holding c's session again",
    )
    await asyncio.sleep(window + 1)  # a released session has expired by now
    assert ttl("bushub:session:{c}") == -1
    await w.send("w", "c", 2)
    await received(c, 2, "numbered, as before the stall")
    back = await away_and_back(c, ("c", "w", "S1"), n1, n2, lambda: w.send("w", "c", 3))
    assert c.seqs() + back.seqs() == [1, 2, 3]
    await back.close()
    await w.close()


@pytest.mark.parametrize("broker", ["redis", "redis-cluster"])
async def test_a_session_whose_name_a_plain_socket_took_resumes_with_a_gap_not_a_replay(
    broker: str, faults: Faults, request: pytest.FixtureRequest
) -> None:
    """A stock socket takes over a session's name (a buggy or hostile client, or a
    second process) and is given what the away session's stream keeps: the session
    is ended, so its resume says gap and replays none of it (before, all of it was
    written to a second socket of the name)."""
    n1, n2, server = two_nodes(broker, faults, request, "bushub:session:{b}")
    a = await PlainSocket.open(n1.url, "a", "b", on_peer_lost="keep")
    b = await SessionSocket.open(n2.url, "b", "a", "SB")
    await a.send("a", "b", 1)
    await received(b, 1, "b's first")
    taken = b.positions[-1]
    stock = await PlainSocket.open(n1.url, "b", "a", on_peer_lost="keep")  # takes b over
    await until(lambda: b.ws.close_code == 4001, what="the session socket taken over")
    for seq in (2, 3, 4):
        await a.send("a", "b", seq)
    await until(lambda: stock.seqs() == [2, 3, 4], what="the stock socket given them")
    await until(
        lambda: server.cli("EXISTS", "bushub:session:{b}").strip() == "0",
        what="the away session ended",
    )
    await stock.close()
    back = await SessionSocket.open(n2.url, "b", "a", "SB", received=taken)
    assert back.result == "gap"
    await asyncio.sleep(0.5)
    assert back.seqs() == [], "nothing the stock socket was given is written again"
    await a.send("a", "b", 5)
    await received(back, 1, "live after the gap")
    assert back.seqs() == [5]
    await back.close()
    await a.close()


@pytest.mark.parametrize("broker", ["redis", "redis-cluster"])
async def test_what_an_away_session_kept_is_counted_lost_when_a_plain_socket_ends_it(
    broker: str, faults: Faults, request: pytest.FixtureRequest
) -> None:
    """The session took 1 and acknowledged it, then went away; 2 and 3 were kept for
    it; a stock socket takes the name and is given 4: the session ends, and 2 and 3,
    given to no socket, are counted lost (1 was trimmed as its socket ended)."""
    n1, n2, server = two_nodes(broker, faults, request, "bushub:session:{b}")
    a = await PlainSocket.open(n1.url, "a", "b", on_peer_lost="keep")
    b = await SessionSocket.open(n2.url, "b", "a", "SB")
    await a.send("a", "b", 1)
    await received(b, 1, "b's first")
    await b.ack(b.positions[-1])
    await asyncio.sleep(0.2)  # the acknowledgement read before the socket ends
    await b.close()
    for seq in (2, 3):
        await a.send("a", "b", seq)
    await until(
        lambda: (
            n1.metrics().value("bushub_session_messages_total", event="kept_away")
            + n2.metrics().value("bushub_session_messages_total", event="kept_away")
            >= 2
        ),
        what="2 and 3 kept for the away session",
    )
    stock = await PlainSocket.open(n1.url, "b", "a", on_peer_lost="keep")
    await a.send("a", "b", 4)
    await until(lambda: stock.seqs() == [4], what="the stock socket given 4")
    await until(
        lambda: n1.metrics().value("bushub_session_messages_total", event="lost") == 2,
        what="2 and 3 counted lost",
    )
    assert server.cli("EXISTS", "bushub:session:{b}").strip() == "0"
    await stock.close()
    await a.close()


async def test_a_resend_after_redis_lost_its_record_is_not_written_twice_to_a_connected_session(
    faults: Faults,
) -> None:
    """Redis restarted empty, and the sender's node with it: the sender's proxy sends
    again what was not acknowledged, Redis no longer knows it relayed it, and the
    receiver (connected throughout, on a node that lived) must not get it twice."""
    n1, n2 = faults.ready("n1", "n2")
    redis = faults.start_redis()
    b = await SessionSocket.open(n1.url, "b", "a", "SB")
    a = await SessionSocket.open(n2.url, "a", "b", "SA")
    for position in (1, 2, 3):
        await a.send(position, "a", "b", position)
    await received(b, 3, "b receiving three")
    redis.kill()
    n2.kill()
    await a.vanish()
    redis.restart()  # empty: no persistence
    n1.wait_ready()
    await until(
        lambda: redis.cli("HGET", "bushub:session:{b}", "seq").strip() == "3",
        what="n1 putting b's session back, numbered after what b was given",
    )
    n2.spawn()
    n2.wait_ready()
    # As if none of the three had been acknowledged before the node died.
    again = await SessionSocket.open(n2.url, "a", "b", "SA")
    for position in (1, 2, 3, 4):
        await again.send(position, "a", "b", position)
    await until(lambda: again.acked == 4, what="the hub acknowledging the resend")
    await received(b, 4, "the new one reaching b")
    await asyncio.sleep(0.3)
    assert b.seqs() == [1, 2, 3, 4], "each message written to b once"
    assert b.positions == sorted(set(b.positions)), "positions in order, none twice"
    taken = n1.metrics().value("bushub_session_messages_total", event="resent_taken")
    assert taken == 3
    await again.close()
    await b.close()


async def test_with_transient_frames_bridged_frames_are_not_kept(faults: Faults) -> None:
    (n1,) = faults.ready("n1", transient_frames=True)
    redis = faults.start_redis()
    a = await SessionSocket.open(n1.url, "a", "b", "S1")
    b = await PlainSocket.open(n1.url, "b", "a", on_peer_lost="keep")
    await a.vanish()
    await until(lambda: n1.metrics().value("bushub_connections") == 1, what="n1 seeing a gone")
    frame = task_request("b", "a", 1)
    frame["__type__"] = "pipecat_subagents.bus.messages.BusFrameMessage"
    await b.ws.send(encode(frame))
    await b.send("b", "a", 2)
    await until(
        lambda: n1.metrics().value("bushub_session_messages_total", event="kept_away") >= 1,
        what="the task request kept",
    )
    assert redis.cli("XLEN", "bushub:stream:{a}").strip() == "1", "the frame was not kept"
    back = await SessionSocket.open(n1.url, "a", "b", "S1")
    await received(back, 1, "the replay")
    await asyncio.sleep(0.3)
    assert back.seqs() == [2]
    await back.close()
    await b.close()


async def test_acknowledgements_ride_on_messages_both_ways_between_nodes(faults: Faults) -> None:
    """Two session sockets that ask for inline acknowledgements, on two nodes, trade
    requests and replies: the hubs acknowledge each side's messages on what they
    deliver to it, each side acknowledges on what it sends, and what rode is passed
    on to Redis: the streams are trimmed with no acknowledgement frame sent."""
    n1, n2 = faults.ready("n1", "n2")
    redis = faults.start_redis()
    a = await SessionSocket.open(n1.url, "a", "b", "S1", inline_acks=True)
    b = await SessionSocket.open(n2.url, "b", "a", "S2", inline_acks=True)
    assert a.takes_inline_acks and b.takes_inline_acks
    rounds = 40
    for seq in range(1, rounds + 1):
        await a.send(seq, "a", "b", seq, acked=a.positions[-1] if a.positions else 0)
        await received(b, seq, f"request {seq}")
        await b.send(seq, "b", "a", seq, acked=b.positions[-1])
        await received(a, seq, f"reply {seq}")
    assert a.seqs() == b.seqs() == list(range(1, rounds + 1))
    # Each request settles long before its reply comes back: the reply carries it.
    assert a.inline_acks >= rounds // 2 and b.inline_acks >= rounds // 2
    await until(lambda: a.acked == rounds and b.acked == rounds, what="every message acknowledged")

    def kept(agent: str) -> int:
        return int(redis.cli("XLEN", f"bushub:stream:{{{agent}}}").strip())

    # b acknowledged every request on its replies; a all but the last reply.
    await until(lambda: kept("b") == 0, what="b's stream trimmed by what rode")
    assert kept("a") >= 1
    await a.ack(a.positions[-1])
    await until(lambda: kept("a") == 0, what="a's stream trimmed")
    await a.close()
    await b.close()


# A window long enough that the sessions away within it are still away when the
# replaced ones have been forgotten; passes often enough to see both soon.
FORGET_FLAGS: dict[str, object] = {"resume_window": 10, "resume_forget_every": 0.5}


def _forget_nodes(
    broker: str, faults: Faults, request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[FaultNode, FaultNode, Callable[[], int] | None]:
    """The senders' node, the worker's node (one node in-process), and how many
    senders the worker's relay record names (None: not in a Redis to look at)."""
    record = "bushub:relayed:{w}"
    if broker == "redis":
        n1, n2 = faults.ready("n1", "n2", **FORGET_FLAGS)
        server = faults.start_redis()
        return n1, n2, lambda: int(server.cli("HLEN", record))
    if broker == "redis-cluster":
        servers: RedisClusterServers = request.getfixturevalue("redis_cluster")
        servers.flush()
        nodes = [
            FaultNode(n, tmp_path / f"hub-{n}.log", servers.url, **FORGET_FLAGS)
            for n in ("n1", "n2")
        ]
        for node in nodes:
            register_log(request, f"hub {node.node_id} log", node.log_path)
            faults.nodes.append(node)  # stopped with the test's other nodes
            node.spawn()
        for node in nodes:
            node.wait_ready()
        shard = servers.primary_for(record)
        return nodes[0], nodes[1], lambda: int(shard.cli("HLEN", record))
    solo = FaultNode("solo", tmp_path / "hub-solo.log", None, **FORGET_FLAGS)
    register_log(request, "hub solo log", solo.log_path)
    faults.nodes.append(solo)
    solo.start()
    return solo, solo, None


@pytest.mark.parametrize("broker", ["redis", "redis-cluster", "in-process"])
async def test_sending_sessions_gone_are_forgotten_from_the_relay_record(
    broker: str, faults: Faults, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A worker that is never quiet hears from client sessions that come and go (each
    client process a session of its own). What the relay remembers of each sender,
    to relay its resends once, is forgotten once its session is gone: replaced by a
    newer session of its agent (at once), away past the window (after it); a session
    away within the window, and one still sending, are remembered. Before, the
    record kept every sender for as long as anything kept writing to the worker."""
    n1, n2, senders = _forget_nodes(broker, faults, request, tmp_path)
    worker = await PlainSocket.open(n2.url, "w", "k", on_peer_lost="keep")
    keeper = await SessionSocket.open(n1.url, "k", "w", "K1")
    sent = 0

    async def keep_writing() -> None:
        nonlocal sent
        while True:
            sent += 1
            await keeper.send(sent, "k", "w", sent)
            await asyncio.sleep(0.2)

    writing = asyncio.create_task(keep_writing())
    clients = [f"c{i}" for i in range(80)]

    async def come_and_go(client: str, session: str) -> None:
        sock = await SessionSocket.open(n1.url, client, "w", session)
        await sock.send(1, client, "w", 100_000 + int(client[1:]))
        await until(lambda: sock.acked == 1, what=f"{client} relayed")
        await sock.close()

    try:
        for i in range(0, len(clients), 20):
            await asyncio.gather(*(come_and_go(c, f"S{c}") for c in clients[i : i + 20]))
        if senders is not None:
            assert senders() == 81, "every sender remembered while its session is away"
        # Ten clients restarted: a new session each, connected, sending nothing yet.
        restarted = [await SessionSocket.open(n1.url, c, "w", f"R{c}") for c in clients[:10]]

        def forgotten() -> float:
            return n2.metrics().value("bushub_relayed_forgotten_total")

        await until(lambda: forgotten() >= 10, what="the replaced sessions forgotten")
        assert forgotten() == 10, "the sessions away within the window are remembered"
        if senders is not None:
            assert senders() == 71
        await until(
            lambda: forgotten() >= 80, timeout=TIMEOUT + 10, what="the rest, past the window"
        )
        assert forgotten() == 80, "the keeper, still sending, is remembered"
        if senders is not None:
            assert senders() == 1
        # Still relayed once: the keeper's resend of its newest is taken already.
        # (Its writing stopped first: read while it went on, ``sent`` could name a
        # message still on its way when counted.)
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
        newest = sent
        await keeper.send(newest, "k", "w", newest)
        await until(lambda: keeper.acked >= newest, what="the resend acknowledged")
        await until(lambda: newest in worker.seqs(), what="the newest delivered")
        await asyncio.sleep(0.3)
        assert worker.seqs().count(newest) == 1
        for sock in restarted:
            await sock.close()
    finally:
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
        await keeper.close()
        await worker.close()


async def test_a_session_over_its_rate_is_held_back_not_spun(faults: Faults) -> None:
    """A node's loop is uvloop, whose timers count whole milliseconds: a socket over its
    rate by a fraction of a message was told to wait under 1 ms, its sleep returned at
    once and the frame was tried again (and counted throttled) about 14 times over, the
    node's loop spinning at a full core (a probe: 137,646 for 10,000 messages). Each
    held message is now tried again a few times at most."""
    n1, n2 = faults.ready("n1", "n2")
    faults.start_redis()
    a = await SessionSocket.open(n1.url, "a", "b", "S1")
    b = await PlainSocket.open(n2.url, "b", "a", on_peer_lost="keep")
    sent = 6000  # three seconds at the default --rate-messages (2,000/s, burst 2,000)
    for seq in range(1, sent + 1):
        await a.send(seq, "a", "b", seq)
    await until(lambda: len(b.seqs()) == sent, what="every message, held to the rate")
    assert b.seqs() == list(range(1, sent + 1))
    throttled = n1.metrics().value("bushub_session_messages_total", event="throttled")
    assert 0 < throttled < 3 * sent, throttled
    await a.close()
    await b.close()
