"""Logs a person can follow: one line per socket opened and closed, and repeated
warnings printed at most once per 10 s with a count of the suppressed ones."""

import asyncio
import itertools
import re
import time
from datetime import datetime

import pytest

from tests.integration.procs import TIMEOUT
from tests.operations.conftest import OpsCluster
from tests.operations.ops import OpsNode, recv_frame, wait_for_metrics, ws_connect
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

OPEN = re.compile(r"open agent=(\S+) peer=(\S+) conn=(\S+) node=(\S+)$")
CLOSE = re.compile(r"close agent=(\S+) peer=(\S+) conn=(\S+) node=(\S+) code=(\S+) reason=(\S+)$")
RATE_LIMIT_INTERVAL = 10.0  # bushub.logs.RateLimitFilter's interval


def socket_lines(node: OpsNode) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(open lines, close lines) of the node's log, as tuples of their fields."""
    opens, closes = [], []
    for line in node.log_text().splitlines():
        if m := OPEN.search(line):
            opens.append(m.groups())
        elif m := CLOSE.search(line):
            closes.append(m.groups())
    return opens, closes


async def test_one_line_per_socket_open_and_close(ops: OpsCluster) -> None:
    (node,) = ops.nodes_ready("l1")
    a1 = await ws_connect(node.ws_url("a", peer="b", format="json", dialect="subagents"))
    b = await ws_connect(node.ws_url("b", peer="a", format="json", dialect="subagents"))
    await recv_frame(b)  # b is told a exists
    # A second socket for a takes the name over: the first is closed with 4001.
    a2 = await ws_connect(node.ws_url("a", peer="b", format="json", dialect="subagents"))
    await a1.wait_closed()
    assert a1.close_code == 4001
    # a2 leaves; after the grace period the hub closes b (on_peer_lost=close) with 4002.
    await a2.close()
    await b.wait_closed()
    assert b.close_code == 4002

    assert wait_until(lambda: len(socket_lines(node)[1]) == 3)
    opens, closes = socket_lines(node)
    assert [(agent, peer, n) for agent, peer, _, n in opens] == [
        ("a", "b", "l1"),
        ("b", "a", "l1"),
        ("a", "b", "l1"),
    ]
    a1_id, b_id, a2_id = (conn for _, _, conn, _ in opens)
    assert len({a1_id, b_id, a2_id}) == 3
    by_conn = {c[2]: (c[0], c[1], c[3], c[4], c[5]) for c in closes}
    assert len(by_conn) == len(closes) == 3  # one close line per socket
    assert by_conn[a1_id] == ("a", "b", "l1", "4001", "taken_over")
    assert by_conn[b_id] == ("b", "a", "l1", "4002", "peer_lost")
    assert by_conn[a2_id][:3] == ("a", "b", "l1")
    assert by_conn[a2_id][4] == "client_closed"
    # Nothing else per socket: uvicorn's "[accepted]" and websockets' "connection
    # open" made it four lines a socket.
    text = node.log_text()
    assert '" [accepted]' not in text and "connection open" not in text, text


async def test_close_line_of_a_client_close_carries_the_clients_code(ops: OpsCluster) -> None:
    """The close line names the close code whoever closed: a clean client close (1001)
    and a dropped connection (1006) are different things to an operator."""
    (node,) = ops.nodes_ready("l2")
    ws = await ws_connect(node.ws_url("a", format="json"))
    await ws.close(code=1001, reason="going away")
    assert wait_until(lambda: len(socket_lines(node)[1]) == 1)
    (close,) = socket_lines(node)[1]
    assert close[0] == "a" and close[5] == "client_closed"
    assert close[4] == "1001", f"close line: {close}"


async def test_close_line_of_a_dropped_connection_says_1006(ops: OpsCluster) -> None:
    """A connection lost with no close frame (a killed client, a reset) is 1006, as
    the client sees it; a close frame without a code is 1005 (uvicorn said 1005 for
    both, and the operator could not tell them apart)."""
    (node,) = ops.nodes_ready("l2")
    dropped = await ws_connect(node.ws_url("a", format="json"))
    dropped.transport.abort()
    await asyncio.sleep(0.1)  # the abort is carried out by the loop (wait_until blocks it)
    assert wait_until(lambda: len(socket_lines(node)[1]) == 1)
    no_code = await ws_connect(node.ws_url("b", format="json"))
    # A close frame without a code (masked, empty), which websockets will not send.
    no_code.transport.write(b"\x88\x80\x00\x00\x00\x00")
    await asyncio.sleep(0.1)
    assert wait_until(lambda: len(socket_lines(node)[1]) == 2), node.log_text()[-2000:]
    codes = {close[0]: close[4] for close in socket_lines(node)[1]}
    assert codes == {"a": "1006", "b": "1005"}, codes


def _log_time(line: str) -> float:
    stamp = " ".join(line.split(" ", 2)[:2])  # "2026-01-01 12:00:00,123"
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_redis_loss_warning_is_rate_limited(ops: OpsCluster) -> None:
    """Redis away for a little over 10 s: 'redis unreachable' repeats every backoff
    (<= 0.5 s) but is printed at most once per 10 s, the second time with a count of the
    suppressed ones. Readiness and the broker metrics follow the outage."""
    (node,) = ops.nodes_ready("l3")
    redis = ops.redis
    assert redis is not None
    redis.stop()
    down_at = time.monotonic()
    assert wait_until(lambda: node.get("/readyz")[0] == 503)
    s = node.metrics()
    assert s.value("bushub_redis_up") == 0
    assert "redis unreachable" in node.log_text()

    # Long enough for one rate-limit interval to pass while the warning repeats.
    deadline = down_at + RATE_LIMIT_INTERVAL + 1.5
    while time.monotonic() < deadline:
        assert node.get("/readyz")[0] == 503
        time.sleep(0.5)
    redis.start()
    node.wait_ready()
    s = wait_for_metrics(node, lambda s: s.value("bushub_redis_up") == 1, TIMEOUT)
    assert s.value("bushub_redis_up") == 1
    assert s.value("bushub_redis_reconnects_total") == 1

    lines = [ln for ln in node.log_text().splitlines() if "redis unreachable" in ln]
    assert 2 <= len(lines) <= 3, lines
    assert all(" WARNING " in ln for ln in lines)
    times = [_log_time(ln) for ln in lines]
    assert all(b - a >= RATE_LIMIT_INTERVAL - 0.05 for a, b in itertools.pairwise(times))
    assert "similar suppressed" not in lines[0]
    suppressed = re.search(r"\[(\d+) similar suppressed\]", lines[1])
    assert suppressed, lines[1]
    # Retried every 0.5 s at most (jittered up to 0.75 s) for 10 s: well over 10 retries.
    assert int(suppressed.group(1)) >= 10, lines[1]
