"""Redis CPU per acknowledgement trim: the ``TRIM`` script a node sends (the session's
id checked, then ``XTRIM``) against the script it sent before (which also read and
summed the bytes it trimmed) and a bare ``XTRIM`` (the floor).

Run from the repository root: ``.venv/bin/python bench/trim_cost.py``.

A node passes a session's acknowledgement on to Redis at most every 200 ms; at the
bench's 40 messages/s per session that trims ~8 entries, at ``ACK_EVERY`` 64. This
starts a redis-server of its own, fills ``--sessions`` streams with ``--per`` entries
each (as the delivery script keeps them), trims them all, ``--rounds`` times, and
prints Redis' own microseconds per trim (INFO commandstats, every command the trims
ran), median of ``--runs``.
"""

import argparse
import statistics
import sys
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.scratch_redis import scratch_redis
from bushub.broker.sessionscripts import TRIM, trim_minid

# The trim as nodes ran it until 2026-12-06: the baseline.
SCRIPT_TRIM = """
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then
  return 0
end
local upto = string.format('0-%d', tonumber(ARGV[2]))
local entries = redis.call('XRANGE', KEYS[2], '-', upto)
if #entries == 0 then
  return 0
end
local freed = 0
for _, e in ipairs(entries) do
  freed = freed + #e[2][2]
end
redis.call('XTRIM', KEYS[2], 'MINID', string.format('0-%d', tonumber(ARGV[2]) + 1))
redis.call('HINCRBY', KEYS[1], 'bytes', -freed)
return #entries
"""
TRIM_COMMANDS = ("evalsha", "xtrim", "hget", "xrange", "hincrby")


def measure(client: redis.Redis, kind: str, sessions: int, per: int, rounds: int) -> float:
    """Redis µs per trim of ``per`` entries, ``kind`` ``script``, ``guarded`` or ``xtrim``."""
    client.flushall()
    sha = client.script_load(SCRIPT_TRIM)
    guarded = client.script_load(TRIM)
    data = b"x" * 270
    pipe = client.pipeline(transaction=False)
    for s in range(sessions):
        pipe.hset(f"bushub:session:{{a{s}}}", mapping={"id": "S", "bytes": 0, "seq": 0})
    pipe.execute()
    client.config_resetstat()
    usec = 0
    position = 0
    for _ in range(rounds):
        pipe = client.pipeline(transaction=False)
        for s in range(sessions):
            for i in range(per):
                pipe.xadd(f"bushub:stream:{{a{s}}}", {"d": data}, id=f"0-{position + i + 1}")
        pipe.execute()
        position += per
        before = _usec(client)
        pipe = client.pipeline(transaction=False)
        for s in range(sessions):
            keys = (f"bushub:session:{{a{s}}}", f"bushub:stream:{{a{s}}}")
            if kind == "script":
                pipe.evalsha(sha, 2, *keys, "S", position)
            elif kind == "guarded":
                pipe.evalsha(guarded, 2, *keys, "S", trim_minid(position))
            else:
                pipe.xtrim(keys[1], minid=trim_minid(position), approximate=False)
        pipe.execute()
        usec += _usec(client) - before
        assert client.xlen(f"bushub:stream:{{a{sessions - 1}}}") == 0
    return usec / (rounds * sessions)


def _usec(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in TRIM_COMMANDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--per", default="8,64", help="entries trimmed per acknowledgement")
    args = parser.parse_args()
    with scratch_redis() as client:
        sizes = [int(n) for n in args.per.split(",")]
        print("| trim | " + " | ".join(f"µs/trim, {n} entries" for n in sizes) + " |")
        print("| --- |" + " ---: |" * len(sizes))
        for kind, name in (
            ("script", "script (id check, sum, XTRIM)"),
            ("guarded", "TRIM (id check, XTRIM)"),
            ("xtrim", "bare XTRIM"),
        ):
            row = [
                statistics.median(
                    measure(client, kind, args.sessions, n, args.rounds) for _ in range(args.runs)
                )
                for n in sizes
            ]
            print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in row) + " |")


if __name__ == "__main__":
    main()
