"""Redis CPU per message of the sessions' delivery script (``DELIVER``) against PUBLISH.

Run from the repository root: ``.venv/bin/python bench/deliver_script.py``.

Redis runs every command it read from a connection before it writes what they
published to the subscribers, so a burst of N messages from a node reaches the other
node after N times the per-message cost: what a message costs Redis is what it adds to
the relay's latency under load (BENCHMARKS.md, "Sessions (resume)"). This starts a
redis-server of its own, sends ``--messages`` relay frames per variant in pipelines of
500 (an agent held by a session, its stream trimmed as acknowledgements would), and
prints Redis' own ``usec_per_call`` (INFO commandstats), median of ``--runs``, for:

- ``DELIVER`` as the hub runs it, for an agent a session holds and for one none holds;
- the same script with one part taken out (what each part costs);
- ``PUBLISH`` through a one-line script and plain ``PUBLISH`` (the floor).
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.scratch_redis import scratch_redis
from bushub.broker.sessionscripts import DELIVER
from buswire import Format
from buswire.relayframe import pack_session_relay

KEYS = ("bushub:session:{b}", "bushub:stream:{b}", "bushub:relayed:{b}")
CHANNEL = "bushub:msg:{b}"
_DEDUP = DELIVER[
    DELIVER.index("if string.byte(data, 1) == 2") : DELIVER.index("if string.byte(data, 2)")
]

# A node asks for the relayed record's expiry once a quarter window per agent: the
# script runs as most messages find it, not asked (a negative life), unless named.
NOT_ASKED, ASKED = -240_000, 240_000

VARIANTS: dict[str, tuple[str, int]] = {
    "DELIVER (session holds the agent)": (DELIVER, NOT_ASKED),
    "  with the relayed record's expiry asked for (PEXPIRE)": (DELIVER, ASKED),
    "  without the sender's dedup (HGET/HSET)": (DELIVER.replace(_DEDUP, ""), NOT_ASKED),
    "  without XADD": (
        DELIVER.replace("redis.call('XADD', KEYS[2], string.format('0-%d', seq), 'd', data)\n", ""),
        NOT_ASKED,
    ),
    "  without the byte count (HINCRBY)": (
        DELIVER.replace("redis.call('HINCRBY', KEYS[1], 'kept', #data)", "0"),
        NOT_ASKED,
    ),
    "  without XLEN": (DELIVER.replace("redis.call('XLEN', KEYS[2])", "1"), NOT_ASKED),
    "PUBLISH in a script": ("return redis.call(ARGV[1], ARGV[2], ARGV[6])", NOT_ASKED),
}
# A variant whose text no longer matches the script would measure the script itself.
assert all(v[0] != DELIVER for k, v in VARIANTS.items() if k.startswith("  without")), (
    "stale variant"
)


def frame(size: int, position: int) -> bytes:
    """A session's relay frame of ``size`` payload bytes at ``position``."""
    return pack_session_relay(Format.JSON, time.time(), b"x" * size, b"a000 s-bench", position)


def measure(client: redis.Redis, send: Callable[[redis.client.Pipeline, int], None],
            messages: int, session: bool) -> float:  # fmt: skip
    """Redis' µs per call of the one command ``send`` queues per message."""
    client.flushall()
    client.config_resetstat()
    if session:
        client.hset(KEYS[0], mapping={"id": "s", "epoch": "e", "seq": 0, "bytes": 0})
    pipe = client.pipeline(transaction=False)
    for i in range(messages):
        send(pipe, i + 1)
        if i % 500 == 499:
            pipe.execute()
            pipe = client.pipeline(transaction=False)
            if session and i % 2000 == 1999:
                client.xtrim(KEYS[1], minid=f"0-{i}", approximate=False)  # as acknowledgements do
    pipe.execute()
    stats = client.info("commandstats")
    name = "cmdstat_publish" if "cmdstat_evalsha" not in stats else "cmdstat_evalsha"
    return float(stats[name]["usec_per_call"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="260,1400", help="payload bytes (task, audio)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with scratch_redis() as client:
        rows: list[tuple[str, list[float]]] = []

        def scripted(
            script: str, size: int, life: int = NOT_ASKED
        ) -> Callable[[redis.client.Pipeline, int], None]:
            sha = client.script_load(script)
            return lambda pipe, i: pipe.evalsha(
                sha, 3, *KEYS, "PUBLISH", CHANNEL, 10**9, 10**12, life, frame(size, i)
            )

        # A first pass warms Redis (allocator, script cache) so that the variant measured
        # first is not the one that pays for it.
        for size in sizes:
            measure(client, scripted(DELIVER, size), args.messages, session=True)
        for name, (script, life) in VARIANTS.items():
            rows.append((name, [
                statistics.median(
                    measure(client, scripted(script, size, life), args.messages, session=True)
                    for _ in range(args.runs)
                )
                for size in sizes
            ]))  # fmt: skip
        rows.append((
            "DELIVER (no session holds the agent)",
            [statistics.median(
                measure(client, scripted(DELIVER, size), args.messages, session=False)
                for _ in range(args.runs)) for size in sizes],
        ))  # fmt: skip
        rows.append((
            "PUBLISH",
            [statistics.median(
                measure(client, lambda pipe, i, s=size: pipe.publish(CHANNEL, frame(s, i)),
                        args.messages, session=False)
                for _ in range(args.runs)) for size in sizes],
        ))  # fmt: skip
    print("| variant | " + " | ".join(f"µs/msg, {s} B" for s in sizes) + " |")
    print("| --- |" + " ---: |" * len(sizes))
    for name, values in rows:
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")


if __name__ == "__main__":
    main()
