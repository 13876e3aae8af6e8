"""Redis Cluster: where does relay traffic land, sharded pub/sub vs classic PUBLISH?

Run from the repository root: ``.venv/bin/python bench/cluster_shards.py``.

It starts a local Redis Cluster (three primaries, three replicas) and measures, per
primary, CPU time (from /proc/<pid>/stat) and messages handled, for:

1. the hub path: two ``bushub serve`` nodes on ``redis+cluster://``, K agent pairs
   spread over the shards, each pair relaying M messages through the hubs;
2. the same publish volume driven straight into the cluster with ``SPUBLISH`` and
   with classic ``PUBLISH``, one subscriber per channel, no hub in between.

Classic ``PUBLISH`` in a cluster is forwarded over the cluster bus to every node;
``SPUBLISH`` stays on the shard that owns the channel's slot. Medians of --runs.
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis.asyncio as aioredis
import websockets
from redis.asyncio.cluster import RedisCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.procs import free_port
from tests.integration.redis_cluster import ClusterNodeServer, RedisClusterServers

TASK = "pipecat_subagents.bus.messages.BusTaskRequestMessage"


def node_counters(node: "ClusterNodeServer") -> dict[str, float]:
    """CPU seconds (INFO cpu, µs resolution) and pub/sub traffic of one node."""
    values: dict[str, float] = {}
    for line in (node.cli("info", "cpu") + node.cli("cluster", "info")).splitlines():
        key, _, value = line.strip().partition(":")
        if key in ("used_cpu_sys", "used_cpu_user"):
            values["cpu"] = values.get("cpu", 0.0) + float(value)
        elif key in (
            "cluster_stats_messages_publish_received",
            "cluster_stats_messages_publishshard_received",
        ):
            values["bus_in"] = values.get("bus_in", 0.0) + float(value)
    for line in node.cli("info", "commandstats").splitlines():
        if line.startswith(("cmdstat_spublish:", "cmdstat_publish:")):
            values["publish_calls"] = values.get("publish_calls", 0.0) + float(
                line.split("calls=")[1].split(",")[0]
            )
    return values


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("cpu", "bus_in", "publish_calls")}


def payload(source: str, target: str, seq: int) -> bytes:
    data = {"source": source, "target": target, "task_id": f"{seq:08d}"}
    return json.dumps({"__type__": TASK, "__data__": data}).encode()


async def hub_relay(urls: tuple[str, str], pairs: int, per_pair: int) -> int:
    """a_i on node 1 sends per_pair messages to b_i on node 2; returns messages received."""
    received = 0
    senders, receivers = [], []
    for i in range(pairs):
        a = await websockets.connect(f"{urls[0]}/ws/a{i}?peer=b{i}&dialect=subagents")
        b = await websockets.connect(f"{urls[1]}/ws/b{i}?peer=a{i}&dialect=subagents")
        senders.append(a)
        receivers.append(b)
    for a in senders:
        await asyncio.wait_for(a.recv(), 10)  # the peer's announcement: both are in place

    async def drain(b: websockets.ClientConnection) -> None:
        nonlocal received
        got = 0
        while got < per_pair:
            raw = await asyncio.wait_for(b.recv(), 10)
            if json.loads(raw)["__type__"] == TASK:
                got += 1
        received += got

    readers = [asyncio.create_task(drain(b)) for b in receivers]
    for seq in range(per_pair):
        for i, a in enumerate(senders):
            await a.send(payload(f"a{i}", f"b{i}", seq))
        if seq % 50 == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*readers)
    for ws in senders + receivers:
        await ws.close()
    return received


async def direct(
    servers: RedisClusterServers, channels: list[str], per_channel: int, sharded: bool
) -> None:
    """Publish per_channel messages on each channel with one subscriber each."""
    client = RedisCluster(host="127.0.0.1", port=servers.seed.port)
    await client.initialize()
    subs = []
    for channel in channels:
        node = client.get_node_from_key(channel)
        conn = aioredis.Redis(host=node.host, port=int(node.port))
        pubsub = conn.pubsub()
        if sharded:
            await pubsub.ssubscribe(channel)
        else:
            await pubsub.subscribe(channel)
        subs.append((conn, pubsub))
    body = payload("a", "b", 0)
    if sharded:
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(per_channel):
                for channel in channels:
                    pipe.spublish(channel, body)
            await pipe.execute()
    else:
        # Classic PUBLISH may go to any node; the cluster bus copies it to all.
        seed = aioredis.Redis(host="127.0.0.1", port=servers.seed.port)
        async with seed.pipeline(transaction=False) as pipe:
            for _ in range(per_channel):
                for channel in channels:
                    pipe.publish(channel, body)
            await pipe.execute()
        await seed.aclose()
    expected = per_channel
    for _, pubsub in subs:
        got = 0
        deadline = time.monotonic() + 20
        while got < expected and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                got += 1
    for conn, pubsub in subs:
        await pubsub.aclose()
        await conn.aclose()
    await client.aclose()


def run_hubs(servers: RedisClusterServers, tmp: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in (1, 2):
        port = free_port()
        argv = [sys.executable, "-m", "bushub", "serve", "--port", str(port)]
        argv += ["--node-id", f"n{i}", "--redis-url", servers.url, "--log-level", "warning"]
        argv += ["--rate-messages", "0", "--rate-bytes", "0"]
        log = open(tmp / f"hub{i}.log", "w")  # noqa: SIM115 - lives as long as the hub
        procs.append(subprocess.Popen(argv, stdout=log, stderr=log))
        procs[-1].port = port  # type: ignore[attr-defined]
    for proc in procs:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/readyz", timeout=1)  # type: ignore[attr-defined]
                break
            except OSError:
                time.sleep(0.1)
    return procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--messages", type=int, default=1000, help="per pair")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bushub-cluster-bench-"))
    servers = RedisClusterServers(tmp)
    servers.start()
    hubs: list[subprocess.Popen[bytes]] = []
    try:
        primaries = [n for n in servers.nodes if "role:master" in n.cli("info", "replication")]
        channels = [f"bushub:msg:{{b{i}}}" for i in range(args.pairs)]
        owner = {ch: servers.primary_for(ch).port for ch in channels}
        per_shard = {p.port: sum(1 for ch in channels if owner[ch] == p.port) for p in primaries}
        hubs = run_hubs(servers, tmp)
        urls = tuple(f"ws://127.0.0.1:{h.port}" for h in hubs)  # type: ignore[attr-defined]
        total = args.pairs * args.messages
        results: dict[str, list[dict[int, dict[str, float]]]] = {
            "hub (SPUBLISH)": [],
            "direct SPUBLISH": [],
            "direct PUBLISH": [],
        }
        for _ in range(args.runs):
            for mode in results:
                servers.flush()
                before = {n.port: node_counters(n) for n in servers.nodes}
                if mode.startswith("hub"):
                    got = asyncio.run(hub_relay(urls, args.pairs, args.messages))  # type: ignore[arg-type]
                    assert got == total, (got, total)
                else:
                    asyncio.run(
                        direct(servers, channels, args.messages, sharded="SPUBLISH" in mode)
                    )
                results[mode].append(
                    {n.port: delta(node_counters(n), before[n.port]) for n in servers.nodes}
                )
        print("## Redis Cluster: CPU per relayed message by node, sharded vs classic pub/sub\n")
        print(
            f"- Command: `{' '.join(sys.argv)}`; {args.pairs} channels (agents), "
            f"{args.messages} messages each = {total} messages per mode; "
            f"medians of {args.runs} runs."
        )
        print("- Machine: 2 shared cores, noisy: compare rows of one run, not runs.")
        print(
            "- Channels per primary: "
            + ", ".join(f"{port}: {n}" for port, n in per_shard.items())
            + "\n"
        )
        roles = {n.port: ("primary" if n in primaries else "replica") for n in servers.nodes}
        ports = [n.port for n in servers.nodes]
        print(
            "| mode | figure | "
            + " | ".join(f"{p} ({roles[p]}, {per_shard.get(p, 0)} ch)" for p in ports)
            + " | all nodes |"
        )
        print("|" + "---|" * (len(ports) + 3))
        for mode, runs in results.items():
            for figure, label, scale in (
                ("cpu", "redis CPU µs/msg", 1e6 / total),
                ("publish_calls", "publish commands", 1.0),
                ("bus_in", "cluster-bus publish messages in", 1.0),
            ):
                cells = [statistics.median(r[p][figure] for r in runs) * scale for p in ports]
                fmt = "{:.2f}" if figure == "cpu" else "{:.0f}"
                print(
                    f"| {mode} | {label} | "
                    + " | ".join(fmt.format(c) for c in cells)
                    + f" | {fmt.format(sum(cells))} |"
                )
        print("\nCPU from INFO cpu (used_cpu_user + used_cpu_sys); publish commands from INFO")
        print(
            "commandstats; cluster-bus messages from CLUSTER INFO (publish/publishshard received)."
        )
    finally:
        for hub in hubs:
            hub.terminate()
        for hub in hubs:
            hub.wait()
        servers.stop()


if __name__ == "__main__":
    main()
