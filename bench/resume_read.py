"""How long a resume's read of a session's stream holds Redis: in one script, and a
page at a time as the node reads it.

Run from the repository root: ``.venv/bin/python bench/resume_read.py``.

Redis runs one command at a time, so its longest command is how long every other
client waits behind it. This starts a redis-server of its own, fills one session's
stream to its bounds (``--messages`` of ``--sizes`` bytes), and reads it back from
position 0 as a node does: ``RESUME`` with a page of ``REPLAY_PAGE``, then ``XRANGE
... COUNT REPLAY_PAGE`` until it is read; and, for comparison, ``RESUME`` taking the
whole stream at once (what it did before). Prints Redis' own time (INFO
commandstats): the ``RESUME`` call, and the reads' calls and time per call.
"""

import argparse
import sys
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.scratch_redis import scratch_redis
from bushub.broker.sessionscripts import REPLAY_PAGE, RESUME
from buswire.channels import session_key, stream_key

SESSION, STREAM = session_key("a"), stream_key("a")
WHOLE = 10**9


def fill(client: redis.Redis, messages: int, size: int) -> None:
    client.flushall()
    client.hset(SESSION, mapping={"id": "S", "epoch": "e", "seq": messages, "kept": 0})
    pipe = client.pipeline(transaction=False)
    for position in range(1, messages + 1):
        pipe.xadd(STREAM, {"d": b"x" * size}, id=f"0-{position}")
        if position % 1000 == 0:
            pipe.execute()
    pipe.execute()


def read_back(client: redis.Redis, messages: int, page: int) -> dict[str, float]:
    """Redis' µs for the resume, and the pages' calls and µs, reading every message."""
    client.config_resetstat()
    reply = client.eval(RESUME, 2, SESSION, STREAM, "S", 0, "e2", "conn", page)
    flat = reply[3]
    read, last = len(flat) // 2, int(flat[-2]) if flat else 0
    while read < messages:
        entries = client.xrange(STREAM, min=f"0-{last + 1}", count=page)
        read += len(entries)
        last = int(entries[-1][0].split(b"-")[1])
    stats = client.info("commandstats")
    xrange = stats["cmdstat_xrange"]  # the resume's own read among them
    return {
        "resume_ms": stats["cmdstat_eval"]["usec"] / 1000,
        "pages": xrange["calls"] - 1,
        "page_ms": (xrange["usec_per_call"] / 1000) if xrange["calls"] > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="--resume-messages")
    parser.add_argument("--sizes", default="300,1700", help="bytes per kept message")
    args = parser.parse_args()
    print("| kept | read | `RESUME` ms | further reads | ms per read (mean) |")
    print("| --- | --- | ---: | ---: | ---: |")
    with scratch_redis() as client:
        for size in (int(s) for s in args.sizes.split(",")):
            for page, label in ((WHOLE, "whole, in the script"), (REPLAY_PAGE, "paged")):
                fill(client, args.messages, size)
                got = read_back(client, args.messages, page)
                print(
                    f"| {args.messages:,} x {size} B | {label} | {got['resume_ms']:.1f} "
                    f"| {got['pages']:.0f} | {got['page_ms']:.2f} |"
                )


if __name__ == "__main__":
    main()
