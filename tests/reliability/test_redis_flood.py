"""Redis' pub/sub output-buffer limit: a node's subscriber that falls behind is cut off.

The limit is lowered for the test (the default is ``pubsub 32mb 8mb 60``) so that it is
cheap to approach and to pass. At an ordinary rate a burst several times the limit goes
through without the subscriber being dropped. A burst that arrives while the node is
stalled (SIGSTOP: a long pause, CPU starvation) does get it dropped, and then the node
notices at once when it runs again, resubscribes, and traffic resumes. What the metrics
can and cannot show of the messages lost in between is recorded.
"""

import asyncio
import re
import signal
import time
from datetime import datetime

import pytest

from tests.reliability.conftest import Faults
from tests.reliability.harness import FaultRedis, Inbox, delta, in_thread
from tests.support.messages import encode, task_request
from tests.support.waiting import until

pytestmark = pytest.mark.integration

ORDINARY_LIMIT = "pubsub 1mb 512kb 5"
TINY_LIMIT = "pubsub 64kb 32kb 1"
DEFAULT_LIMIT = "pubsub 32mb 8mb 60"


async def _burst(inbox: Inbox, source: str, target: str, first: int, count: int, pad: int) -> float:
    """Send ``count`` messages back to back; seconds it took."""
    started = time.monotonic()
    for seq in range(first, first + count):
        await inbox.ws.send(encode(task_request(source, target, seq, pad=pad)))
    return time.monotonic() - started


async def _peak_omem(redis: FaultRedis, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        peak = max(peak, await in_thread(redis.subscriber_omem))
    return peak


def _redis_kill_times(redis_log: str) -> list[datetime]:
    """When Redis cut a client off for its output buffer (from its log)."""
    out = []
    for line in redis_log.splitlines():
        if "overcoming of output buffer limits" in line:
            stamp = re.search(r"\d+ \w{3} \d{4} \d\d:\d\d:\d\d\.\d{3}", line)
            if stamp:
                out.append(datetime.strptime(stamp.group(0), "%d %b %Y %H:%M:%S.%f"))
    return out


def _hub_times(hub_log: str, needle: str) -> list[datetime]:
    out = []
    for line in hub_log.splitlines():
        if needle in line:
            out.append(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f"))
    return out


async def test_ordinary_burst_keeps_the_subscriber_and_a_flood_past_the_limit_recovers(
    faults: Faults, figures
) -> None:
    n1, n2 = faults.ready("n1", "n2", rate_messages=0, rate_bytes=0)
    redis = faults.redis
    assert redis is not None
    a = await Inbox.open(n1, "fl-a", "fl-b")
    b = await Inbox.open(n2, "fl-b", "fl-a")
    await b.announced_peer("fl-a")

    # 1. An ordinary burst: 5 MB in 1 kB messages, five times the hard limit.
    redis.cli("CONFIG", "SET", "client-output-buffer-limit", ORDINARY_LIMIT)
    before = {n.node_id: await in_thread(n.metrics) for n in (n1, n2)}
    stop = asyncio.Event()
    poll = asyncio.create_task(_peak_omem(redis, stop))
    count = 5000
    took = await _burst(a, "fl-a", "fl-b", 0, count, pad=1000)
    assert await b.count(count), f"{len(b.seqs)} of {count} arrived"
    stop.set()
    peak = await poll
    after = {n.node_id: await in_thread(n.metrics) for n in (n1, n2)}
    figures("ordinary burst: messages x bytes", f"{count} x ~1.1 kB in {took:.2f}s")
    figures("ordinary burst: peak subscriber omem (bytes)", peak)
    assert b.seqs == list(range(count))
    for node_id in ("n1", "n2"):
        assert after[node_id].value("bushub_redis_reconnects_total") == before[node_id].value(
            "bushub_redis_reconnects_total"
        ), f"{node_id} lost its subscriber on an ordinary burst"
        assert delta(after[node_id].dropped(), before[node_id].dropped()) == {}
    assert "overcoming of output buffer limits" not in redis.log_path.read_text()

    # 2. A flood past the limit while node 2 is stalled (SIGSTOP for the length of the
    #    burst, as a long GC pause or CPU starvation would): Redis buffers node 2's
    #    share, passes the 64 kB limit and cuts the subscriber off.
    redis.cli("CONFIG", "SET", "client-output-buffer-limit", TINY_LIMIT)
    before = after
    first, flood = count, 2000
    n2.signal(signal.SIGSTOP)
    try:
        took = await _burst(a, "fl-a", "fl-b", first, flood, pad=16_000)
        await until(lambda: "output buffer limits" in redis.log_path.read_text(), timeout=5)
    finally:
        n2.signal(signal.SIGCONT)
        resumed = datetime.now()
    assert await until(
        lambda: in_thread(lambda: n2.metrics().value("bushub_redis_reconnects_total") > 0), 10
    )
    await b.quiet(1.0)
    n2.wait_ready()
    redis.cli("CONFIG", "SET", "client-output-buffer-limit", DEFAULT_LIMIT)
    after = {n.node_id: await in_thread(n.metrics) for n in (n1, n2)}
    dropped = {k: delta(after[k].dropped(), before[k].dropped()) for k in after}
    got = [s for s in b.seqs if first <= s < first + flood]
    counted = sum(sum(d.values()) for d in dropped.values())
    reconnects = after["n2"].value("bushub_redis_reconnects_total") - before["n2"].value(
        "bushub_redis_reconnects_total"
    )
    cut = _redis_kill_times(redis.log_path.read_text())
    noticed = _hub_times(n2.log_text(), "redis unreachable")
    back = _hub_times(n2.log_text(), "redis reachable again")
    lost = flood - len(got) - counted
    figures("flood: messages x bytes, node 2 stopped", f"{flood} x ~16 kB in {took:.2f}s")
    figures("flood: subscriber cut off by Redis (times)", len(cut))
    figures("flood: bushub_redis_reconnects_total n2 +", reconnects)
    figures("flood: delivered", len(got))
    figures("flood: drops counted", dropped)
    figures("flood: lost and not counted (sent - delivered - counted)", lost)
    if noticed:
        figures(
            "flood: ms from SIGCONT to n2 noticing", (noticed[0] - resumed).total_seconds() * 1e3
        )
    if noticed and back:
        figures(
            "flood: ms from noticing to resubscribed", (back[0] - noticed[0]).total_seconds() * 1e3
        )

    assert cut, "Redis never cut the subscriber off"
    assert reconnects >= 1 and len(noticed) >= 1 and len(back) >= 1
    # Noticed at once, once it has read what its socket still held (log timestamps:
    # ms resolution, one clock).
    assert (noticed[0] - resumed).total_seconds() < 1.0
    assert (back[0] - noticed[0]).total_seconds() < 1.0
    # Nothing was delivered twice or out of order; what was lost is at most the flood.
    assert got == sorted(set(got))
    assert lost >= 0

    # 3. Traffic resumes: a paced tail all arrives, in order.
    tail_first = first + flood
    for seq in range(tail_first, tail_first + 100):
        await a.ws.send(encode(task_request("fl-a", "fl-b", seq)))
        await asyncio.sleep(0.002)
    assert await b.wait(lambda: b.seqs[-1:] == [tail_first + 99], 10)
    assert [s for s in b.seqs if s >= tail_first] == list(range(tail_first, tail_first + 100))
    assert not b.closed.is_set() and not a.closed.is_set()
    await a.close()
    await b.close()
