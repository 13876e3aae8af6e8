"""The task stream the load-balancer test runs, shared by both dialects' programs.

Client: asks its worker for tasks at a steady pace, keeping at most ``--window`` open,
until ``--stop-file`` exists; then it waits for the open ones and reports ``done``.
Each task has a key. The client takes the first answer per key and counts later ones
as duplicates. With ``--reask-after`` a task not answered in time is asked again under
the same key; off by default (0): the reconnecting proxies' sessions deliver exactly
once (docs/protocol.md, Sessions), so a real application never re-asks, and neither
does this client. A stock pair would need re-asks; it gives up at its first close.

With ``--task-timeout T`` each task is asked with the library's own timeout
(``request_task(..., timeout=T)`` / ``JobParams(timeout=T)``): a task the library
cancels on timeout is reported (event ``task_timeout``) and counted in ``done``, so
every task ends answered or timed out, none pending forever. An answer that comes
after its task timed out is counted as ``late``.

Worker: answers ``work`` tasks; the first request for a key runs it (event
``executed``), a repeat is answered from the cache (event ``repeat``).

Bridged frames (``--frames-per-second N``, both sides): once its client is ready, the
worker sends ``BusFrameMessage``s with audio (``OutputAudioRawFrame``, the bytes of
``audio_chunk(i)``, ``pts`` = i * 20 ms) through its proxy, built with
``forward_messages=(BusFrameMessage,)``; the hub relays them to the socket's peer.
At the stop file it sends a ``TextFrame("frames-end:<count>")``. The client records
the indexes it receives and reports in ``done`` whether they are complete, in order,
without duplicates and with intact bytes; it waits for the end marker before ending.

Both report their proxy's events as JSON lines: ``connected``, ``reconnecting``,
``reconnected``, ``disconnected`` (the proxy gave up or, stock, closed), and ``stats``.
"""

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pipecat.frames.frames import OutputAudioRawFrame, TextFrame

from tests.agents._common import AUDIO_SAMPLE_RATE, audio_chunk, close_code, emit

TASK_NAME = "work"
FRAME_PTS_STEP = 20_000_000  # ns: each frame is 20 ms of audio
FRAMES_END = "frames-end:"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", required=True, choices=("client", "worker"))
    parser.add_argument("--proxy", default="reconnecting", choices=("stock", "reconnecting"))
    parser.add_argument("--stop-file", help="client: stop asking once this file exists")
    parser.add_argument("--interval", type=float, default=0.05, help="client: seconds per ask")
    parser.add_argument("--window", type=int, default=4, help="client: open tasks at most")
    parser.add_argument("--reask-after", type=float, default=0.0, help="0: never re-ask")
    parser.add_argument("--max-tasks", type=int, default=5000)
    parser.add_argument("--finish-within", type=float, default=30.0)
    parser.add_argument(
        "--task-timeout", type=float, default=0.0, help="client: the library's task timeout"
    )
    parser.add_argument(
        "--frames-per-second",
        type=float,
        default=0.0,
        help="worker: bridged audio frames sent to the client; client: expect them (0: none)",
    )


def audio_frame(index: int) -> OutputAudioRawFrame:
    """Frame ``index`` of the stream: its bytes and its pts both say which it is."""
    frame = OutputAudioRawFrame(
        audio=audio_chunk(index), sample_rate=AUDIO_SAMPLE_RATE, num_channels=1
    )
    frame.pts = index * FRAME_PTS_STEP
    return frame


async def stream_frames(send: Callable[[Any], Awaitable[None]], args: argparse.Namespace) -> None:
    """Worker: audio frames at a steady pace until the stop file exists, then the end."""
    period = 1.0 / args.frames_per_second
    stop_file = Path(args.stop_file) if args.stop_file else None
    sent = 0
    emit("frames_started")
    while stop_file is None or not stop_file.exists():
        await send(audio_frame(sent))
        sent += 1
        await asyncio.sleep(period)
    await send(TextFrame(text=f"{FRAMES_END}{sent}"))
    emit("frames_sent", count=sent)


class FrameTally:
    """The client's record of the worker's frames."""

    def __init__(self) -> None:
        self.indexes: list[int] = []
        self.corrupt = 0
        self.expected: int | None = None
        self.ended = asyncio.Event()
        self._jumps = 0

    def take(self, frame: Any) -> None:
        text = getattr(frame, "text", None)
        if isinstance(text, str) and text.startswith(FRAMES_END):
            self.expected = int(text[len(FRAMES_END) :])
            self.ended.set()
            return
        pts = getattr(frame, "pts", None)
        if not isinstance(pts, int) or pts % FRAME_PTS_STEP:
            self.corrupt += 1
            emit("frame_corrupt", type=type(frame).__name__, pts=pts)
            return
        index = pts // FRAME_PTS_STEP
        if getattr(frame, "audio", None) != audio_chunk(index):
            self.corrupt += 1
            emit("frame_corrupt", type=type(frame).__name__, index=index)
        last = self.indexes[-1] if self.indexes else -1
        if index != last + 1 and self._jumps < 20:
            self._jumps += 1
            emit("frame_jump", after=last, got=index)
        self.indexes.append(index)

    def report(self) -> dict[str, Any]:
        seen = set(self.indexes)
        pairs = zip(self.indexes, self.indexes[1:], strict=False)
        missing = sorted(set(range(self.expected)) - seen) if self.expected is not None else []
        report = {
            "expected": self.expected,
            "received": len(self.indexes),
            "duplicates": len(self.indexes) - len(seen),
            "out_of_order": sum(1 for a, b in pairs if b <= a),
            "corrupt": self.corrupt,
            "missing": len(missing),
            "first_missing": missing[:20],
            "beyond": sorted(i for i in seen if self.expected is not None and i >= self.expected),
        }
        report["ok"] = (
            self.expected is not None
            and report["received"] == self.expected
            and not missing
            and report["duplicates"] == report["out_of_order"] == report["corrupt"] == 0
        )
        return report


def answer_for(key: str) -> dict[str, Any]:
    return {"key": key, "value": f"done:{key}", "pid": os.getpid()}


class WorkerState:
    """The worker's cache: each key runs once."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}

    def handle(self, payload: dict[str, Any] | None) -> dict[str, Any]:
        key = str((payload or {}).get("key"))
        cached = self.results.get(key)
        if cached is not None:
            emit("repeat", key=key)
            return cached
        result = answer_for(key)
        self.results[key] = result
        emit("executed", key=key)
        return result


class TaskLoop:
    """The client's stream of tasks."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.peer_ready = asyncio.Event()
        self.gave_up = asyncio.Event()
        self.answers: dict[str, dict[str, Any]] = {}
        self.open: dict[str, tuple[float, int]] = {}  # key -> (last asked, attempts)
        self.duplicates = 0
        self.wrong = 0
        self.reasks = 0
        self.timed_out: dict[str, str] = {}  # key -> the library's reason
        self.late = 0
        self.frames = FrameTally() if args.frames_per_second else None

    def timeout(self, key: str, reason: str) -> None:
        """The library gave up on this task (its timeout)."""
        if key in self.open:
            del self.open[key]
            self.timed_out[key] = reason
            emit("task_timeout", key=key, reason=reason)

    def answer(self, response: dict[str, Any] | None) -> None:
        key = str((response or {}).get("key"))
        if key in self.answers:
            self.duplicates += 1
            return
        if key in self.timed_out:
            self.late += 1
            emit("late_answer", key=key)
            return
        if key not in self.open:
            self.wrong += 1
            emit("unexpected_answer", key=key)
            return
        if response != {**answer_for(key), "pid": (response or {}).get("pid")}:
            self.wrong += 1
        self.answers[key] = response or {}
        del self.open[key]
        if len(self.answers) % 10 == 0:
            frames = len(self.frames.indexes) if self.frames else 0
            emit("progress", answered=len(self.answers), frames=frames)

    async def run(self, ask: Callable[[str], Awaitable[None]]) -> dict[str, Any]:
        args = self.args
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(self.peer_ready.wait(), args.timeout)
        emit("started")
        stop_file = Path(args.stop_file) if args.stop_file else None
        sent = 0
        stopping_since: float | None = None
        while not self.gave_up.is_set():
            now = loop.time()
            for key, (asked, attempts) in list(self.open.items()):
                if args.reask_after and now - asked >= args.reask_after:
                    self.open[key] = (now, attempts + 1)
                    self.reasks += 1
                    emit("reask", key=key, attempt=attempts + 1)
                    await ask(key)
            stopping = sent >= args.max_tasks or (stop_file is not None and stop_file.exists())
            if stopping:
                stopping_since = stopping_since or now
                frames_over = self.frames is None or self.frames.ended.is_set()
                if (not self.open and frames_over) or now - stopping_since > args.finish_within:
                    break
            elif len(self.open) < args.window:
                key = f"{args.name}-{sent}"
                sent += 1
                self.open[key] = (now, 1)
                await ask(key)
            await asyncio.sleep(args.interval)
        return {
            "sent": sent,
            "answered": len(self.answers),
            "unanswered": sorted(self.open),
            "duplicates": self.duplicates,
            "wrong": self.wrong,
            "reasks": self.reasks,
            "timed_out": sorted(self.timed_out),
            "timeout_reasons": sorted(set(self.timed_out.values())),
            "late": self.late,
            "frames": self.frames.report() if self.frames else None,
            "gave_up": self.gave_up.is_set(),
        }


def proxy_stats(proxy: Any) -> dict[str, Any]:
    """The reconnecting proxy's counters (an empty dict for the stock proxy)."""
    stats = getattr(proxy, "reconnect_stats", None)
    if stats is None:
        return {}
    return {
        "connects": stats.connects,
        "reconnects": stats.reconnects,
        "sent": stats.sent,
        "flushed": stats.flushed,
        "buffered": stats.buffered,
        "overflowed": stats.overflowed,
        "dropped_stopped": stats.dropped_stopped,
        "gave_up": stats.gave_up,
        "resent": stats.resent,
        "resumes": stats.resumes,
        "gaps": stats.gaps,
        "duplicates": stats.duplicates,
        "unacked": stats.unacked,
    }


def attach_proxy_events(proxy: Any, on_gave_up: Callable[[], None] | None = None) -> None:
    """Report the proxy's events as JSON lines."""
    count = {"connected": 0}

    @proxy.event_handler("on_connected")
    async def on_connected(_proxy: Any, _ws: Any) -> None:
        count["connected"] += 1
        emit("connected", n=count["connected"])

    @proxy.event_handler("on_disconnected")
    async def on_disconnected(_proxy: Any, ws: Any) -> None:
        emit("disconnected", code=close_code(ws), stats=proxy_stats(proxy))
        if on_gave_up is not None:
            on_gave_up()

    if hasattr(proxy, "reconnect_stats"):

        @proxy.event_handler("on_reconnecting")
        async def on_reconnecting(_proxy: Any, disconnect: Any, attempt: int, delay: float) -> None:
            emit(
                "reconnecting",
                code=disconnect.code,
                status=disconnect.status,
                error=disconnect.error,
                attempt=attempt,
                delay=round(delay, 3),
            )

        @proxy.event_handler("on_reconnected")
        async def on_reconnected(_proxy: Any, _ws: Any, attempts: int) -> None:
            emit("reconnected", attempts=attempts)

        @proxy.event_handler("on_resume_gap")
        async def on_resume_gap(_proxy: Any, result: str, epoch: str) -> None:
            emit("resume_gap", result=result, epoch=epoch)


async def report_stats_forever(proxy: Any, every: float = 0.5) -> None:
    """Emit the proxy's counters whenever they change."""
    last: dict[str, Any] = {}
    while True:
        stats = proxy_stats(proxy)
        if stats and stats != last:
            emit("stats", **stats)
            last = stats
        await asyncio.sleep(every)
