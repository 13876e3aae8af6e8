"""SIGTERM drains a node under traffic; a second SIGTERM ends a slow drain at once;
frames reaching a draining socket are delivered or counted.

Node 1 is always the one signalled. In the main test agent ``x`` on node 1 and agent
``y`` on node 2 are paired and stream numbered task requests to each other while node 1
drains; ``z`` on node 1 has a backlog that keeps the drain going until the test lets it
read. "Slow" drains use raw sockets that never read, with a backlog queued in node 1.
"""

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.procs import TIMEOUT
from tests.operations.conftest import OpsCluster
from tests.operations.ops import (
    ADMIN_TOKEN,
    DRAIN_TIMEOUT,
    PEER_GRACE,
    OpsNode,
    Samples,
    raw_socket,
    read_until_close,
    recv_frame,
    wait_for_metrics,
    ws_connect,
)
from tests.support.messages import decode, encode, task_request
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SEND_INTERVAL = 0.002  # each streamer sends ~400 messages/s
EXIT_SLACK = 1.5  # seconds allowed past --drain-timeout for process exit
BACKLOG = 400  # frames queued for z (which does not read yet) before the signal
BACKLOG_FRAME = 30_000  # bytes of padding in each: 12 MB, more than socket buffers hold
SLOW_DRAIN_TIMEOUT = 20.0
SECOND_SIGNAL_EXIT = 3.0  # seconds from the second SIGTERM to exit
BURST_SECONDS = 0.3  # x sends without yielding this long right after the signal
BURST_PAUSE = 0.0005  # seconds between those sends (a blocking sleep)


def listed_agents(node: OpsNode) -> set[str]:
    return {row["agent"] for row in node.get_json("/agents", ADMIN_TOKEN)["agents"]}


class Streamer:
    """Sends numbered task requests on one socket and records what it reads back.

    ``accepted`` holds the sequence numbers whose ``send()`` returned without raising,
    i.e. frames the client library wrote to the socket before it processed the hub's
    close frame (after that, websockets refuses to send).
    """

    def __init__(self, ws: ClientConnection, source: str, target: str) -> None:
        self.ws = ws
        self.source = source
        self.target = target
        self.accepted: list[int] = []
        self.received: list[int] = []
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self.stop = asyncio.Event()
        # Called once from the send loop, just before its next send (sends the signal);
        # then the loop keeps sending, never yielding, for BURST_SECONDS.
        self.trigger: Callable[[], None] | None = None
        self.sent_before_trigger = 0

    async def send_loop(self) -> None:
        i = 0
        burst_until = 0.0
        with contextlib.suppress(ConnectionClosed):
            while not self.stop.is_set():
                if self.trigger is not None:
                    self.trigger()
                    self.trigger = None
                    self.sent_before_trigger = i
                    burst_until = time.monotonic() + BURST_SECONDS
                await self.ws.send(encode(task_request(self.source, self.target, i)))
                self.accepted.append(i)
                i += 1
                if time.monotonic() < burst_until:
                    time.sleep(BURST_PAUSE)  # noqa: ASYNC251 - blocks the loop on purpose
                else:
                    await asyncio.sleep(SEND_INTERVAL)

    async def read_loop(self) -> None:
        try:
            async for frame in self.ws:
                message = decode(frame)
                if message["__type__"].endswith("BusTaskRequestMessage"):
                    self.received.append(message["__data__"]["payload"]["seq"])
        except ConnectionClosed:
            pass
        self.closed_at = time.monotonic()
        self.close_code = self.ws.close_code


async def poll_readyz(node: OpsNode, log: list[tuple[float, float, int | str]]) -> None:
    """Record (sent, answered, status) of /readyz every few ms until the node is gone.

    The times are taken in the polling thread, so they stay exact while the test's
    event loop is busy."""

    def once() -> tuple[float, float, int | str]:
        sent = time.monotonic()
        try:
            status: int | str = node.get("/readyz")[0]
        except OSError as exc:
            status = type(exc).__name__
        return sent, time.monotonic(), status

    while True:
        entry = await asyncio.to_thread(once)
        log.append(entry)
        if not isinstance(entry[2], int):
            return
        await asyncio.sleep(0.005)


async def try_new_socket(node: OpsNode) -> str:
    """Open a socket on a draining node: 'http-503', 'connection-refused' or 'accepted'
    ('+retry-after' when the refusal asks the client to wait: a draining node must not,
    the next attempt through a load balancer reaches another node)."""
    try:
        ws = await ws_connect(node.ws_url("late", peer="y", format="json"))
    except InvalidStatus as exc:
        wait = "+retry-after" if exc.response.headers.get("Retry-After") else ""
        return f"http-{exc.response.status_code}{wait}"
    except OSError:
        return "connection-refused"
    await ws.close()
    return "accepted"


async def test_sigterm_drains_a_node_under_traffic(ops: OpsCluster) -> None:
    # No rate limits: x's burst after the signal must not be dropped as rate_limited.
    flags = {"--queue-bytes": str(64 << 20), "--rate-bytes": "0", "--rate-messages": "0"}
    n1, n2 = ops.nodes_ready("d1", "d2", flags=flags)
    x_ws = await ws_connect(
        n1.ws_url("x", peer="y", format="json", dialect="subagents", on_peer_lost="keep")
    )
    y_ws = await ws_connect(
        n2.ws_url("y", peer="x", format="json", dialect="subagents", on_peer_lost="close")
    )
    # Each side is told its peer exists before the streams start.
    assert decode(await recv_frame(y_ws))["__type__"].endswith("BusAgentRegistryMessage")
    assert decode(await recv_frame(x_ws))["__type__"].endswith("BusAgentRegistryMessage")

    # z (node 1) has a 12 MB backlog queued for it and does not read until the test
    # says so: node 1's drain has something to flush, and z's close waits for it.
    z_sock = await asyncio.to_thread(raw_socket, n1, "z")
    f_ws = await ws_connect(n2.ws_url("f", format="json", dialect="subagents"))
    await _fill(f_ws, "z", BACKLOG, BACKLOG_FRAME)
    assert await asyncio.to_thread(wait_until, lambda: listed_agents(n2) == {"f", "x", "y", "z"})
    await asyncio.sleep(0.3)  # the backlog reaches node 1's queue for z

    x = Streamer(x_ws, "x", "y")  # on the draining node
    y = Streamer(y_ws, "y", "x")  # on the surviving node
    tasks = [asyncio.create_task(c) for c in (x.send_loop(), x.read_loop())]
    tasks += [asyncio.create_task(c) for c in (y.send_loop(), y.read_loop())]
    await asyncio.sleep(0.5)  # traffic flows both ways
    assert x.received and y.received

    readyz: list[tuple[float, float, int | str]] = []
    poller = asyncio.create_task(poll_readyz(n1, readyz))
    await asyncio.sleep(0.05)
    assert readyz and all(status == 200 for _, _, status in readyz)

    # x's send loop sends SIGTERM to node 1 itself, then keeps sending for BURST_SECONDS
    # without yielding to its event loop (so x cannot see a close meanwhile): frames keep
    # arriving while the node reacts to the signal.
    signalled_at: list[float] = []

    def sigterm() -> None:
        signalled_at.append(time.monotonic())
        n1.signal(signal.SIGTERM)

    x.trigger = sigterm
    await asyncio.to_thread(wait_until, lambda: bool(signalled_at))
    signalled = signalled_at[0]

    # New sockets are refused while the node drains (z's unread backlog keeps it
    # draining until the test lets z read).
    assert await asyncio.to_thread(
        wait_until, lambda: any(s == 503 for _, _, s in readyz) or not n1.alive
    )
    late_socket = await try_new_socket(n1)
    assert late_socket in ("http-503", "connection-refused"), late_socket

    # The draining node closes x with 1012 (service restart).
    await asyncio.wait_for(tasks[1], TIMEOUT)
    await asyncio.wait_for(tasks[0], TIMEOUT)
    assert x.close_code == 1012
    assert x.closed_at is not None
    # While z keeps node 1 draining: how many of x's frames node 1 counted as received.
    await asyncio.sleep(0.1)
    s1 = n1.metrics()
    read_by_node1 = s1.value("bushub_messages_received_total", format="json")
    # Nothing of x's was dropped; y's frames for x that came too late are counted.
    drops_n1 = s1.nonzero("bushub_messages_dropped_total", "reason")
    assert set(drops_n1) <= {"no_local_agent", "closing"}, drops_n1
    assert n1.alive and s1.value("bushub_connections") == 1  # z, still being flushed

    # z gets everything queued for it, then 1012.
    z_released = time.monotonic()
    z_frames, z_code = await asyncio.to_thread(read_until_close, z_sock)
    z_closed_at = time.monotonic()
    z_sock.close()
    assert z_code == 1012
    z_seqs = [decode(f)["__data__"]["payload"]["seq"] for f in z_frames]
    assert counts_up(z_seqs) and len(z_seqs) == BACKLOG, describe(z_seqs)

    # The process exits with 0 within --drain-timeout.
    code = await asyncio.to_thread(n1.wait, DRAIN_TIMEOUT + EXIT_SLACK + 1)
    exited_after = time.monotonic() - signalled
    await asyncio.wait_for(poller, TIMEOUT)
    assert code == 0
    assert exited_after < DRAIN_TIMEOUT + EXIT_SLACK, exited_after

    # Readiness: 200 until the signal; a 503 answer arrived while z's socket was still
    # open (it cannot close before z reads its backlog); no /readyz sent after x's socket
    # closed was answered 200.
    first_503 = next(answered for _, answered, status in readyz if status == 503)
    assert signalled < first_503 < z_released < z_closed_at
    assert all(status != 200 for sent, _, status in readyz if sent > x.closed_at)
    assert all(status == 200 for _, answered, status in readyz if answered < signalled)

    # x left presence: y (on_peer_lost=close) is closed with 4002 after the grace period,
    # and /agents on the surviving node no longer lists x or z.
    await asyncio.wait_for(tasks[3], TIMEOUT)
    assert y.close_code == 4002
    assert y.closed_at is not None and y.closed_at - x.closed_at >= PEER_GRACE * 0.9
    y.stop.set()
    await asyncio.wait_for(tasks[2], TIMEOUT)
    assert listed_agents(n2) == {"f"}

    # The other direction: what reached x is a gap-free, in-order prefix of y's stream.
    assert counts_up(x.received), describe(x.received)
    log = n1.log_text()
    assert "close agent=x peer=y" in log and "code=1012 reason=draining" in log
    s2 = wait_for_metrics(n2, lambda s: s.value("bushub_connections") == 1)
    assert s2.value("bushub_connections_closed_total", reason="peer_lost") == 1
    await f_ws.close()
    print(
        f"drain: first 503 after {first_503 - signalled:.3f}s, x closed after "
        f"{x.closed_at - signalled:.3f}s, exit after {exited_after:.3f}s, late socket: "
        f"{late_socket}, x sent {len(x.accepted)} ({x.sent_before_trigger} before "
        f"SIGTERM), node 1 read {read_by_node1:.0f}, y got {len(y.received)}"
    )

    # Nothing node 1 accepted from x was lost. "Accepted" is the contract's word
    # (docs/protocol.md, Metrics): frames the node read and counted as received, which include
    # every frame x sent before the signal. Frames x wrote after the node's Close
    # was on the wire are discarded by the WebSocket layer (RFC 6455 §5.5.1: after
    # sending Close an endpoint need not process data); x learns of the close from
    # the 1012 itself. The count of those is printed, not asserted.
    assert counts_up(x.accepted)
    accepted_before_signal = x.sent_before_trigger
    assert accepted_before_signal > 0
    assert counts_up(y.received), describe(y.received)
    assert len(y.received) >= accepted_before_signal, describe(y.received)
    assert len(y.received) == read_by_node1, (describe(y.received), read_by_node1)
    print(f"drain: {len(x.accepted) - len(y.received)} frames written after the close crossed")


def counts_up(seqs: list[int]) -> bool:
    """True if ``seqs`` is 0, 1, 2, ... (in order, no gaps, no repeats)."""
    return all(seq == i for i, seq in enumerate(seqs))


def describe(seqs: list[int]) -> str:
    """A short account of where a sequence stops counting up (lists can be long)."""
    for i, seq in enumerate(seqs):
        if seq != i:
            return f"{len(seqs)} seqs; at index {i} got {seq}: {seqs[max(0, i - 3) : i + 3]}"
    return f"{len(seqs)} seqs, 0..{len(seqs) - 1}"


async def _fill(sender: ClientConnection, target: str, count: int, size: int) -> None:
    """f sends ``count`` task requests of ``size`` bytes of padding to ``target``."""
    pad = "p" * size
    for i in range(count):
        tree: dict[str, Any] = task_request("f", target, i)
        tree["__data__"]["payload"]["pad"] = pad
        await sender.send(encode(tree))


async def _slow_drain(
    ops: OpsCluster, agents: tuple[str, ...] = ("z",), drain_timeout: float = SLOW_DRAIN_TIMEOUT
) -> tuple[OpsNode, OpsNode, ClientConnection, dict[str, socket.socket]]:
    """Two nodes; each of ``agents`` holds a raw socket on node 1 that reads nothing, with
    a 12 MB backlog queued for it by f on node 2, so node 1's drain cannot finish on its
    own. Returns (node 1, node 2, f's socket, the raw sockets by agent)."""
    flags = {"--drain-timeout": str(drain_timeout), "--queue-bytes": str(64 << 20)}
    n1, n2 = ops.nodes_ready("s1", "s2", flags={**flags, "--rate-bytes": "0"})
    # Raw sockets with a small, fixed kernel receive buffer: most of the backlog stays
    # queued in node 1 (loopback receive buffers otherwise grow to tens of MB).
    socks = {agent: await asyncio.to_thread(raw_socket, n1, agent) for agent in agents}
    f_ws = await ws_connect(n2.ws_url("f", format="json", dialect="subagents"))
    for agent in agents:
        await _fill(f_ws, agent, BACKLOG, BACKLOG_FRAME)

    def delivered(s: Samples) -> float:
        return s.value("bushub_messages_delivered_total", format="json")

    # Node 1 writes what the sockets take, then stalls with the rest queued.
    wait_for_metrics(n1, lambda s: delivered(s) > 0)
    await asyncio.sleep(0.3)
    s1 = n1.metrics()
    assert 0 < delivered(s1) < len(agents) * BACKLOG / 2, delivered(s1)
    return n1, n2, f_ws, socks


async def test_second_sigterm_ends_a_slow_drain_at_once(ops: OpsCluster) -> None:
    n1, _, _, socks = await _slow_drain(ops)
    n1.signal(signal.SIGTERM)
    assert await asyncio.to_thread(wait_until, lambda: n1.get("/readyz")[0] == 503)
    # The drain cannot finish: z reads nothing. It is still going a second later.
    await asyncio.sleep(1.0)
    assert n1.alive
    assert n1.get("/readyz")[0] == 503

    second = time.monotonic()
    n1.signal(signal.SIGTERM)
    code = await asyncio.to_thread(n1.wait, SLOW_DRAIN_TIMEOUT)
    took = time.monotonic() - second
    socks["z"].close()
    print(f"second SIGTERM: exit code {code} after {took:.3f}s")
    assert took < SECOND_SIGNAL_EXIT, took
    assert "signal received: draining" in n1.log_text()


async def test_a_drain_a_stuck_reader_cannot_finish_ends_at_the_drain_timeout(
    ops: OpsCluster,
) -> None:
    # z reads nothing: the drain gives up at --drain-timeout and the node exits then,
    # not after waiting as long again in uvicorn's own shutdown.
    drain_timeout = 3.0
    n1, _, _, socks = await _slow_drain(ops, drain_timeout=drain_timeout)
    signalled = time.monotonic()
    n1.signal(signal.SIGTERM)
    code = await asyncio.to_thread(n1.wait, 4 * drain_timeout)
    took = time.monotonic() - signalled
    socks["z"].close()
    print(f"drain with a stuck reader: exit code {code} after {took:.3f}s")
    assert code == 0
    assert took < drain_timeout + EXIT_SLACK + 1.0, took  # before: twice the drain
    assert "drain timeout: 1 sockets still open" in n1.log_text()


async def test_frames_for_a_draining_socket_are_delivered_or_counted(ops: OpsCluster) -> None:
    """Delivery is at most once and every loss has a counter with a reason
    (docs/protocol.md, Routing).

    While node 1 drains, z's socket is closing (1012 requested, its backlog still being
    flushed). Frames f sends to z meanwhile must be delivered to z or counted as dropped
    on node 1. z2 never reads, so node 1 stays up (draining) for the final scrape.
    """
    n1, n2, f_ws, socks = await _slow_drain(ops, ("z", "z2"))
    n1.signal(signal.SIGTERM)
    assert await asyncio.to_thread(wait_until, lambda: n1.get("/readyz")[0] == 503)
    before = n1.metrics()

    late = 20
    for i in range(late):
        await f_ws.send(encode(task_request("f", "z", BACKLOG + i)))
    s2 = wait_for_metrics(
        n2,
        lambda s: s.value("bushub_messages_received_total", format="json") == 2 * BACKLOG + late,
    )
    assert s2.value("bushub_messages_received_total", format="json") == 2 * BACKLOG + late
    assert s2.nonzero("bushub_messages_dropped_total", "reason") == {}  # all published

    # z now reads everything node 1 sends it, up to the 1012 close.
    frames, code = await asyncio.to_thread(read_until_close, socks["z"])
    socks["z"].close()
    assert code == 1012
    seqs = [decode(f)["__data__"]["payload"]["seq"] for f in frames]
    s1 = wait_for_metrics(n1, lambda s: s.value("bushub_connections") == 1)
    assert n1.alive and s1.value("bushub_connections") == 1  # z2: still draining
    dropped = {
        reason: value - before.get("bushub_messages_dropped_total", reason=reason)
        for reason, value in s1.by_label("bushub_messages_dropped_total", "reason").items()
    }
    dropped = {reason: value for reason, value in dropped.items() if value}
    print(f"late frames: z got {len(seqs)} of {BACKLOG + late}; node 1 dropped {dropped}")
    assert counts_up(seqs), describe(seqs)  # in order, no gaps
    assert len(seqs) >= BACKLOG, describe(seqs)  # everything queued before the signal
    assert len(seqs) + sum(dropped.values()) == BACKLOG + late, (
        f"{BACKLOG + late} frames reached node 1 for z; z got {len(seqs)}, node 1 counted "
        f"{dropped} dropped: {BACKLOG + late - len(seqs) - sum(dropped.values()):.0f} "
        "vanished uncounted"
    )
