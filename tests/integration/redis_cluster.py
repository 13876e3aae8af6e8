"""A real local Redis Cluster for tests: three primaries, three replicas, free ports.

Started with ``redis-server --cluster-enabled yes`` and joined with
``redis-cli --cluster create``, as an operator would; nothing is persisted. Given a
`RedisAuth`, every node is locked alike and replicas log in to their primaries.
"""

import contextlib
import subprocess
import time
from pathlib import Path

from tests.integration.procs import TIMEOUT, RedisServer, Service
from tests.integration.redis_auth import RedisAuth
from tests.support.ports import cluster_port
from tests.support.waiting import wait_until

# Attempts at starting a node, each on newly chosen ports.
_START_ATTEMPTS = 5


class ClusterNodeServer(RedisServer):
    """One cluster-enabled redis-server in its own directory."""

    def __init__(self, log_path: Path, workdir: Path, auth: RedisAuth | None = None) -> None:
        super().__init__(log_path, auth)
        self.workdir = workdir
        self._place(cluster_port())

    def _place(self, port: int) -> None:
        self.port = port
        self.name = f"redis-cluster:{self.port}"

    def start(self) -> None:
        """Start the node; a port taken between the check and the bind (the node
        exits at once) means new ports and another try."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(_START_ATTEMPTS):
            argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            argv += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            # Short enough that a failover completes within a test's patience.
            argv += ["--cluster-node-timeout", "1500"]
            # A replica may always take over, however long its link was down.
            argv += ["--cluster-replica-validity-factor", "0"]
            if self.auth is not None:
                # Any node may become a replica, which must log in to its primary.
                argv += [*self.auth_args(), *self.auth.replica_args()]
            self._spawn(argv)
            try:
                wait_until(self._pong, TIMEOUT, what="PONG", proc=self)
                return
            except RuntimeError:
                self.wait()
                if attempt == _START_ATTEMPTS - 1 or "Address already in use" not in (
                    self.log_path.read_text(errors="replace")
                ):
                    raise
                self._place(cluster_port())


class RedisClusterServers:
    """Six cluster nodes joined into one cluster with one replica per primary.

    Args:
        auth: Lock every node with a password or an ACL user; ``url`` then carries
            the hub's credentials.
    """

    def __init__(self, tmp: Path, auth: RedisAuth | None = None) -> None:
        self.auth = auth
        self.nodes = [
            ClusterNodeServer(tmp / f"rc-{i}.log", tmp / f"rc-{i}", auth) for i in range(6)
        ]
        # The node hubs are pointed at; they discover the rest from it.
        self.seed = self.nodes[0]

    @property
    def url(self) -> str:
        """The hub's --redis-url: the seed node, with the cluster scheme."""
        userinfo = self.auth.userinfo() if self.auth else ""
        return f"redis+cluster://{userinfo}127.0.0.1:{self.seed.port}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "1",
                "--cluster-yes",
                *self.seed.cli_login(),
            ],
            check=True,
            capture_output=True,
            timeout=TIMEOUT * 3,
        )
        self.wait_ok()
        self.wait_replicas_synced()

    def wait_replicas_synced(self) -> None:
        """Until every replica has its primary's data: only then can it fail over."""
        deadline = time.monotonic() + TIMEOUT * 3
        while time.monotonic() < deadline:
            infos = [n.cli("info", "replication") for n in self.nodes if n.alive]
            replicas = [i for i in infos if "role:slave" in i]
            if len(replicas) == 3 and all("master_link_status:up" in i for i in replicas):
                return
            time.sleep(0.1)
        raise TimeoutError("redis cluster replicas never synced")

    def wait_ok(self, nodes: list[ClusterNodeServer] | None = None) -> None:
        """Until every (living) node reports the cluster healthy and all slots served."""
        deadline = time.monotonic() + TIMEOUT * 3
        targets = nodes or [n for n in self.nodes if n.alive]
        while time.monotonic() < deadline:
            infos = [n.cli("cluster", "info") for n in targets]
            if all("cluster_state:ok" in i and "cluster_slots_ok:16384" in i for i in infos):
                return
            time.sleep(0.1)
        raise TimeoutError("redis cluster never became healthy")

    def primary_for(self, key: str) -> ClusterNodeServer:
        """The living node serving ``key``'s slot as primary."""
        slot = int(self.alive_node().cli("cluster", "keyslot", key).strip())
        for line in self.alive_node().cli("cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no primary for slot {slot}")

    def alive_node(self) -> ClusterNodeServer:
        return next(n for n in self.nodes if n.alive)

    def flush(self) -> None:
        """Empty every primary, between tests sharing the cluster."""
        for node in self.nodes:
            if node.alive and "role:master" in node.cli("info", "replication"):
                node.cli("flushall")

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                Service.stop(node)
