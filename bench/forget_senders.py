"""What a pass that forgets gone senders costs Redis, per sender it looks at.

Run from the repository root: ``.venv/bin/python bench/forget_senders.py``.

The relay record of an agent (``bushub:relayed:{agent}``) names every sending
session that wrote to it within the window; a node's pass (``bushub.gonesenders``)
reads it, looks up each sender's session, and forgets the senders whose session is
gone. This starts a redis-server of its own, builds a record of ``--senders`` senders
of which ``--gone`` percent have no session, runs the node's own calls
(``SessionScripts.senders_gone`` then ``forget``), and prints Redis' own microseconds
(INFO commandstats, every command the pass ran) and the pass's wall time per sender,
median of ``--runs``.
"""

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.scratch_redis import scratch_redis
from bushub.broker.sessionscripts import SessionScripts
from buswire.channels import relayed_key, session_key
from buswire.relayframe import sender_of


def build(client: redis.Redis, senders: int, gone_percent: int) -> None:
    client.flushall()
    pipe = client.pipeline(transaction=False)
    for n in range(senders):
        pipe.hset(relayed_key("w"), sender_of(f"c{n}", "S1"), "7")
        if n * 100 >= senders * gone_percent:
            pipe.hset(session_key(f"c{n}"), mapping={"id": "S1", "seq": 0})
    pipe.execute()


async def one_pass(port: int) -> tuple[int, float]:
    client = aioredis.Redis(port=port)
    scripts = SessionScripts(client)
    start = time.perf_counter()
    gone = await scripts.senders_gone("w", 1 << 30)
    forgotten = await scripts.forget("w", gone)
    elapsed = time.perf_counter() - start
    await client.aclose()
    return forgotten, elapsed


def usec(client: redis.Redis) -> float:
    return sum(float(stats["usec"]) for stats in client.info("commandstats").values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=10_000)
    parser.add_argument("--gone", type=int, default=90, help="percent of senders gone")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    redis_us, wall_us = [], []
    with scratch_redis() as client:
        port = client.connection_pool.connection_kwargs["port"]
        for _ in range(args.runs):
            build(client, args.senders, args.gone)
            client.config_resetstat()
            forgotten, elapsed = asyncio.run(one_pass(port))
            assert client.hlen(relayed_key("w")) == args.senders - forgotten
            redis_us.append(usec(client) / args.senders)
            wall_us.append(elapsed * 1e6 / args.senders)
    print(f"{args.senders:,} senders, {forgotten:,} gone and forgotten, median of {args.runs}:")
    print(f"  Redis µs per sender looked at: {statistics.median(redis_us):.2f}")
    print(f"  wall µs per sender (the node's calls, loopback): {statistics.median(wall_us):.2f}")


if __name__ == "__main__":
    main()
