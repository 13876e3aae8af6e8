"""A node's CPU per agent socket to open it and to see it end, many at once.

Run from the repository root: ``.venv/bin/python bench/open_close.py [--sockets N]``.

Starts a redis-server and one hub node of their own (the bench's process helpers),
opens N agent sockets in pairs watching each other (``ocA{i}?peer=ocB{i}`` and the
reverse, 200 handshakes in flight at a time), waits 3 s, then closes them all at once
and waits until the node is idle again. Prints the node's CPU (``/proc/<pid>/stat``)
per socket for the opening (the 3 s included) and for the ends: what a drain, a load
balancer restart or a client fleet going away costs the node. ``PYTHONPATH`` pointing
at another checkout's ``services`` and ``libs`` measures that code instead (the hub
process inherits it).
"""

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

import websockets
from busbench.procs import Procs, http_ready, wait_until


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(count: int) -> tuple[float, float]:
    """(µs to open, µs to end) per socket, node CPU."""
    procs = Procs(Path(tempfile.mkdtemp(prefix="open-close-")))
    try:
        redis = procs.redis()
        hub = procs.hub("n1", f"redis://127.0.0.1:{redis.port}/0", ["--max-connections", "20000"])
        wait_until(lambda: http_ready(hub.port), 30, hub, "the node ready")
        in_flight = asyncio.Semaphore(200)
        sockets: list[websockets.ClientConnection] = []

        async def open_one(i: int) -> None:
            me, peer = (f"ocA{i // 2}", f"ocB{i // 2}")[:: 1 if i % 2 == 0 else -1]
            url = f"ws://127.0.0.1:{hub.port}/ws/{me}?peer={peer}"
            async with in_flight:
                sockets.append(
                    await websockets.connect(
                        url, compression=None, ping_interval=None, open_timeout=60
                    )
                )

        before = cpu_seconds(hub.pid)
        await asyncio.gather(*(open_one(i) for i in range(count)))
        await asyncio.sleep(3)
        opened = cpu_seconds(hub.pid)
        await asyncio.gather(*(ws.close() for ws in sockets))
        last = cpu_seconds(hub.pid)
        while True:  # idle: under 20 ms of CPU in a second
            await asyncio.sleep(1.0)
            now = cpu_seconds(hub.pid)
            if now - last < 0.02:
                break
            last = now
        ended = cpu_seconds(hub.pid)
        return (opened - before) / count * 1e6, (ended - opened) / count * 1e6
    finally:
        procs.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [asyncio.run(measure(args.sockets)) for _ in range(args.runs)]
    opens, ends = zip(*runs, strict=True)
    print(f"{args.sockets} sockets, median of {args.runs} runs, node CPU per socket:")
    print(f"  open: {statistics.median(opens):.0f} µs ({', '.join(f'{v:.0f}' for v in opens)})")
    print(f"  end:  {statistics.median(ends):.0f} µs ({', '.join(f'{v:.0f}' for v in ends)})")


if __name__ == "__main__":
    main()
