"""JSON vs MsgPack for bus messages of the subagents dialect: bytes and time per op.

Not a test: it prints Markdown tables, to be read (and pasted into the README), never
asserted on. Run from the repository root:

    .venv/bin/python bench/serializers.py [--repeat 9] [--min-run-ms 25]

Each cell is the median over ``--repeat`` runs (the first, warm-up run is dropped) of
one run's time divided by its iterations; a run is N back-to-back calls with N chosen
as in ``timeit.Timer.autorange`` so that a run lasts at least ``--min-run-ms``. The
garbage collector is off during a run, as in timeit. Wall time comes from
``time.perf_counter_ns``, CPU time from ``time.process_time_ns`` (all threads of the
process).
"""

import argparse
import gc
import itertools
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

warnings.filterwarnings("ignore", category=DeprecationWarning)

from loguru import logger  # noqa: E402

logger.remove()  # pipecat's import banner and warnings would interleave with the tables

from pipecat.frames.frames import OutputAudioRawFrame  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection  # noqa: E402
from pipecat_subagents.bus.messages import (  # noqa: E402
    BusActivateAgentMessage,
    BusAgentRegistryMessage,
    BusFrameMessage,
    BusTaskRequestMessage,
)
from pipecat_subagents.bus.serializers import JSONMessageSerializer  # noqa: E402
from pipecat_subagents.types import AgentRegistryEntry  # noqa: E402

from busclient.subagents import MsgPackMessageSerializer  # noqa: E402
from buswire import Format, decode_envelope, translate  # noqa: E402

MACHINE_NOTE = (
    "2 shared cores, noisy: compare ratios within one run rather than absolute µs "
    "across runs or machines."
)


@dataclass
class Timing:
    """Median time per operation of one measured callable, in microseconds."""

    wall_us: float
    cpu_us: float
    number: int


def sample_messages() -> list[tuple[str, Any]]:
    """The four messages of the tables, as a subagents client sends them."""
    audio = bytes((i * 37) % 256 for i in range(640))  # 20 ms of 16 kHz mono s16le
    return [
        (
            "task request",
            BusTaskRequestMessage(
                source="voice",
                target="worker",
                task_id="t-42",
                payload={"q": "weather"},
            ),
        ),
        (
            "activation",
            BusActivateAgentMessage(source="voice", target="worker", args={"lang": "en"}),
        ),
        (
            "registry (1 agent)",
            BusAgentRegistryMessage(
                source="runner",
                runner="node-a",
                agents=[AgentRegistryEntry(name="worker", active=True, started_at=1.76e9)],
            ),
        ),
        (
            "audio frame (640 B)",
            BusFrameMessage(
                source="voice",
                frame=OutputAudioRawFrame(audio=audio, sample_rate=16000, num_channels=1),
                direction=FrameDirection.DOWNSTREAM,
            ),
        ),
    ]


def one_run(call: Callable[[Any], Any], arg: Any, number: int) -> tuple[int, int]:
    """Wall and CPU nanoseconds of ``number`` calls, with the GC off."""
    loop = itertools.repeat(None, number)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        cpu0 = time.process_time_ns()
        wall0 = time.perf_counter_ns()
        for _ in loop:
            call(arg)
        wall1 = time.perf_counter_ns()
        cpu1 = time.process_time_ns()
    finally:
        if gc_was_enabled:
            gc.enable()
    return wall1 - wall0, cpu1 - cpu0


def measure(
    call: Callable[[Any], Any], arg: Any, repeat: int, min_run_ns: int, number: int | None
) -> Timing:
    """Median per-op wall and CPU time over ``repeat`` runs after one warm-up run."""
    if number is None:
        number = 1
        for factor in itertools.cycle((2, 2.5, 2)):  # 1, 2, 5, 10, 20, 50, ... as timeit
            if one_run(call, arg, number)[0] >= min_run_ns:
                break
            number = int(number * factor)
    else:
        one_run(call, arg, number)
    runs = [one_run(call, arg, number) for _ in range(repeat)]
    return Timing(
        wall_us=statistics.median(wall for wall, _ in runs) / number / 1000,
        cpu_us=statistics.median(cpu for _, cpu in runs) / number / 1000,
        number=number,
    )


def us(timing: Timing) -> str:
    return f"{timing.wall_us:.1f} / {timing.cpu_us:.1f}"


def ratio(msgpack: Timing, json: Timing) -> str:
    return f"{msgpack.wall_us / json.wall_us:.2f} / {msgpack.cpu_us / json.cpu_us:.2f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="measured runs per cell (>= 7)")
    parser.add_argument("--min-run-ms", type=float, default=25.0, help="least time of a run")
    parser.add_argument("--number", type=int, default=None, help="fixed iterations per run")
    args = parser.parse_args()
    if args.repeat < 7:
        parser.error("--repeat must be at least 7")
    min_run_ns = int(args.min_run_ms * 1e6)

    def timed(call: Callable[[Any], Any], arg: Any) -> Timing:
        return measure(call, arg, args.repeat, min_run_ns, args.number)

    with warnings.catch_warnings():  # the adapters import deprecated pipecat paths
        warnings.simplefilter("ignore")
        json_serializer = JSONMessageSerializer()
        msgpack_serializer = MsgPackMessageSerializer()
    samples = []
    for label, message in sample_messages():
        json_bytes = json_serializer.serialize(message)
        msgpack_bytes = msgpack_serializer.serialize(message)
        # What is timed must be right: both decode to the same message, the hub
        # translates each into the other.
        assert str(json_serializer.deserialize(json_bytes)) == str(
            msgpack_serializer.deserialize(msgpack_bytes)
        )
        assert translate(json_bytes, Format.JSON, Format.MSGPACK) == msgpack_bytes
        samples.append((label, message, json_bytes, msgpack_bytes))

    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("pipecat-ai-subagents", "pipecat-ai", "msgpack", "orjson")
    )
    print("## Bus message serializers: JSON vs MsgPack (subagents dialect)")
    print()
    print(f"- Command: `{shlex.join([os.path.relpath(sys.executable), *sys.argv])}`")
    print(f"- Machine: {MACHINE_NOTE}")
    print(
        f"- Host: {platform.machine()}, os.cpu_count()={os.cpu_count()}, "
        f"Python {platform.python_version()} ({platform.python_implementation()}), {versions}"
    )
    print(
        f"- Method: median of {args.repeat} runs per cell after 1 warm-up run; a run is "
        f"N calls, N auto-ranged so a run takes >= {args.min_run_ms:g} ms "
        "(or --number); GC off during runs."
    )
    print(
        "- Cells: `wall / CPU` µs per operation (time.perf_counter_ns / "
        "time.process_time_ns); ratios are MsgPack ÷ JSON (< 1: MsgPack smaller or faster)."
    )
    print()

    rows = []
    for label, message, json_bytes, msgpack_bytes in samples:
        ser_json = timed(json_serializer.serialize, message)
        ser_msgpack = timed(msgpack_serializer.serialize, message)
        de_json = timed(json_serializer.deserialize, json_bytes)
        de_msgpack = timed(msgpack_serializer.deserialize, msgpack_bytes)
        rows.append(
            [
                label,
                str(len(json_bytes)),
                str(len(msgpack_bytes)),
                f"{len(msgpack_bytes) / len(json_bytes):.2f}",
                us(ser_json),
                us(ser_msgpack),
                ratio(ser_msgpack, ser_json),
                us(de_json),
                us(de_msgpack),
                ratio(de_msgpack, de_json),
            ]
        )
    print("### Client side: serializer cost per message")
    print()
    print(
        table(
            [
                "message",
                "JSON B",
                "MsgPack B",
                "size MP/J",
                "serialize JSON µs",
                "serialize MsgPack µs",
                "serialize MP/J",
                "deserialize JSON µs",
                "deserialize MsgPack µs",
                "deserialize MP/J",
            ],
            rows,
        )
    )
    print()

    rows = []
    for label, _, json_bytes, msgpack_bytes in samples:
        env_json = timed(lambda data: decode_envelope(data, Format.JSON), json_bytes)
        env_msgpack = timed(lambda data: decode_envelope(data, Format.MSGPACK), msgpack_bytes)
        j2m = timed(lambda data: translate(data, Format.JSON, Format.MSGPACK), json_bytes)
        m2j = timed(lambda data: translate(data, Format.MSGPACK, Format.JSON), msgpack_bytes)
        rows.append(
            [
                label,
                us(env_json),
                us(env_msgpack),
                ratio(env_msgpack, env_json),
                us(j2m),
                us(m2j),
            ]
        )
    print("### Hub side: cost per relayed frame (buswire)")
    print()
    print(
        table(
            [
                "message",
                "decode_envelope JSON µs",
                "decode_envelope MsgPack µs",
                "envelope MP/J",
                "translate JSON→MsgPack µs",
                "translate MsgPack→JSON µs",
            ],
            rows,
        )
    )
    print()
    print(
        "Same-format relay does not call translate (the frame is forwarded as received); "
        "a mixed-format relay costs decode_envelope of the sender's format plus one translate."
    )


if __name__ == "__main__":
    main()
