"""A client that stops reading is closed with 4008; the rest of the node is unaffected.

The slow reader is a hand-written WebSocket client with an 8 kB kernel receive buffer
that never reads, paired with a flooder sending it 4 kB messages at the default
per-socket rate limit (2,000 msg/s). A healthy pair on the same node ping-pongs
numbered messages throughout; its round-trip times before and during the flood are
compared.
"""

import asyncio
import time

import pytest

from tests.reliability.conftest import Faults
from tests.reliability.harness import FaultNode, Inbox, RawSocket, in_thread, percentile
from tests.support.messages import encode, task_request
from tests.support.waiting import until

# Bounds time under faults or load: run alone (see the Makefile).
pytestmark = [pytest.mark.integration, pytest.mark.serial]

QUEUE_BYTES = 262_144
FLAGS = {"queue_bytes": QUEUE_BYTES, "max_message_bytes": 65_536}
PAD = 4000
RATE = 2000  # messages/s: the flooder stays within the default per-socket limit


async def _round_trips(h1: Inbox, seq: int, until_done: "asyncio.Event | int") -> list[float]:
    """Sequential h1 -> h2 -> h1 round trips; RTTs in seconds."""
    rtts: list[float] = []
    while (len(rtts) < until_done) if isinstance(until_done, int) else not until_done.is_set():
        sent = time.monotonic()
        await h1.ws.send(encode(task_request("rtt-h1", "rtt-h2", seq)))
        assert await h1.wait(lambda s=seq: bool(h1.seqs) and h1.seqs[-1] == s, 5), seq
        rtts.append(h1.times[-1] - sent)
        seq += 1
        await asyncio.sleep(0.002)
    return rtts


async def _flood(flooder: Inbox, target: str, stop: asyncio.Event) -> int:
    """Messages to ``target`` at RATE per second until ``stop``; how many were sent."""
    seq = 0
    started = time.monotonic()
    while not stop.is_set():
        await flooder.ws.send(encode(task_request(flooder.name, target, seq, pad=PAD)))
        seq += 1
        if seq % 20 == 0:
            await asyncio.sleep(max(0.0, started + seq / RATE - time.monotonic()))
    return seq


def _closed(node: FaultNode, reason: str) -> float:
    return node.metrics().by_label("bushub_connections_closed_total", "reason").get(reason, 0.0)


async def _overflowed(node: FaultNode) -> bool:
    dropped = (await in_thread(node.metrics)).dropped()
    return dropped.get("slow_consumer", 0) > 0


async def test_slow_reader_is_closed_and_a_healthy_pair_keeps_its_latency(
    faults: Faults, figures
) -> None:
    [node] = faults.ready("n1", **FLAGS)
    h1 = await Inbox.open(node, "rtt-h1", "rtt-h2")
    h2 = await Inbox.open(node, "rtt-h2", "rtt-h1", echo_to="rtt-h1")
    await h1.announced_peer("rtt-h2")
    await h2.announced_peer("rtt-h1")
    flooder = await Inbox.open(node, "flooder", "slow", on_peer_lost="keep")
    slow = await RawSocket.open(node, "slow", rcvbuf=8192, peer="flooder")
    await _round_trips(h1, 0, 50)  # warm-up
    before = await _round_trips(h1, 1000, 300)

    stop = asyncio.Event()
    flood = asyncio.create_task(_flood(flooder, "slow", stop))
    measuring = asyncio.Event()
    during_task = asyncio.create_task(_round_trips(h1, 10_000, measuring))
    started = time.monotonic()
    assert await until(lambda: _overflowed(node), timeout=20), "the slow reader never overflowed"
    overflow_s = time.monotonic() - started
    await asyncio.sleep(0.5)
    # The reader comes back: after its backlog it finds the close frame, 4008.
    code = await slow.close_code(timeout=10)
    await slow.aclose()
    measuring.set()
    during = await during_task
    stop.set()
    flooded = await flood
    assert await until(lambda: in_thread(lambda: _closed(node, "slow_consumer") == 1), 10)
    metrics = await in_thread(node.metrics)

    p99_before, p99_during = percentile(before, 0.99), percentile(during, 0.99)
    figures("s of flood until the queue passed --queue-bytes (256 kB)", overflow_s)
    figures("flood messages (4 kB) sent", flooded)
    figures(
        "healthy RTT p50 / p99 before (ms)",
        f"{percentile(before, 0.5) * 1e3:.2f} / {p99_before * 1e3:.2f} ({len(before)} samples)",
    )
    figures(
        "healthy RTT p50 / p99 during (ms)",
        f"{percentile(during, 0.5) * 1e3:.2f} / {p99_during * 1e3:.2f} ({len(during)} samples)",
    )
    figures("slow reader close code", code)
    figures("drops", {k: v for k, v in metrics.dropped().items() if v})

    assert code == 4008
    assert metrics.by_label("bushub_connections_closed_total", "reason")["slow_consumer"] == 1
    assert (
        "agent=slow peer=flooder" in node.log_text() and "reason=slow_consumer" in node.log_text()
    )
    assert len(during) >= 50
    assert p99_during < max(10 * p99_before, 0.020), (p99_before, p99_during)
    assert p99_during < 0.2
    assert not h1.closed.is_set() and not h2.closed.is_set() and not flooder.closed.is_set()
    for inbox in (h1, h2, flooder):
        await inbox.close()


async def test_reader_stalled_past_the_takeover_timeout_still_gets_4008(
    faults: Faults, figures
) -> None:
    """A consumer that stays stalled for longer than --takeover-timeout (2 s) after
    its queue overflowed must still find the 4008 close frame after its backlog when it
    reads again, and the node should let go of the socket promptly."""
    [node] = faults.ready("n1", **FLAGS)
    flooder = await Inbox.open(node, "flooder", "stalled", on_peer_lost="keep")
    stalled = await RawSocket.open(node, "stalled", rcvbuf=8192, peer="flooder")
    stop = asyncio.Event()
    flood = asyncio.create_task(_flood(flooder, "stalled", stop))
    assert await until(lambda: _overflowed(node), timeout=20)
    overflowed = time.monotonic()
    stop.set()
    await flood
    assert await until(lambda: node.metrics().value("bushub_connections") == 1, timeout=10)
    released_s = time.monotonic() - overflowed
    await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - overflowed)))
    code = await stalled.close_code(timeout=10)
    await stalled.aclose()
    figures("s from overflow until the node released the socket", released_s)
    figures("close code seen by a reader stalled 3 s", code)
    assert code == 4008, f"the stalled reader's socket ended with {code} (None: no close frame)"
    await flooder.close()
