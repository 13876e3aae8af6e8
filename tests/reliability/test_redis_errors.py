"""Redis is reachable but refuses writes: an ACL without ``publish``, ``maxmemory``
reached under ``noeviction``. Real redis-server and hub processes.

A node must keep serving what it can, drop and count what cannot succeed, say so
(``/readyz`` 503, ``bushub_redis_errors_total{op,kind}``, one WARNING per 10 s) and
come back by itself once Redis relents, without a restart.
"""

import asyncio
import json
import time

import pytest
from websockets.exceptions import InvalidStatus

from tests.integration.redis_cluster import RedisClusterServers
from tests.reliability.conftest import Faults
from tests.reliability.harness import FaultNode, Inbox, Samples, delta, in_thread, open_ws
from tests.support.messages import encode, task_request
from tests.support.reports import register_log
from tests.support.waiting import until

pytestmark = pytest.mark.integration

ACL_USER, ACL_PASSWORD = "hub", "hub-secret"
REFUSED_PUBLISH = "WARNING bushub.brokerhealth redis refused publish (noperm): "
REFUSED_WRITE = "WARNING bushub.brokerhealth redis refused presence_write (oom): OOM"
REFUSED_SUBSCRIBE = "WARNING bushub.brokerhealth redis refused subscribe (noperm): "


def acl_node(
    faults: Faults, node_id: str, url: str | None = None, *, unix: bool = False, **flags: object
) -> FaultNode:
    """A node that logs in to the suite's Redis as ``ACL_USER`` (or to ``url``), over
    TCP (the raw links) or, ``unix``, its unix socket (redis-py's links)."""
    if url is None:
        redis = faults.start_redis(unix_socket=unix)
        where = f"{redis.socket_path}?db=0" if unix else f"127.0.0.1:{redis.port}/0"
        url = f"{'unix' if unix else 'redis'}://{ACL_USER}:{ACL_PASSWORD}@{where}"
    node = FaultNode(node_id, faults._tmp / f"hub-{node_id}.log", url, **flags)
    register_log(faults._request, f"hub {node_id} log", node.log_path)
    faults.nodes.append(node)
    node.spawn()
    return node


def readiness(node: FaultNode) -> tuple[int | None, dict[str, object]]:
    status, body = node.get("/readyz")
    return status, json.loads(body) if body else {}


def errors(samples: Samples, op: str, kind: str) -> float:
    return samples.value("bushub_redis_errors_total", op=op, kind=kind)


async def acl_pair(
    faults: Faults,
    nodes: tuple[str, str],
    agents: tuple[str, str],
    *,
    unix: bool = False,
    **flags: object,
) -> tuple[FaultNode, FaultNode, Inbox, Inbox]:
    """Two ready nodes logged in as ``ACL_USER`` (allowed everything for now), and a
    pair of agents across them that have been told of each other."""
    redis = faults.start_redis(unix_socket=unix)
    redis.cli("ACL", "SETUSER", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all")
    n1, n2 = (acl_node(faults, node_id, unix=unix, **flags) for node_id in nodes)
    n1.wait_ready()
    n2.wait_ready()
    a = await Inbox.open(n1, agents[0], agents[1])
    b = await Inbox.open(n2, agents[1], agents[0])
    await a.announced_peer(agents[1])
    await b.announced_peer(agents[0])
    return n1, n2, a, b


async def refused_handshake(node: FaultNode, agent: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        await open_ws(node, agent)
    return refused.value.response.status_code


async def test_publish_refused_by_acl_is_dropped_and_counted_and_the_node_recovers(
    faults: Faults, figures
) -> None:
    # A small buffer: a refused head of the queue used to hold everything behind it,
    # and readers paused at half of it.
    n1, n2, a, b = await acl_pair(faults, ("n1", "n2"), ("acl-a", "acl-b"), publish_buffer=64)
    redis = faults.start_redis()
    await a.ws.send(encode(task_request("acl-a", "acl-b", 0)))
    assert await b.count(1)
    before = {n.node_id: await in_thread(n.metrics) for n in (n1, n2)}

    await in_thread(redis.cli, "ACL", "SETUSER", ACL_USER, "-publish")
    revoked_at = time.monotonic()
    sent = 300  # several times the publish buffer
    for seq in range(1, sent + 1):
        await a.ws.send(encode(task_request("acl-a", "acl-b", seq)))
    await b.ws.send(encode(task_request("acl-b", "acl-a", 1)))

    def dropped(node: FaultNode) -> dict[str, float]:
        return delta(node.metrics().dropped(), before[node.node_id].dropped())

    # Every message read, none stuck in the buffer: each refused one dropped, counted.
    assert await until(
        lambda: in_thread(lambda: dropped(n1).get("broker_refused", 0) >= sent), timeout=10
    ), f"n1 drops: {await in_thread(dropped, n1)}"
    assert await until(lambda: in_thread(lambda: bool(dropped(n2).get("broker_refused"))))
    after = await in_thread(n1.metrics)
    assert after.received() - before["n1"].received() == sent
    assert dropped(n1) == {"broker_refused": sent}
    assert errors(after, "publish", "noperm") >= sent
    # Not ready, and saying why; new sockets go elsewhere.
    status, body = await in_thread(readiness, n1)
    assert status == 503 and body["broker_up"] is True, body
    # The kind, by name: a PUBLISH refused inside the delivery script comes back as
    # Redis' ERR "the user executing the script can't run this command".
    assert "(noperm)" in str(body["broker_refuses"]), body
    down_at = time.monotonic()
    assert await refused_handshake(n1, "acl-late") == 503
    assert a.close_code is None and b.close_code is None
    assert b.seqs == [0]
    # One WARNING for hundreds of refusals: the log is rate-limited.
    assert n1.log_text().count(REFUSED_PUBLISH) == 1, n1.log_text()[-3000:]

    # The ACL is fixed at runtime: the node finds out by itself (no traffic needed).
    await in_thread(redis.cli, "ACL", "SETUSER", ACL_USER, "+publish")
    granted_at = time.monotonic()
    assert await until(lambda: in_thread(lambda: n1.get("/readyz")[0] == 200), timeout=10)
    ready_at = time.monotonic()
    assert await until(lambda: in_thread(lambda: n2.get("/readyz")[0] == 200), timeout=10)
    for seq in range(sent + 1, sent + 11):
        await a.ws.send(encode(task_request("acl-a", "acl-b", seq)))
    assert await b.count(11), f"b got {b.seqs[-5:]}"
    assert b.seqs == [0, *range(sent + 1, sent + 11)]
    late = await Inbox.open(n1, "acl-late", "acl-b")
    await late.announced_peer("acl-b")
    assert "publish works again" in n1.log_text()

    figures("s from revoke to /readyz 503 seen (n1)", down_at - revoked_at)
    figures("s from ACL fixed to /readyz 200 (n1)", ready_at - granted_at)
    figures(
        "n1 broker_refused drops / publish noperm errors",
        f"{sent} / {errors(after, 'publish', 'noperm'):.0f}",
    )
    for inbox in (a, b, late):
        await inbox.close()


@pytest.mark.parametrize("redis_link", ["tcp", "unix"])
async def test_subscribe_refused_by_acl_keeps_the_agents_there_and_the_node_recovers(
    faults: Faults, figures, redis_link: str
) -> None:
    """The node's user loses ``subscribe`` while it runs. A new agent's channel is
    refused (Redis' error names no channel): the agent is refused, the node says why and
    is not ready, the agents already there keep talking; the ACL fixed, the node
    subscribes every channel again by itself and takes new agents. Over TCP (the raw
    pub/sub link) and a unix socket (redis-py's PubSub, as for TLS), alike."""
    unix = redis_link == "unix"
    n1, _, a, b = await acl_pair(faults, ("s1", "s2"), ("sub-a", "sub-b"), unix=unix)
    redis = faults.start_redis()
    before = await in_thread(n1.metrics)

    await in_thread(redis.cli, "ACL", "SETUSER", ACL_USER, "-subscribe")
    revoked_at = time.monotonic()
    # Its claim can never come back on its refused channel: 503 after the takeover wait.
    assert await refused_handshake(n1, "sub-late") == 503
    status, body = await in_thread(readiness, n1)
    assert status == 503 and body["broker_up"] is True, body
    assert "subscribe (noperm)" in str(body["broker_refuses"]), body
    down_at = time.monotonic()
    after = await in_thread(n1.metrics)
    assert errors(after, "subscribe", "noperm") - errors(before, "subscribe", "noperm") >= 1
    assert REFUSED_SUBSCRIBE in n1.log_text()
    # The agents already there still hear each other: Redis keeps what it subscribed.
    await a.ws.send(encode(task_request("sub-a", "sub-b", 1)))
    await b.ws.send(encode(task_request("sub-b", "sub-a", 2)))
    assert await b.count(1) and await a.count(1)
    assert (a.seqs, b.seqs) == ([2], [1])
    # Still refused: the node stays unready (its probe is refused too, every 0.5 s).
    await asyncio.sleep(1.5)
    assert (await in_thread(readiness, n1))[0] == 503

    await in_thread(redis.cli, "ACL", "SETUSER", ACL_USER, "+subscribe")
    granted_at = time.monotonic()
    assert await until(lambda: in_thread(lambda: n1.get("/readyz")[0] == 200), timeout=10)
    ready_at = time.monotonic()
    assert "subscribe works again" in n1.log_text()
    later = await Inbox.open(n1, "sub-later", "sub-b")
    await later.announced_peer("sub-b")
    await b.ws.send(encode(task_request("sub-b", "sub-later", 3)))
    assert await later.count(1) and later.seqs == [3]
    assert a.close_code is None and b.close_code is None

    figures("s from revoke to /readyz 503 seen (subscribe)", down_at - revoked_at)
    figures("s from ACL fixed to /readyz 200 (subscribe)", ready_at - granted_at)
    for inbox in (a, b, later):
        await inbox.close()


async def test_redis_out_of_memory_does_not_kill_presence_and_the_node_recovers(
    faults: Faults, figures
) -> None:
    # Peer grace above the gap between two nodes' first refreshes after recovery.
    n1, n2 = faults.ready("n1", "n2", peer_grace=5.0)
    # n3 beats rarely: Redis fills up between two of its beats, so it is still ready
    # when a socket comes, and that socket's claim is what Redis refuses first.
    n3 = faults.node("n3", peer_grace=5.0, presence_ttl=60.0)
    n3.wait_ready()
    redis = faults.redis
    assert redis is not None
    a = await Inbox.open(n1, "oom-a", "oom-b")
    b = await Inbox.open(n2, "oom-b", "oom-a")
    await a.announced_peer("oom-b")
    await b.announced_peer("oom-a")
    assert sorted(await in_thread(n1.agents)) == ["oom-a", "oom-b"]

    # Fill Redis past maxmemory with one key, under noeviction.
    await in_thread(redis.cli, "CONFIG", "SET", "maxmemory-policy", "noeviction")
    await in_thread(redis.cli, "SETRANGE", "test:filler", str(16 << 20), "x")
    info = await in_thread(redis.cli, "INFO", "memory")
    used = int(next(line for line in info.splitlines() if line.startswith("used_memory:"))[12:])
    await in_thread(redis.cli, "CONFIG", "SET", "maxmemory", str(used - (8 << 20)))
    full_at = time.monotonic()

    # The next presence refresh is refused: counted, logged, readiness down.
    def refusing(node: FaultNode) -> bool:
        status, body = readiness(node)
        return status == 503 and "OOM" in str(body.get("broker_refuses"))

    assert await until(lambda: in_thread(lambda: refusing(n1) and refusing(n2)), timeout=10)
    down_at = time.monotonic()
    assert await refused_handshake(n1, "oom-late") == 503
    # Open sockets stay and still talk (PUBLISH is not refused for memory).
    await a.ws.send(encode(task_request("oom-a", "oom-b", 0)))
    assert await b.count(1)
    # A socket set up on a node that had written nothing since: its claim (listed in
    # the node's index, then a key written with the claim event) cannot be recorded,
    # so the handshake is refused with 503 before any upgrade, and the node turns
    # unready.
    assert await refused_handshake(n3, "oom-x") == 503
    assert await until(lambda: in_thread(lambda: refusing(n3)), timeout=10)

    # Held past the presence TTL: the heartbeats are refused, and the records, which
    # have no lifetime of their own, stay under the open sockets.
    await asyncio.sleep(float(str(n1.flags["presence_ttl"])) + 0.5)
    assert sorted(await in_thread(n1.agents)) == ["oom-a", "oom-b"]
    samples = {n.node_id: await in_thread(n.metrics) for n in (n1, n2, n3)}
    for node in (n1, n2):
        assert errors(samples[node.node_id], "presence_write", "oom") >= 1
        assert node.log_text().count(REFUSED_WRITE) >= 1
    assert errors(samples["n3"], "presence_write", "oom") >= 1
    refused = samples["n3"].value("bushub_connections_refused_total", reason="broker_refused")
    assert refused == 1
    assert REFUSED_WRITE in n3.log_text()

    # Memory freed: every node comes back by itself.
    await in_thread(redis.cli, "DEL", "test:filler")
    freed_at = time.monotonic()
    ready_at: dict[str, float] = {}

    def all_ready() -> bool:
        for node in (n1, n2, n3):
            if node.node_id not in ready_at and node.get("/readyz")[0] == 200:
                ready_at[node.node_id] = time.monotonic()
        return len(ready_at) == 3

    assert await until(lambda: in_thread(all_ready), timeout=10)
    assert await until(
        lambda: in_thread(lambda: sorted(n1.agents()) == ["oom-a", "oom-b"]), timeout=10
    )
    back_at = time.monotonic()
    assert a.close_code is None and b.close_code is None
    await a.ws.send(encode(task_request("oom-a", "oom-b", 1)))
    assert await b.count(2)
    assert b.seqs == [0, 1]
    c = await Inbox.open(n3, "oom-c", "oom-a")
    await c.announced_peer("oom-a")
    await c.ws.send(encode(task_request("oom-c", "oom-a", 7)))
    assert await a.count(1) and a.seqs == [7]
    for node in (n1, n2, n3):
        assert not (await in_thread(readiness, node))[1]["draining"]
        assert "presence works again" in node.log_text()
        assert "background task" not in node.log_text()

    figures("s from maxmemory set to /readyz 503 on n1 and n2", down_at - full_at)
    figures(
        "s from filler deleted to /readyz 200",
        {k: round(v - freed_at, 2) for k, v in ready_at.items()},
    )
    figures("s from filler deleted to both records back", back_at - freed_at)
    for inbox in (a, b, c):
        await inbox.close()


async def test_spublish_refused_by_acl_on_redis_cluster_is_dropped_and_recovers(
    faults: Faults, own_redis_cluster: RedisClusterServers, figures
) -> None:
    n1 = acl_node(faults, "n1", own_redis_cluster.url)
    n2 = acl_node(faults, "n2", own_redis_cluster.url)
    n1.wait_ready()
    n2.wait_ready()
    a = await Inbox.open(n1, "rc-a", "rc-b")
    b = await Inbox.open(n2, "rc-b", "rc-a")
    await a.announced_peer("rc-b")
    await b.announced_peer("rc-a")
    await a.ws.send(encode(task_request("rc-a", "rc-b", 0)))
    assert await b.count(1)
    before = await in_thread(n1.metrics)

    def acl(rule: str) -> None:
        for server in own_redis_cluster.nodes:
            server.cli("ACL", "SETUSER", "default", rule)

    await in_thread(acl, "-spublish")
    revoked_at = time.monotonic()
    sent = 50
    for seq in range(1, sent + 1):
        await a.ws.send(encode(task_request("rc-a", "rc-b", seq)))

    def refused() -> float:
        return delta(n1.metrics().dropped(), before.dropped()).get("broker_refused", 0)

    assert await until(lambda: in_thread(lambda: refused() >= sent), timeout=10), (
        f"n1 drops: {delta((await in_thread(n1.metrics)).dropped(), before.dropped())}"
    )
    counted_at = time.monotonic()
    assert await in_thread(refused) == sent
    status, body = await in_thread(readiness, n1)
    assert status == 503 and "(noperm)" in str(body["broker_refuses"]), body
    assert errors(await in_thread(n1.metrics), "publish", "noperm") >= sent
    assert REFUSED_PUBLISH in n1.log_text()

    await in_thread(acl, "+spublish")
    granted_at = time.monotonic()
    assert await until(lambda: in_thread(lambda: n1.get("/readyz")[0] == 200), timeout=10)
    ready_at = time.monotonic()
    for seq in range(sent + 1, sent + 6):
        await a.ws.send(encode(task_request("rc-a", "rc-b", seq)))
    assert await b.count(6), f"b got {b.seqs}"
    assert b.seqs == [0, *range(sent + 1, sent + 6)]
    figures("cluster: s from revoke to all 50 drops counted", counted_at - revoked_at)
    figures("cluster: s from ACL fixed to /readyz 200 (n1)", ready_at - granted_at)
    for inbox in (a, b):
        await inbox.close()
