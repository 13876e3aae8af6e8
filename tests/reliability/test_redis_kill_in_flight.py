"""What Redis acknowledged and never wrote to the subscribing node is sent again, once.

Redis writes a PUBLISH's reply before the copies to its subscribers when both are due
in one turn of its loop, so a Redis killed in between leaves the publishing node told
"1 receiver" and the receiving node without the message. That window is microseconds
wide on a real kill; here it is held open: node 1 reaches Redis through a proxy that,
on cue, swallows everything Redis sends it (node 1's subscription and its publish
replies) while what node 1 sends still goes up; 0.3 s later Redis is SIGKILLed, the
proxy's connections are cut, and Redis comes back empty 2 s later.

Agents on both nodes exchange numbered messages at 200 msg/s each way throughout:

- b (node 2) -> a (node 1): Redis acknowledged what b sent during the 0.3 s and never
  wrote it to node 1. Node 2 sends again what it had acknowledged in the second before
  the break; node 1 delivers what it lacks and drops what it had.
- a (node 1) -> b (node 2): Redis ran node 1's publishes and wrote them to node 2, but
  node 1 never heard the replies, so it sends them again; node 2 drops the copies.

Every message arrives exactly once and in order, both ways, and the metrics say which
node sent what again and which dropped or delivered it.

The same with a session socket for a: the restarted Redis no longer has the session's
stream, node 1 puts the session back, and the delivery script lets the copies through
unnumbered for a few seconds after that; node 1 delivers those it never had.
"""

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.reliability.conftest import Faults
from tests.reliability.harness import (
    FaultNode,
    Inbox,
    Samples,
    delta,
    in_thread,
    losses,
    send_numbered,
)
from tests.support.sessionclient import PlainSocket, SessionSocket
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import until

pytestmark = pytest.mark.integration

INTERVAL = 0.005  # 200 msg/s each way
SWALLOWED = 0.3  # seconds Redis' writes to node 1 are lost before the kill
OUTAGE = 2.0


def resent(after: Samples, before: Samples) -> dict[str, float]:
    return delta(
        after.by_label("bushub_resent_total", "outcome"),
        before.by_label("bushub_resent_total", "outcome"),
    )


@asynccontextmanager
async def behind_a_proxy(faults: Faults) -> AsyncIterator[tuple[TcpProxy, FaultNode, FaultNode]]:
    """Redis; node 1 reaching it through a proxy, node 2 directly; both ready."""
    proxy = TcpProxy(faults.start_redis().port)
    await proxy.start()
    try:
        flags = {"presence_ttl": 3.0, "peer_grace": 6.0}
        n1 = faults.node("n1", redis_url=f"redis://127.0.0.1:{proxy.port}/0", **flags)
        n2 = faults.node("n2", **flags)
        for node in (n1, n2):
            await in_thread(node.wait_ready)  # the proxy runs on this loop meanwhile
        yield proxy, n1, n2
    finally:
        await proxy.close()


async def writes_lost_then_killed(faults: Faults, proxy: TcpProxy, sent: list[int]) -> int:
    """Redis' writes to node 1 are lost for SWALLOWED s, then Redis is SIGKILLed (the
    proxy's connections cut) and restarted empty OUTAGE s later. Returns how many of
    ``sent`` were sent while the writes were being lost."""
    redis = faults.redis
    assert redis is not None
    proxy.swallow_replies = True
    swallow_from = len(sent)
    await asyncio.sleep(SWALLOWED)
    redis.signal(signal.SIGKILL)
    await in_thread(redis.wait)
    proxy.cut()
    proxy.swallow_replies = False
    unwritten = len(sent) - swallow_from
    await asyncio.sleep(OUTAGE)
    await in_thread(redis.restart)
    return unwritten


async def test_what_redis_acknowledged_but_never_wrote_arrives_once(
    faults: Faults, figures
) -> None:
    a = b = None
    async with behind_a_proxy(faults) as (proxy, n1, n2):
        try:
            a = await Inbox.open(n1, "kf-a", "kf-b")
            b = await Inbox.open(n2, "kf-b", "kf-a")
            await a.announced_peer("kf-b")
            await b.announced_peer("kf-a")
            before = {n.node_id: await in_thread(n.metrics) for n in (n1, n2)}

            stop = asyncio.Event()
            sent_ab: list[int] = []
            sent_ba: list[int] = []
            senders = [
                asyncio.create_task(send_numbered(a.ws, "kf-a", "kf-b", stop, sent_ab, INTERVAL)),
                asyncio.create_task(send_numbered(b.ws, "kf-b", "kf-a", stop, sent_ba, INTERVAL)),
            ]
            await asyncio.sleep(1.0)
            unwritten = await writes_lost_then_killed(faults, proxy, sent_ba)
            got_by_a = len(a.seqs)
            # Traffic flows again, then stops; everything sent arrives.
            assert await a.wait(lambda: len(a.seqs) > got_by_a + 100, timeout=15)
            stop.set()
            await asyncio.gather(*senders)
            await b.wait(lambda: len(b.seqs) >= len(sent_ab), timeout=10)
            await a.wait(lambda: len(a.seqs) >= len(sent_ba), timeout=10)
            await asyncio.gather(a.quiet(), b.quiet())

            after = {n.node_id: await in_thread(n.metrics) for n in (n1, n2)}
            lost_ab, dup_ab, order_ab = losses(len(sent_ab), b.seqs)
            lost_ba, dup_ba, order_ba = losses(len(sent_ba), a.seqs)
            again = {node_id: resent(after[node_id], before[node_id]) for node_id in after}
            figures("messages sent a->b / b->a", f"{len(sent_ab)} / {len(sent_ba)}")
            figures("b->a sent while Redis' writes to node 1 were lost", unwritten)
            figures("bytes from Redis swallowed", proxy.swallowed)
            figures("bushub_resent_total n1 / n2", f"{again['n1']} / {again['n2']}")
            figures("lost a->b / b->a", f"{len(lost_ab)} / {len(lost_ba)}")
            figures("duplicates a->b / b->a", f"{dup_ab} / {dup_ba}")

            assert proxy.swallowed > 0 and unwritten >= 20  # the window was open
            assert not lost_ab and not lost_ba, f"lost a->b {lost_ab[:20]}, b->a {lost_ba[:20]}"
            assert dup_ab == dup_ba == 0
            assert order_ab and order_ba
            # Node 2 sent b's again; node 1 delivered those it lacked and dropped the rest.
            assert again["n2"].get("marked", 0) >= unwritten
            assert again["n1"].get("delivered", 0) >= unwritten - 5
            assert again["n1"].get("duplicate", 0) >= 1
            # Node 1 sent a's again (it heard no replies); node 2 had most of them (not
            # those that reached Redis after it died).
            assert again["n1"].get("marked", 0) >= 1
            assert again["n2"].get("duplicate", 0) >= 1
        finally:
            for inbox in (a, b):
                if inbox is not None:
                    await inbox.close()


async def test_a_session_gets_what_redis_acknowledged_and_lost_once(
    faults: Faults, figures
) -> None:
    a = b = None
    async with behind_a_proxy(faults) as (proxy, n1, n2):
        try:
            a = await SessionSocket.open(n1.url, "ks-a", "ks-b", "S-ks")
            b = await PlainSocket.open(n2.url, "ks-b", "ks-a", on_peer_lost="keep")
            before = await in_thread(n1.metrics)
            stop = asyncio.Event()
            sent: list[int] = []
            sender = asyncio.create_task(send_numbered(b.ws, "ks-b", "ks-a", stop, sent, INTERVAL))
            await asyncio.sleep(1.0)
            unwritten = await writes_lost_then_killed(faults, proxy, sent)
            got = len(a.arrivals)
            await until(lambda: len(a.arrivals) > got + 100, timeout=15, what="traffic again")
            stop.set()
            await sender
            await until(lambda: len(a.arrivals) >= len(sent), timeout=10)
            await asyncio.sleep(0.5)

            after = await in_thread(n1.metrics)
            lost, duplicates, in_order = losses(len(sent), a.arrivals)
            again = resent(after, before)
            figures("sent b->a (a: a session)", len(sent))
            figures("sent while Redis' writes to node 1 were lost", unwritten)
            figures("bushub_resent_total n1", again)
            figures("lost / duplicates", f"{len(lost)} / {duplicates}")
            figures("delivered unnumbered", len(a.announcements))

            assert unwritten >= 20 and proxy.swallowed > 0
            assert not lost, f"lost {lost[:20]}"
            assert duplicates == 0 and in_order
            assert again.get("delivered", 0) >= unwritten - 5
        finally:
            for socket in (a, b):
                if socket is not None:
                    await socket.close()
