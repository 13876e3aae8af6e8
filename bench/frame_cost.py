"""CPU per KB of an ordinary message against the worst a client can make the hub do.

Not a test: it prints a Markdown table, to be read, never asserted on. Run from the
repository root:

    .venv/bin/python bench/frame_cost.py [--repeat 7] [--sizes 4096,65536,1048576]

Each row is one frame, sent to the hub's real code the way two nodes would handle it:
receipt is ``Relay.route`` on the publishing node (parse, envelope, type walk with its
container count, relay frame), delivery is ``Relay.deliver`` on the other node to a
socket of the *other* format (the translation). The publisher and the socket are
stand-ins that keep nothing. A cell is the median over ``--repeat`` runs of the CPU
time (``time.process_time``) of one call, in microseconds per KB of frame; frames under
64 KB are timed in batches. The process holds ``--heap`` long-lived objects first, as a
node serving traffic does: the garbage collector's full passes walk them all, which is
what makes frames of many small containers expensive.

The adversarial frames are valid task requests of about the given size: as many empty
lists (or maps) as the container budget admits (the worst accepted), a payload of
scalars only (not counted: every stage handles them in C), a list nested just within
the depth limit, and a frame of one-byte empty lists filling the size (refused on
receipt as too complex; its delivery row is what translating it would have cost).
Rows whose frame the hub refuses on receipt say so.
"""

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import msgpack
from busbench.inmemory import TakingSocket, memory_connection

from bushub.claims import ClaimFence
from bushub.connection import Connection
from bushub.metrics import Metrics
from bushub.outbound import Outbound
from bushub.relay import Relay
from bushub.settings import Settings
from buswire import Format
from buswire.relayframe import pack_relay

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from busbench.payloads import Builder

TASK = "pipecat_subagents.bus.messages.BusTaskRequestMessage"
# The container budget this measures (buswire.complexity): 64 + size // 8.
BASE, PER = 64, 8
DEPTH = 256


def _encode(tree: Any, fmt: Format) -> bytes:
    if fmt is Format.MSGPACK:
        packed: bytes = msgpack.packb(tree, use_bin_type=True)
        return packed
    return json.dumps(tree, separators=(",", ":")).encode()


def _task(payload: Any, pad: int = 0, pad_byte: bytes = b"") -> dict[str, Any]:
    data = {"source": "a_1", "target": "b_1", "task_id": "t", "task_name": "x"}
    padding = pad_byte * pad if pad_byte else "x" * pad
    return {"__type__": TASK, "__data__": {**data, "payload": {"pad": padding, "v": payload}}}


def _containers(tree: Any) -> int:
    if isinstance(tree, dict):
        return 1 + sum(_containers(v) for v in tree.values())
    if isinstance(tree, list):
        return 1 + sum(_containers(v) for v in tree)
    return 0


def _at_budget(size: int, fmt: Format, item: Callable[[], Any], pad_byte: bytes = b"") -> bytes:
    """A frame of about ``size`` bytes holding exactly as many containers as allowed.

    A ``pad_byte`` of 0x90 fills the rest with bytes that look like MsgPack arrays,
    so that the frame is counted while parsed (see ``buswire.codec.load_tree``).
    """
    count = BASE + size // PER - _containers(_task([]))
    for _ in range(20):
        bare = _encode(_task([item() for _ in range(count)], 0, pad_byte), fmt)
        pad = max(0, size - len(bare))
        data = _encode(_task([item() for _ in range(count)], pad, pad_byte), fmt)
        allowed = BASE + len(data) // PER
        have = _containers(_task([item() for _ in range(count)]))
        if have == allowed:
            return data
        count += allowed - have
    raise AssertionError("no frame at the budget")


def _scalars(size: int, fmt: Format) -> bytes:
    per = 1 if fmt is Format.MSGPACK else 2  # 0 or "0,"
    return _encode(_task([0] * (size // per)), fmt)


def _deep(size: int, fmt: Format) -> bytes:
    chain: Any = []
    for _ in range(DEPTH - 4):  # top map, __data__, payload, the chain's own list
        chain = [chain]
    tree = _task(chain)
    return _encode(_task(chain, max(0, size - len(_encode(tree, fmt)))), fmt)


def _bomb(size: int, fmt: Format) -> bytes:
    per = 1 if fmt is Format.MSGPACK else 3  # 0x90, or "[],"
    return _encode(_task([[] for _ in range(size // per)]), fmt)


class _Relay:
    """Two hubs' worth of the real code around one frame."""

    def __init__(self, data: bytes, fmt: Format) -> None:
        settings = Settings(
            node_id="bench", rate_messages=0, rate_bytes=0, max_message_bytes=4 << 20
        )
        metrics = Metrics()
        self.published: list[bytes] = []
        holders: dict[str, Connection] = {}
        claims = ClaimFence()
        self.relay = Relay(
            settings,
            metrics,
            holders,
            claims,
            lambda channel, frame: self.published.append(frame),
            Outbound(metrics),
        )
        self.sender = memory_connection("a_1", "b_1", fmt)
        other = Format.JSON if fmt is Format.MSGPACK else Format.MSGPACK
        receiver = memory_connection("b_1", "a_1", other)
        receiver.outlet = TakingSocket()
        holders["b_1"] = receiver
        claims.seen("b_1", receiver.id)
        self.data = data
        self.relay.route(self.sender, data)
        self.accepted = bool(self.published)
        # Delivery of what was sent, whether or not receipt let it through.
        self.frame = pack_relay(fmt, time.time(), data)
        self.published.clear()

    def receipt(self) -> None:
        self.relay.route(self.sender, self.data)
        self.published.clear()

    def delivery(self) -> None:
        self.relay.deliver("b_1", self.frame)


def _us_per_kb(work: Callable[[], None], size: int, repeat: int) -> float:
    calls = max(1, (64 << 10) // size)
    samples = []
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(calls):
            work()
        samples.append((time.process_time() - start) / calls)
    return statistics.median(samples) * 1e6 / (size / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sizes", default="4096,65536,1048576")
    parser.add_argument("--heap", type=int, default=300_000)
    args = parser.parse_args()
    ballast = [{"i": i} for i in range(args.heap)]  # a serving node's live objects
    builder = Builder()
    frames: list[tuple[str, Format, bytes]] = []
    for payload in ("task", "audio"):
        for fmt in Format:
            data = builder.pairs(payload, fmt.value, "a_1", "b_1")[0][0].fill(42)
            frames.append((f"ordinary {payload}", fmt, data))
    for size in (int(s) for s in args.sizes.split(",")):
        for fmt in Format:
            frames += [
                (f"{size >> 10} KB: empty lists at the budget", fmt, _at_budget(size, fmt, list)),
                (f"{size >> 10} KB: empty maps at the budget", fmt, _at_budget(size, fmt, dict)),
                (f"{size >> 10} KB: scalars only", fmt, _scalars(size, fmt)),
                (f"{size >> 10} KB: nested {DEPTH} deep", fmt, _deep(size, fmt)),
                (f"{size >> 10} KB: empty lists, all of it", fmt, _bomb(size, fmt)),
            ]
        padded = _at_budget(size, Format.MSGPACK, list, b"\x90")
        frames.append((f"{size >> 10} KB: as above, padded with 0x90", Format.MSGPACK, padded))
    print(f"Heap ballast: {len(ballast):,} objects; median of {args.repeat} runs, CPU µs per KB.")
    print()
    print("| frame | format | bytes | receipt | delivery (translated) | relayed |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for name, fmt, data in frames:
        relay = _Relay(data, fmt)
        receipt = _us_per_kb(relay.receipt, len(data), args.repeat)
        delivery = _us_per_kb(relay.delivery, len(data), args.repeat)
        verdict = "yes" if relay.accepted else "refused on receipt"
        print(
            f"| {name} | {fmt.value} | {len(data):,} | {receipt:.1f} | {delivery:.1f} | {verdict} |"
        )


if __name__ == "__main__":
    main()
