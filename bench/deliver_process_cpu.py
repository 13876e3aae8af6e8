"""Redis' whole CPU per message (its process' time) against its commands' own time, for
``PUBLISH`` and the sessions' delivery script, with a subscriber reading every copy.

Run from the repository root: ``.venv/bin/python bench/deliver_process_cpu.py``.

``bench/deliver_script.py`` reads Redis' own time per command (INFO commandstats) with
nobody subscribed. What a message costs Redis in the hub is more: reading the command,
writing the copy to the subscribed node, the turns of its loop. This starts a
redis-server of its own and one subscriber (a raw socket reading and dropping every
copy), sends ``--messages`` relay frames per variant in pipelines of ``--burst`` (a
node's burst), and prints, median of ``--runs``, Redis' process CPU per message
(``/proc/<pid>/stat``, user and system) beside its commands' own time per message:

- ``PUBLISH`` (sessions off);
- ``DELIVER`` for an agent no session holds (sessions on, a plain socket);
- ``DELIVER`` for an agent a session holds (kept in its stream, trimmed as
  acknowledgements would).
"""

import argparse
import contextlib
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.deliver_script import CHANNEL, KEYS, NOT_ASKED, frame
from bench.scratch_redis import scratch_redis
from bushub.broker.sessionscripts import DELIVER
from buswire import Format
from buswire.relayframe import pack_relay

TICKS = os.sysconf("SC_CLK_TCK")
VARIANTS = ("PUBLISH", "DELIVER, no session holds the agent", "DELIVER, a session holds it")


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user and system) process ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def subscribe_and_drop(port: int, stop: threading.Event) -> None:
    """Subscribe to ``CHANNEL`` and read every copy until ``stop``."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(CHANNEL), CHANNEL.encode()))
        sock.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                sock.recv(1 << 20)


def measure(
    client: redis.Redis, pid: int, variant: str, size: int, messages: int, burst: int
) -> tuple[float, float]:
    """(process µs, commands' µs) per message of one variant."""
    client.flushall()
    client.config_resetstat()
    session = variant == VARIANTS[2]
    if session:
        client.hset(KEYS[0], mapping={"id": "s", "epoch": "e", "seq": 0, "bytes": 0})
    sha = client.script_load(DELIVER)
    send: Callable[[redis.client.Pipeline, int], object]
    if variant == VARIANTS[0]:
        send = lambda pipe, n: pipe.publish(CHANNEL, pack_relay(Format.JSON, 1.0, b"x" * size))  # noqa: E731
    else:
        send = lambda pipe, n: pipe.evalsha(  # noqa: E731
            sha, 3, *KEYS, "PUBLISH", CHANNEL, 10**9, 10**12, NOT_ASKED, frame(size, n)
        )  # fmt: skip
    before = process_cpu(pid)
    pipe = client.pipeline(transaction=False)
    for n in range(1, messages + 1):
        send(pipe, n)
        if n % burst == 0:
            pipe.execute()
            pipe = client.pipeline(transaction=False)
            if session and n % 2000 == 0:
                client.xtrim(KEYS[1], minid=f"0-{n - 100}")  # as acknowledgements do
    pipe.execute()
    time.sleep(0.2)  # the copies written out
    spent = process_cpu(pid) - before
    stats = client.info("commandstats")
    usec = sum(
        stats.get(name, {}).get("usec", 0) for name in ("cmdstat_publish", "cmdstat_evalsha")
    )
    return spent * 1e6 / messages, usec / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="260,1400", help="payload bytes (task, audio)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with scratch_redis() as client:
        port = int(client.connection_pool.connection_kwargs["port"])
        pid = int(client.info("server")["process_id"])
        stop = threading.Event()
        reader = threading.Thread(target=subscribe_and_drop, args=(port, stop), daemon=True)
        reader.start()
        time.sleep(0.3)
        print("| variant | payload | Redis process µs/msg | its commands' µs/msg |")
        print("| --- | ---: | ---: | ---: |")
        for size in sizes:
            for variant in VARIANTS:  # a first pass warms Redis (allocator, script cache)
                measure(client, pid, variant, size, 2000, args.burst)
            runs = {v: [measure(client, pid, v, size, args.messages, args.burst)
                        for _ in range(args.runs)] for v in VARIANTS}  # fmt: skip
            for variant, values in runs.items():
                process = statistics.median(v[0] for v in values)
                commands = statistics.median(v[1] for v in values)
                print(f"| {variant} | {size} B | {process:.1f} | {commands:.1f} |")
        stop.set()
        reader.join()


if __name__ == "__main__":
    main()
