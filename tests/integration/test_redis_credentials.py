"""Hub nodes on a locked Redis: ``requirepass``, and an ACL user holding only the
permissions the hub needs (`HUB_ACL_RULES`), on one Redis and on a Redis Cluster.

The credentials travel in ``--redis-url`` only. Every connection a node opens must
log in with them: redis-py's pools, the raw publish and pub/sub connections, the
cluster's per-shard pub/sub connections and the presence scan behind ``/agents``.
A wrong password stops the node at start-up with Redis's own reason; a login or
command refused while it runs (a password changed, a permission taken away) is
logged with Redis's reason too.
"""

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from websockets.asyncio.client import ClientConnection

from bushub.broker.resp import PublishConnection
from bushub.broker.subscriber import Subscriber
from buswire.dialect import SUBAGENTS_REGISTRY_TYPE
from tests.integration.procs import TIMEOUT, RedisServer
from tests.integration.redis_auth import ACL_USER, HUB_ACL_RULES, REQUIREPASS, RedisAuth
from tests.integration.redis_cluster import RedisClusterServers
from tests.operations.ops import ADMIN_TOKEN, PRESENCE_TTL, OpsNode, close_clients, ws_connect
from tests.support.messages import TASK_REQUEST, decode, encode, task_request
from tests.support.ports import cluster_port
from tests.support.reports import register_log
from tests.support.sessionclient import SessionSocket
from tests.support.waiting import until, wait_until

pytestmark = pytest.mark.integration

LOCKS = {"requirepass": REQUIREPASS, "acl-user": ACL_USER}
BROKERS = ("redis", "redis-cluster")
WRONG_PASSWORD = "not/the@pass:word"


class LockedClusters:
    """One locked Redis Cluster per lock, started on first use, shared by the module."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._started: dict[str, RedisClusterServers] = {}

    def get(self, lock: str) -> RedisClusterServers:
        servers = self._started.get(lock)
        if servers is None:
            servers = RedisClusterServers(self._tmp / lock, LOCKS[lock])
            self._started[lock] = servers
            servers.start()
        else:
            servers.flush()
        return servers

    def stop(self) -> None:
        for servers in self._started.values():
            servers.stop()


@pytest.fixture(scope="module")
def locked_clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockedClusters]:
    clusters = LockedClusters(tmp_path_factory.mktemp("locked-clusters"))
    try:
        yield clusters
    finally:
        clusters.stop()


class LockedRedis:
    """A locked Redis (one server or a cluster's nodes): the URL a hub gets, and
    the same URL with a wrong password."""

    def __init__(self, url: str, auth: RedisAuth, servers: Sequence[RedisServer]) -> None:
        self.url = url
        self.auth = auth
        self.servers = servers

    def refusals(self) -> list[str]:
        """What each server's ACL LOG holds: commands, keys or channels it refused
        (and failed logins)."""
        return [log for s in self.servers if (log := s.cli("ACL", "LOG").strip())]

    def forget_refusals(self) -> None:
        for server in self.servers:
            server.cli("ACL", "LOG", "RESET")

    @property
    def wrong_url(self) -> str:
        wrong = self.auth.with_password(WRONG_PASSWORD)
        return self.url.replace(self.auth.userinfo(), wrong.userinfo())


@pytest.fixture(
    params=[(broker, lock) for broker in BROKERS for lock in LOCKS],
    ids=[f"{broker}-{lock}" for broker in BROKERS for lock in LOCKS],
)
def locked(
    request: pytest.FixtureRequest, tmp_path: Path, locked_clusters: LockedClusters
) -> Iterator[LockedRedis]:
    broker, lock = request.param
    yield from start_locked(broker, lock, request, tmp_path, locked_clusters)


@pytest.fixture(params=BROKERS)
def acl_locked(
    request: pytest.FixtureRequest, tmp_path: Path, locked_clusters: LockedClusters
) -> Iterator[LockedRedis]:
    yield from start_locked(request.param, "acl-user", request, tmp_path, locked_clusters)


def start_locked(
    broker: str,
    lock: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    locked_clusters: LockedClusters,
) -> Iterator[LockedRedis]:
    """One Redis of this test's own, or the module's cluster for ``lock``."""
    if broker == "redis-cluster":
        servers = locked_clusters.get(lock)
        yield LockedRedis(servers.url, LOCKS[lock], servers.nodes)
        return
    redis = RedisServer(tmp_path / "redis.log", LOCKS[lock])
    register_log(request, "redis log", redis.log_path)
    redis.start()
    try:
        yield LockedRedis(redis.url, LOCKS[lock], [redis])
    finally:
        redis.stop()


class Hubs:
    """Hub processes with the admin token set, stopped after the test's sockets."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self._tmp = tmp_path
        self._request = request
        self.nodes: list[OpsNode] = []

    def spawn(self, node_id: str, redis_url: str) -> OpsNode:
        # Passes over the relay records often enough to be seen in a test.
        flags = {"--resume-forget-every": "0.3"}
        node = OpsNode(node_id, self._tmp / f"hub-{node_id}.log", redis_url, flags=flags)
        register_log(self._request, f"hub {node_id} log", node.log_path)
        self.nodes.append(node)
        node.spawn()
        return node

    def ready(self, redis_url: str, *node_ids: str) -> list[OpsNode]:
        nodes = [self.spawn(node_id, redis_url) for node_id in node_ids]
        for node in nodes:
            node.wait_ready()
        return nodes

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
async def hubs(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Hubs]:
    started = Hubs(tmp_path, request)
    try:
        yield started
    finally:
        try:
            await close_clients()
        finally:
            started.stop()


async def next_of_type(ws: ClientConnection, type_name: str) -> dict[str, Any]:
    """The next frame of ``type_name`` on ``ws``, skipping others."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            tree: dict[str, Any] = decode(await ws.recv())
            if tree["__type__"] == type_name:
                return tree


def announced(registry: dict[str, Any]) -> list[str]:
    return [entry["__data__"]["name"] for entry in registry["__data__"]["agents"]]


def log_lines(node: OpsNode) -> list[str]:
    return node.log_text().splitlines()


def node_output(node: OpsNode) -> str:
    """What the node itself wrote: not the harness's line quoting its command line
    (which holds the URL, password and all)."""
    return "\n".join(line for line in log_lines(node) if not line.startswith("====="))


async def test_agents_on_two_nodes_talk_and_are_listed_through_a_locked_redis(
    locked: LockedRedis, hubs: Hubs
) -> None:
    locked.forget_refusals()  # a wrong-password test may have run on the cluster
    n1, n2 = hubs.ready(locked.url, "c1", "c2")
    a = await ws_connect(n1.ws_url("a", peer="b", format="json", dialect="subagents"))
    b = await ws_connect(n2.ws_url("b", peer="a", format="json", dialect="subagents"))

    # Each is told of its peer on the other node: presence records and presence
    # channels crossed Redis both ways.
    assert announced(await next_of_type(a, SUBAGENTS_REGISTRY_TYPE)) == ["b"]
    assert announced(await next_of_type(b, SUBAGENTS_REGISTRY_TYPE)) == ["a"]

    # A message each way, published by one node and delivered by the other.
    await a.send(encode(task_request("a", "b", 1)))
    assert (await next_of_type(b, TASK_REQUEST))["__data__"]["payload"] == {"seq": 1}
    await b.send(encode(task_request("b", "a", 2)))
    assert (await next_of_type(a, TASK_REQUEST))["__data__"]["payload"] == {"seq": 2}

    # The operator's view, read from Redis, is the same from either node.
    def listed(node: OpsNode) -> list[tuple[str, str]]:
        rows = node.get_json("/agents", ADMIN_TOKEN)["agents"]
        return [(row["agent"], row["node"]) for row in rows]

    for node in (n1, n2):
        assert listed(node) == [("a", "c1"), ("b", "c2")]
    # Past two lifetimes of a presence record, both are still listed: the nodes'
    # refreshes (a script run in a pipeline, or one call per key on a cluster) were
    # let through.
    await asyncio.sleep(2 * PRESENCE_TTL)
    for node in (n1, n2):
        assert listed(node) == [("a", "c1"), ("b", "c2")]

    # A session writes to b, and a newer session of its agent replaces it: b's node
    # reads the relay record and the sender's session, and forgets it.
    replaced = await SessionSocket.open(n1.url, "s", "b", "S1")
    await replaced.send(1, "s", "b", 3)
    assert (await next_of_type(b, TASK_REQUEST))["__data__"]["payload"] == {"seq": 3}
    await replaced.close()
    newer = await SessionSocket.open(n1.url, "s", "b", "S2")
    await newer.send(1, "s", "b", 4)
    assert (await next_of_type(b, TASK_REQUEST))["__data__"]["payload"] == {"seq": 4}
    assert await until(
        lambda: n2.metrics().value("bushub_relayed_forgotten_total") == 1,
        what="the replaced session forgotten",
    )
    await newer.close()

    # A stock socket takes the name of an away session and is given what its stream
    # keeps: its node ends the session (END_AWAY).
    away = await SessionSocket.open(n2.url, "w", "a", "SW")
    await away.close()
    stock = await ws_connect(n2.ws_url("w", peer="a", format="json", dialect="subagents"))
    await a.send(encode(task_request("a", "w", 5)))
    assert (await next_of_type(stock, TASK_REQUEST))["__data__"]["payload"] == {"seq": 5}
    assert await until(lambda: "session of w ended" in n2.log_text(), what="the away session ended")
    await stock.close()

    # Nothing the nodes did was refused: the ACL user's rules (HUB_ACL_RULES) are
    # enough, not just enough for what the assertions above happened to notice.
    assert locked.refusals() == []
    for node in (n1, n2):
        assert locked.auth.password not in node_output(node)
        assert quote(locked.auth.password, safe="") not in node_output(node)


def refused_in_one_line(node: OpsNode, reason: str) -> tuple[str, str]:
    """The node stopped at start-up (exit code 3) with Redis' ``reason`` on one line of
    its own, "cannot start: ... refused this node", and no traceback; (line, log)."""
    assert wait_until(lambda: not node.alive, timeout=TIMEOUT), "the node kept running"
    assert node.returncode == 3
    log = node_output(node)
    (line,) = [line for line in log.splitlines() if reason in line]
    assert "cannot start: redis" in line and "refused this node" in line, line
    assert "Traceback" not in log, log[-2000:]
    return line, log


def test_a_wrong_password_stops_the_node_with_redis_reason(locked: LockedRedis, hubs: Hubs) -> None:
    node = hubs.spawn("w1", locked.wrong_url)
    started = time.monotonic()
    # Redis's own reason, on a line of its own, in a few seconds rather than after a
    # retry loop...
    _, log = refused_in_one_line(node, "invalid username-password pair")
    assert time.monotonic() - started < TIMEOUT
    # ...and never the password, as given or as written in the URL.
    assert WRONG_PASSWORD not in log and quote(WRONG_PASSWORD, safe="") not in log
    assert locked.auth.password not in log


def test_a_password_for_a_redis_without_one_stops_the_node(
    tmp_path: Path, request: pytest.FixtureRequest, hubs: Hubs
) -> None:
    """A URL with a password for a Redis that has none: Redis refuses the AUTH (ERR,
    not WRONGPASS), which the node retried for good at start-up, serving nothing."""
    redis = RedisServer(tmp_path / "open-redis.log")
    register_log(request, "redis log", redis.log_path)
    redis.start()
    try:
        password = quote(WRONG_PASSWORD, safe="")
        node = hubs.spawn("w2", redis.url.replace("redis://", f"redis://:{password}@"))
        started = time.monotonic()
        assert wait_until(lambda: not node.alive, timeout=TIMEOUT), "the node kept running"
        assert node.returncode == 3
        log = node_output(node)
        assert "called without any password configured" in log, log[-2000:]
        assert "Traceback" not in log, log[-2000:]
        assert time.monotonic() - started < TIMEOUT
        assert WRONG_PASSWORD not in log and password not in log
    finally:
        redis.stop()


def test_a_cluster_url_for_a_redis_without_cluster_mode_stops_the_node_in_one_line(
    tmp_path: Path, request: pytest.FixtureRequest, hubs: Hubs
) -> None:
    """``redis+cluster://`` for a Redis that is not a cluster: Redis' answer, in one
    line. Before, the start ended in a traceback of several kilobytes (redis-py's
    cluster client raises its own error while handling the answer)."""
    redis = RedisServer(tmp_path / "plain-redis.log")
    register_log(request, "redis log", redis.log_path)
    redis.start()
    try:
        node = hubs.spawn("w3", redis.url.replace("redis://", "redis+cluster://").rsplit("/", 1)[0])
        line, _ = refused_in_one_line(node, "cluster support disabled")
        assert "cannot start: redis cluster" in line, line
    finally:
        redis.stop()


def test_a_node_started_before_its_redis_waits_for_it_and_then_serves(
    tmp_path: Path, request: pytest.FixtureRequest, hubs: Hubs
) -> None:
    """Redis not listening yet when the node starts (an orchestrator starting both at
    once): the node waits, its port not yet served, says so, and serves once Redis
    answers. It used to exit at once (code 3) with a traceback on one line."""
    redis = RedisServer(tmp_path / "late-redis.log")
    register_log(request, "redis log", redis.log_path)
    node = hubs.spawn("late", redis.url)
    try:
        assert wait_until(lambda: "waiting for redis" in node.log_text()), node.log_text()
        time.sleep(1.5)  # several tries, each refused
        assert node.alive, node.log_text()
        assert node.http_status("/readyz") is None, "nothing served while waiting"
        redis.start()
        node.wait_ready()
        assert "Traceback" not in node.log_text()
    finally:
        redis.stop()


def test_a_node_waiting_for_an_unreachable_redis_cluster_stops_at_a_signal(
    hubs: Hubs,
) -> None:
    """No seed of the cluster answers: the node waits as for one Redis, and SIGTERM
    ends the wait."""
    node = hubs.spawn("late-cluster", f"redis+cluster://127.0.0.1:{cluster_port()}")
    assert wait_until(lambda: "waiting for redis cluster" in node.log_text()), node.log_text()
    time.sleep(1.0)
    assert node.alive, node.log_text()
    node.signal(signal.SIGTERM)
    assert wait_until(lambda: not node.alive, timeout=TIMEOUT), "still running"
    assert "stopped before serving: a signal came while starting" in node.log_text()


def test_a_signal_while_starting_stops_the_node(
    tmp_path: Path, request: pytest.FixtureRequest, hubs: Hubs
) -> None:
    """SIGTERM while the node waits on a Redis that does not answer (stopped): the
    start is abandoned and the process ends. It waited for the start to finish,
    which never came, and a second signal did not help either."""
    redis = RedisServer(tmp_path / "stopped-redis.log")
    register_log(request, "redis log", redis.log_path)
    redis.start()
    redis.signal(signal.SIGSTOP)
    try:
        node = hubs.spawn("w3", redis.url)
        assert wait_until(lambda: "Waiting for application startup" in node.log_text())
        time.sleep(1.0)  # well into the wait on Redis
        assert node.alive
        node.signal(signal.SIGTERM)
        assert wait_until(lambda: not node.alive, timeout=TIMEOUT), "still running"
        assert "stopped before serving: a signal came while starting" in node.log_text()
    finally:
        redis.signal(signal.SIGCONT)
        redis.stop()


def test_a_node_whose_subscriptions_redis_refuses_is_not_ready_until_allowed(
    tmp_path: Path, request: pytest.FixtureRequest, hubs: Hubs
) -> None:
    """The node's user may not SUBSCRIBE: it keeps saying so and does not serve;
    allowed again, it serves. Redis' refusal of the SUBSCRIBE could arrive before the
    PING after it waited for an answer: taken for an unasked error, the connection
    passed for subscribed, and a node that could hear nothing served as ready."""
    redis = RedisServer(tmp_path / "no-subscribe-redis.log")
    register_log(request, "redis log", redis.log_path)
    redis.start()
    try:
        assert redis.cli("ACL", "SETUSER", "default", "-subscribe").strip() == "OK"
        node = hubs.spawn("w4", redis.url)
        said = "refused this node (NoPermissionError: this user has no permissions"
        assert wait_until(lambda: said in node.log_text()), node.log_text()
        time.sleep(3.0)  # a dozen retries
        assert node.alive
        assert node.http_status("/readyz") != 200
        assert " serving on " not in node.log_text()
        assert redis.cli("ACL", "SETUSER", "default", "+subscribe").strip() == "OK"
        node.wait_ready()
    finally:
        redis.stop()


# Waits on a retry loop's log line: alone, so that a loaded machine does not stretch it.
@pytest.mark.serial
async def test_a_cluster_shard_refusing_a_command_is_logged_with_redis_reason(
    locked_clusters: LockedClusters, hubs: Hubs
) -> None:
    servers = locked_clusters.get("acl-user")
    user = ACL_USER.username
    assert user is not None
    # The ACL user loses SSUBSCRIBE on every node: its pub/sub connections log in
    # but cannot subscribe. The node must say so, not just retry in silence, and not
    # say it is ready while it can hear nothing (it did: the refusal could come back
    # before the PING after the SSUBSCRIBE waited for an answer); allowed again, it is.
    for node in servers.nodes:
        assert node.cli("ACL", "SETUSER", user, "-ssubscribe").strip() == "OK"
    allowed = False
    try:
        hub = hubs.spawn("p1", servers.url)
        said = "refused this node (NoPermissionError: this user has no permissions to run"
        assert wait_until(lambda: said in hub.log_text()), hub.log_text()
        assert " WARNING " in next(line for line in hub.log_text().splitlines() if said in line)
        assert hub.alive and hub.http_status("/readyz") != 200
        for node in servers.nodes:
            node.cli("ACL", "SETUSER", user, "+ssubscribe")
        allowed = True
        hub.wait_ready()
    finally:
        if not allowed:
            for node in servers.nodes:
                node.cli("ACL", "SETUSER", user, "+ssubscribe")


async def test_a_login_refused_while_running_is_logged_with_redis_reason(
    acl_locked: LockedRedis, hubs: Hubs
) -> None:
    user = ACL_USER.username
    assert user is not None
    hub = hubs.ready(acl_locked.url, "r1")[0]
    await ws_connect(hub.ws_url("a", peer="b", format="json", dialect="subagents"))
    # The password is changed under the running node and its connections cut: it
    # reconnects with the old one.
    for server in acl_locked.servers:
        assert server.cli("ACL", "SETUSER", user, "resetpass", ">rotated").strip() == "OK"
        server.cli("CLIENT", "KILL", "USER", user)
    try:
        said = "invalid username-password pair"
        assert wait_until(
            lambda: any("refused this node" in line and said in line for line in log_lines(hub))
        ), hub.log_text()
        # Retried meanwhile (the topology re-read among them) as warnings, not as
        # unforeseen failures with a traceback.
        await asyncio.sleep(1.0)
        assert "Traceback" not in hub.log_text(), hub.log_text()
    finally:
        for server in acl_locked.servers:
            server.cli("ACL", "SETUSER", user, "resetpass", f">{ACL_USER.password}")


@pytest.fixture
def acl_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path / "redis.log", ACL_USER)
    register_log(request, "redis log", redis.log_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


# An ACL user without a password: redis-py logs it in with an empty one, and so
# must the raw connections, or they stay the (disabled) default user.
NOPASS_USER = "bushub-nopass"


@pytest.mark.parametrize(
    "login",
    [(ACL_USER.username, ACL_USER.password), (NOPASS_USER, None)],
    ids=["acl-user", "acl-user-nopass"],
)
async def test_raw_connections_log_in_as_the_urls_user(
    acl_redis: RedisServer, login: tuple[str, str | None]
) -> None:
    # The default user is off: a connection that sent the password alone, or no
    # AUTH at all, would be refused.
    setuser = ("ACL", "SETUSER", NOPASS_USER, "on", "nopass", *HUB_ACL_RULES)
    assert acl_redis.cli(*setuser).strip() == "OK"
    username, password = login
    got: list[tuple[str, bytes]] = []
    arrived = asyncio.Event()

    def on_message(channel: str, data: bytes) -> None:
        got.append((channel, data))
        arrived.set()

    sub = await Subscriber.open(
        "127.0.0.1", acl_redis.port, on_message, username=username, password=password
    )
    publisher = PublishConnection("127.0.0.1", acl_redis.port, username=username, password=password)
    try:
        sub.subscribe(["bushub:msg:{x}"])
        await sub.ping()
        assert await publisher.publish_many([("bushub:msg:{x}", b"hello")]) == [1]
        await asyncio.wait_for(arrived.wait(), TIMEOUT)
        assert got == [("bushub:msg:{x}", b"hello")]
        # Both are the URL's user, as Redis sees them.
        clients = acl_redis.cli("CLIENT", "LIST").splitlines()
        users = sorted(field for c in clients for field in c.split() if field.startswith("user="))
        assert users.count(f"user={username}") == 2, clients
    finally:
        sub.close()
        await publisher.close()


async def test_raw_connections_refuse_a_wrong_password_with_redis_reason(
    acl_redis: RedisServer,
) -> None:
    user = ACL_USER.username
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(ConnectionError, match="refused AUTH: WRONGPASS"):
            await Subscriber.open(
                "127.0.0.1",
                acl_redis.port,
                lambda c, d: None,
                username=user,
                password=WRONG_PASSWORD,
            )
        publisher = PublishConnection(
            "127.0.0.1", acl_redis.port, username=user, password=WRONG_PASSWORD
        )
        with pytest.raises(ConnectionError, match="refused AUTH: WRONGPASS"):
            await publisher.connect()
        await publisher.close()
