"""A node is SIGKILLed while it holds an agent.

Its presence records are not withdrawn (it gets no chance): they expire. The documented
bound (README, "Running a cluster") is that the agents disappear within presence-ttl plus
one refresh, and that peers with ``on_peer_lost=close`` are closed with 4002 a further
peer-grace later. Peers with ``on_peer_lost=keep`` stay open; messages sent to the dead
agent are counted as undeliverable.
"""

import signal
import time

import pytest

from tests.reliability.conftest import Faults
from tests.reliability.harness import Inbox, delta, in_thread
from tests.support.messages import encode, task_request
from tests.support.waiting import until

pytestmark = pytest.mark.integration

TTL = 2.0
GRACE = 1.0
REFRESH = TTL / 3


async def test_crashed_nodes_agents_leave_presence_within_the_bound(
    faults: Faults, figures
) -> None:
    n1, n2 = faults.ready("n1", "n2", presence_ttl=TTL, peer_grace=GRACE)
    redis = faults.redis
    assert redis is not None
    worker = await Inbox.open(n1, "crash-w", "crash-c")
    closer = await Inbox.open(n2, "crash-c", "crash-w", on_peer_lost="close")
    keeper = await Inbox.open(n2, "crash-k", "crash-w", on_peer_lost="keep")
    await closer.announced_peer("crash-w")
    await keeper.announced_peer("crash-w")
    assert "crash-w" in await in_thread(n2.agents)
    before = await in_thread(n2.metrics)

    n1.signal(signal.SIGKILL)
    await in_thread(n1.wait)
    killed = time.monotonic()

    gone_at: list[float] = []

    def gone() -> bool:
        if "crash-w" not in n2.agents():
            gone_at.append(time.monotonic())
            return True
        return False

    assert await until(lambda: in_thread(gone), timeout=TTL + 3, step=0.05)
    assert await closer.wait(closer.closed.is_set, timeout=TTL + REFRESH + GRACE + 3)
    closed_at = time.monotonic()
    # A message to the dead agent now has no subscriber anywhere: counted.
    await keeper.ws.send(encode(task_request("crash-k", "crash-w", 0)))
    assert await until(
        lambda: in_thread(lambda: n2.metrics().dropped()["undeliverable"] > 0), timeout=5
    )
    after = await in_thread(n2.metrics)

    figures("s from SIGKILL to gone from /agents", gone_at[0] - killed)
    figures("bound: presence-ttl + one refresh", TTL + REFRESH)
    figures("s from SIGKILL to 4002 on the peer", closed_at - killed)
    figures("bound: presence-ttl + refresh + peer-grace", TTL + REFRESH + GRACE)
    figures(
        "closed reasons on n2",
        delta(
            after.by_label("bushub_connections_closed_total", "reason"),
            before.by_label("bushub_connections_closed_total", "reason"),
        ),
    )

    assert gone_at[0] - killed <= TTL + REFRESH + 0.5
    assert closer.close_code == 4002
    # Never before the record could have expired plus the grace period.
    assert closed_at - killed >= GRACE
    assert closed_at - killed <= TTL + REFRESH + GRACE + 1.0
    assert not keeper.closed.is_set()
    assert redis.keys("bushub:agent:{crash-w}") == []
    assert redis.numsub("bushub:msg:{crash-w}") == {"bushub:msg:{crash-w}": 0}
    closed = after.by_label("bushub_connections_closed_total", "reason")
    assert (
        closed["peer_lost"]
        - before.by_label("bushub_connections_closed_total", "reason")["peer_lost"]
        == 1
    )
    await keeper.close()
    await worker.close()


async def test_an_agent_of_a_killed_node_is_taken_over_elsewhere_without_waiting(
    faults: Faults, figures
) -> None:
    """Its node is not known dead yet (its heartbeat has not lapsed), but Redis dropped
    that node's subscriptions: the claim elsewhere does not wait out the takeover
    timeout for a release that cannot come."""
    takeover = 3.0
    n1, n2 = faults.ready("n1", "n2", presence_ttl=30.0, takeover_timeout=takeover)
    worker = await Inbox.open(n1, "moved-w", "moved-c")
    client = await Inbox.open(n2, "moved-c", "moved-w", on_peer_lost="keep")
    await client.announced_peer("moved-w")
    n1.signal(signal.SIGKILL)
    await in_thread(n1.wait)
    started = time.monotonic()
    again = await Inbox.open(n2, "moved-w", "moved-c")
    took = time.monotonic() - started
    figures("s to re-open the agent on n2 after its node was killed", took)
    assert took < takeover / 2
    assert "did not confirm" not in n2.log_text()
    await again.ws.send(encode(task_request("moved-w", "moved-c", 0)))
    assert await client.count(1)
    for inbox in (again, client, worker):
        await inbox.close()
