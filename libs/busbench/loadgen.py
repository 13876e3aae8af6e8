"""The load generator: its own process, so its CPU is measured apart from the servers.

    python -m busbench.loadgen JOB.json RESULT.json

A job is either ``pairs`` (connect sets of agent pairs, run timed phases over them)
or ``idle`` (open a share of many quiet agent sockets and hold them while the
orchestrator, ``busbench.idle``, measures the server). A ``pairs`` job with
``sessions`` runs over session sockets (``busbench.sessionload``). Clients are raw
``websockets`` asyncio connections on uvloop; messages are built and checked from
byte templates (see ``busbench.payloads``), never through a serializer. Every wait
is bounded. The generator reads ``/proc/<pid>/stat`` of the measured processes and
of itself at the edges of each measured window.
"""

import asyncio
import contextlib
import errno
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from busbench.payloads import SEQ_WIDTH, Template, decode_template

CLK_TCK = os.sysconf("SC_CLK_TCK")
S = TypeVar("S")
now_ns = time.perf_counter_ns


def proc_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds, all threads; zeros when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0.0, 0.0
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_times() -> dict[str, float]:
    """The machine's CPU time by kind from /proc/stat, seconds summed over cores."""
    try:
        with open("/proc/stat") as f:
            first = f.readline().split()
    except OSError:
        return {}
    return {k: int(v) / CLK_TCK for k, v in zip(_STAT_FIELDS, first[1:], strict=False)}


def proc_io(pid: int) -> tuple[int, int]:
    """(rchar, wchar): bytes a process passed to read and write syscalls (sockets too)."""
    read = written = 0
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    read = int(line.split()[1])
                elif line.startswith("wchar:"):
                    written = int(line.split()[1])
    except OSError:
        pass
    return read, written


def proc_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def raise_nofile(wanted: int) -> dict[str, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"soft": soft, "hard": hard, "wanted": wanted}


def _started(argvs: list[list[str]]) -> list["subprocess.Popen[bytes]"]:
    """Processes run beside a phase (a fork and exec each: the loop hardly notices)."""
    return [subprocess.Popen(argv) for argv in argvs]


def _stopped(procs: list["subprocess.Popen[bytes]"]) -> list[str]:
    """Terminate processes run beside a phase; how each that had failed on its own ended."""
    errors = []
    for proc in procs:
        failed = proc.poll()
        if failed is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        elif failed:
            errors.append(f"{proc.args!r} exited {failed} during the phase")
    return errors


@dataclass
class Counters:
    sent: int = 0
    ok: int = 0
    corrupt: int = 0
    duplicate: int = 0
    late: int = 0
    unexpected: int = 0
    registry: int = 0
    lost: int = 0
    bad_request: int = 0
    closed: int = 0


class PairTemplates:
    """A payload's request and reply templates; several variants for audio."""

    __slots__ = ("n", "rep_off", "reps", "req_off", "reqs")

    def __init__(self, variants: list[list[list[str]]]) -> None:
        self.reqs: list[Template] = [decode_template(v[0]) for v in variants]
        self.reps: list[Template] = [decode_template(v[1]) for v in variants]
        self.n = len(variants)
        self.req_off = self.reqs[0].offset
        self.rep_off = self.reps[0].offset


class Pair:
    __slots__ = ("a", "b", "cur", "given_up", "i", "next_seq", "outstanding", "templates")

    def __init__(self, i: int, templates: dict[str, PairTemplates]) -> None:
        self.i = i
        self.templates = templates
        self.cur: PairTemplates = next(iter(templates.values()))
        self.a: ClientConnection | None = None
        self.b: ClientConnection | None = None
        self.next_seq = 0
        self.outstanding: dict[bytes, int] = {}
        self.given_up: set[bytes] = set()


@dataclass
class Phase:
    """What the readers record into while a phase runs."""

    closed_loop: bool = False
    stopping: bool = False
    in_window: bool = False
    win_start: int = 0
    win_end: int = 1 << 62
    win_completed: int = 0
    rtts: list[int] = field(default_factory=list)
    # With a phase's ``trace``: each timed round trip's send time (``now_ns``), in the
    # order of ``rtts``.
    sent_at: list[int] | None = None
    c: Counters = field(default_factory=Counters)


class PairsRun:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.phase = Phase()
        self.sets: dict[str, list[Pair]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.connect_errors: list[str] = []
        self.pids: dict[str, int] = {k: int(v) for k, v in job["pids"].items()}

    # ---- connections ------------------------------------------------------

    async def _open(self, url: str) -> ClientConnection:
        return await connect(
            url,
            compression="deflate" if self.job.get("compression") == "deflate" else None,
            max_size=1 << 22,
            ping_interval=None,
            open_timeout=20,
            close_timeout=2,
        )

    def _url(self, base: str, name: str, peer: str, query: str) -> str:
        """The URL one agent socket dials (a subclass adds session parameters)."""
        return f"{base}/ws/{name}?peer={peer}&{query}"

    async def _first_message(self, ws: ClientConnection, counters: Counters) -> None:
        """Skip the registry message a hub or stock proxy sends before anything else."""
        data = await asyncio.wait_for(ws.recv(), timeout=20)
        if isinstance(data, str):
            data = data.encode()
        if b"Registry" not in data:
            raise RuntimeError(f"first message is not a registry message: {data[:80]!r}")
        counters.registry += 1

    async def connect_set(self, spec: dict[str, Any]) -> None:
        pairs = []
        for i, tpl in enumerate(spec["templates"]):
            templates = {payload: PairTemplates(variants) for payload, variants in tpl.items()}
            pairs.append(Pair(i, templates))
        sem = asyncio.Semaphore(32)
        fmt = spec["format"]
        query = f"format={fmt}&dialect=subagents"

        async def open_pair(pair: Pair) -> None:
            a, b = spec["a_names"][pair.i], spec["b_names"][pair.i]
            async with sem:
                pair.a = await self._open(self._url(spec["url_a"], a, b, query))
                if spec.get("url_b"):
                    pair.b = await self._open(self._url(spec["url_b"], b, a, query))

        await asyncio.gather(*(open_pair(p) for p in pairs))
        if self.job.get("expect_registry"):
            boot = Counters()
            socks = [s for p in pairs for s in (p.a, p.b) if s is not None]
            await asyncio.gather(*(self._first_message(s, boot) for s in socks))
        for pair in pairs:
            self.tasks.append(asyncio.create_task(self._a_reader(pair)))
            if pair.b is not None:
                self.tasks.append(asyncio.create_task(self._b_reader(pair)))
        self.sets[spec["name"]] = pairs

    async def close_all(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        socks = [s for ps in self.sets.values() for p in ps for s in (p.a, p.b) if s is not None]
        sem = asyncio.Semaphore(64)

        async def close(ws: ClientConnection) -> None:
            async with sem:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 3)

        await asyncio.gather(*(close(s) for s in socks))

    # ---- readers ----------------------------------------------------------

    def _classify_stray(self, pair: Pair, data: bytes, seq: bytes, c: Counters) -> None:
        if seq in pair.given_up:
            c.late += 1
            pair.given_up.discard(seq)
        elif seq.isdigit() and int(seq) < pair.next_seq:
            c.duplicate += 1
        elif b"Registry" in data:
            c.registry += 1
        else:
            c.unexpected += 1

    def _take_reply(self, pair: Pair, data: bytes, t: int) -> bool:
        """Check and time a reply that reached ``a``; True when the closed loop sends on."""
        ph = self.phase
        cur = pair.cur
        off = cur.rep_off
        seq = data[off : off + SEQ_WIDTH]
        sent = pair.outstanding.pop(seq, None)
        if sent is None:
            self._classify_stray(pair, data, seq, ph.c)
            return False
        tpl = cur.reps[(seq[-1] - 48) % cur.n]
        if data == tpl.prefix + seq + tpl.suffix:
            ph.c.ok += 1
        else:
            ph.c.corrupt += 1
        if ph.in_window:
            ph.win_completed += 1
        if ph.win_start <= sent < ph.win_end:
            ph.rtts.append(t - sent)
            if ph.sent_at is not None:
                ph.sent_at.append(sent)
        return ph.closed_loop and not ph.stopping

    def _take_request(self, pair: Pair, data: bytes) -> bytes | None:
        """Check a request that reached ``b``; the echo to send back, or None."""
        cur = pair.cur
        off = cur.req_off
        seq = data[off : off + SEQ_WIDTH]
        v = (seq[-1] - 48) % cur.n if seq else 0
        req = cur.reqs[v]
        if data != req.prefix + seq + req.suffix:
            if b"Registry" in data:
                self.phase.c.registry += 1
            else:
                self.phase.c.bad_request += 1
            return None
        rep = cur.reps[v]
        return rep.prefix + seq + rep.suffix

    async def _a_reader(self, pair: Pair) -> None:
        ws = pair.a
        assert ws is not None
        try:
            async for data in ws:
                if self._take_reply(pair, data, now_ns()):  # type: ignore[arg-type]
                    await self._send(pair, self.phase)
        except ConnectionClosed:
            self.phase.c.closed += 1

    async def _b_reader(self, pair: Pair) -> None:
        ws = pair.b
        assert ws is not None
        send = ws.send
        try:
            async for data in ws:
                echo = self._take_request(pair, data)  # type: ignore[arg-type]
                if echo is not None:
                    await send(echo)
        except ConnectionClosed:
            self.phase.c.closed += 1

    def _request(self, pair: Pair, ph: Phase) -> bytes:
        """The next request of ``pair``, counted and timed as sent."""
        n = pair.next_seq
        seq = b"%010d" % n
        pair.next_seq = n + 1
        cur = pair.cur
        req = cur.reqs[n % 10 % cur.n]
        ph.c.sent += 1
        pair.outstanding[seq] = now_ns()
        return req.prefix + seq + req.suffix

    async def _send(self, pair: Pair, ph: Phase) -> None:
        ws = pair.a
        assert ws is not None
        await ws.send(self._request(pair, ph))

    # ---- phases -----------------------------------------------------------

    def _cpu(self) -> dict[str, tuple[float, float]]:
        out = {name: proc_times(pid) for name, pid in self.pids.items()}
        out["loadgen"] = proc_times(os.getpid())
        return out

    def _machine(self) -> dict[str, float]:
        return machine_times()

    async def _drain(self, pairs: list[Pair], timeout: float) -> None:
        for _ in range(max(1, int(timeout / 0.01))):
            if not any(p.outstanding for p in pairs):
                break
            await asyncio.sleep(0.01)
        for p in pairs:
            self.phase.c.lost += len(p.outstanding)
            p.given_up.update(p.outstanding)
            p.outstanding.clear()

    async def run_phase(self, spec: dict[str, Any]) -> dict[str, Any]:
        pairs = self.sets[spec["set"]]
        for p in pairs:
            p.cur = p.templates[spec["payload"]]
        closed_loop = spec["kind"] == "saturation"
        ph = Phase(closed_loop=closed_loop, sent_at=[] if spec.get("trace") else None)
        self.phase = ph
        warmup, duration = spec["warmup"], spec["duration"]
        profile_procs: list[subprocess.Popen[bytes]] = []
        # Load beside the phase (a control variant's burner): from the warm-up on, so
        # the window measures a steady state, until the window closes.
        beside = _started(spec.get("beside", []))
        lags: list[int] = []
        t0 = now_ns()
        win_start = t0 + int(warmup * 1e9)
        win_end = win_start + int(duration * 1e9)
        ph.win_start, ph.win_end = win_start, win_end
        cpu0: dict[str, tuple[float, float]] = {}
        machine0: dict[str, float] = {}
        machine: dict[str, float] = {}
        io0: dict[str, tuple[int, int]] = {}
        io: dict[str, list[int]] = {}
        wall0 = 0

        def open_window() -> None:
            nonlocal cpu0, wall0
            cpu0 = self._cpu()
            io0.update({k: proc_io(p) for k, p in self.pids.items()})
            machine0.update(self._machine())
            wall0 = now_ns()
            ph.in_window = True
            for argv in spec.get("profile", []):
                profile_procs.append(
                    subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                )

        def close_window() -> tuple[dict[str, float], dict[str, float], float, int]:
            ph.in_window = False
            cpu1 = self._cpu()
            machine.update({k: v - machine0.get(k, 0.0) for k, v in self._machine().items()})
            for k, p in self.pids.items():
                r, w = proc_io(p)
                io[k] = [r - io0[k][0], w - io0[k][1]]
            wall = (now_ns() - wall0) / 1e9
            total = {k: sum(cpu1[k]) - sum(cpu0[k]) for k in cpu1}
            system = {k: cpu1[k][1] - cpu0[k][1] for k in cpu1}
            return total, system, wall, ph.win_completed

        if closed_loop:
            inflight = spec["inflight"]
            for _ in range(inflight):
                for p in pairs:
                    await self._send(p, ph)
            await asyncio.sleep(max(0.0, (win_start - now_ns()) / 1e9))
            open_window()
            await asyncio.sleep(max(0.0, (win_end - now_ns()) / 1e9))
            cpu, cpu_sys, wall, completed = close_window()
            ph.stopping = True
        else:
            rate = spec["rate"]
            interval = 1e9 / rate
            k = len(pairs)
            j = 0
            opened = False
            end_all = win_end
            while True:
                due = t0 + int(j * interval)
                if due >= end_all:
                    break
                t = now_ns()
                if not opened and t >= win_start:
                    open_window()
                    opened = True
                if due > t:
                    # uvloop's timers count whole milliseconds: a shorter sleep returns
                    # at once and the loop would spin. Sleep >= 1 ms, then send all due.
                    await asyncio.sleep(max(0.001, (due - t) / 1e9))
                    continue
                if win_start <= due < win_end:
                    lags.append(t - due)
                await self._send(pairs[j % k], ph)
                j += 1
                if t - due > 1_000_000 and j % 16 == 0:
                    await asyncio.sleep(0)  # behind schedule: let the readers run
            if not opened:
                open_window()
            cpu, cpu_sys, wall, completed = close_window()
        beside_errors = _stopped(beside)
        await self._drain(pairs, spec.get("drain", 5.0))
        profile_errors = []
        for proc in profile_procs:
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode:
                profile_errors.append(err.decode(errors="replace")[-500:])
        if ph.sent_at is not None:
            _write_trace(spec["trace"], ph.sent_at, ph.rtts)
        rtts = sorted(ph.rtts)
        lags.sort()
        return {
            "name": spec["name"],
            "set": spec["set"],
            "payload": spec["payload"],
            "kind": spec["kind"],
            "pairs": len(pairs),
            "rate": spec.get("rate"),
            "inflight": spec.get("inflight"),
            "window_s": wall,
            "completed": completed,
            "rt_per_s": completed / wall if wall > 0 else 0.0,
            "relayed": 2 * completed,
            "cpu_s": cpu,
            "cpu_sys_s": cpu_sys,
            "machine_s": machine,
            "io_bytes": io,
            "rtt_ms": percentiles(rtts),
            "rtt_samples": len(rtts),
            "send_lag_ms": percentiles(lags) if lags else None,
            "counters": ph.c.__dict__,
            "request_bytes": pairs[0].cur.reqs[0].size,
            "reply_bytes": pairs[0].cur.reps[0].size,
            "profile_errors": profile_errors,
            "beside_errors": beside_errors,
        }

    async def run(self) -> dict[str, Any]:
        results: dict[str, Any] = {"phases": [], "connect_s": 0.0}
        t = time.monotonic()
        try:
            for spec in self.job["sets"]:
                await self.connect_set(spec)
            results["connect_s"] = time.monotonic() - t
            first = next(iter(self.sets.values()))[0].a
            if first is not None and first.response is not None:
                results["extensions"] = first.response.headers.get("Sec-WebSocket-Extensions")
            for spec in self.job["phases"]:
                results["phases"].append(await self.run_phase(spec))
        finally:
            await self.close_all()
        return results


def _write_trace(path: str, sent_at: list[int], rtts: list[int]) -> None:
    """One line per timed round trip: its send time and its length, in ns
    (``time.perf_counter_ns``: CLOCK_MONOTONIC on Linux, as ``perf -k CLOCK_MONOTONIC``)."""
    with open(path, "w") as out:
        out.writelines(f"{sent} {rtt}\n" for sent, rtt in zip(sent_at, rtts, strict=True))


def percentiles(sorted_ns: list[int]) -> dict[str, float] | None:
    if not sorted_ns:
        return None
    n = len(sorted_ns)

    def at(q: float) -> float:
        return sorted_ns[min(n - 1, int(q * n))] / 1e6

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": sorted_ns[-1] / 1e6,
        "mean": sum(sorted_ns) / n / 1e6,
    }


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def idle_name(i: int, tag: str, prefix: str = "idle") -> tuple[str, str]:
    """Socket ``i`` of an idle job: (its agent name, its peer). Sockets 2n and 2n+1 are
    the pair ``idleA{n}``/``idleB{n}`` (``{prefix}A{n}``...), each watching the other."""
    n, side = divmod(i, 2)
    a, b = f"{prefix}A{n}{tag}", f"{prefix}B{n}{tag}"
    return (a, b) if side == 0 else (b, a)


def source_address(i: int, per_addr: int) -> str:
    """Loopback source address of socket ``i``: 127.0.0.1 for the first ``per_addr``
    sockets, 127.0.0.2 for the next, ... (one address to one server port has as many
    connections as ephemeral ports: ~28,000 by default)."""
    k = i // per_addr + 1
    if k > 254:
        raise ValueError(f"socket {i}: more than 254 source addresses at {per_addr} each")
    return f"127.0.0.{k}"


class ConnectTimeout(TimeoutError):
    """The TCP connection itself was not made in time (SYNs unanswered: a full backlog)."""


def _error_key(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    name = type(exc).__name__
    if isinstance(exc, OSError) and exc.errno:
        return f"{name} {errno.errorcode.get(exc.errno, exc.errno)}"
    return name


class IdleSockets:
    """One load generator's share of the idle sockets, driven by the orchestrator.

    Lines on stdout tell the orchestrator where it is (``warmed``, ``opened``); lines on
    stdin tell it to go on (``open``, ``close``). End of stdin, or ``hold_timeout``
    seconds without a word, closes everything: the process never outlives its job.
    """

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.socks: list[ClientConnection] = []
        self.errors: dict[str, int] = {}
        self.sem = asyncio.Semaphore(job.get("concurrency", 32))
        self.prefix: str = job.get("prefix", "idle")
        ping = job.get("ping_interval") or None
        self.ping_interval: float | None = ping
        self.ping_timeout: float | None = job.get("ping_timeout") if ping else None

    async def _connect(self, i: int, tag: str, deadline: float) -> ClientConnection | None:
        return await self.attempt(self.dial, i, tag, deadline)

    async def attempt(
        self,
        dial: Callable[[int, str, str, int, float], Awaitable[S]],
        i: int,
        tag: str,
        deadline: float,
    ) -> S | None:
        """``dial`` socket ``i`` to the job's node, ``concurrency`` at a time, before
        ``deadline``; None (counted in ``errors``) when it fails or is not tried."""
        job = self.job
        async with self.sem:
            left = deadline - time.monotonic()
            if left <= 0:
                self.errors["not tried (open deadline)"] = (
                    self.errors.get("not tried (open deadline)", 0) + 1
                )
                return None
            try:
                return await dial(i, tag, job["url"], job["port"], min(left, 30))
            except (OSError, InvalidHandshake, TimeoutError, EOFError) as exc:
                key = _error_key(exc)
                self.errors[key] = self.errors.get(key, 0) + 1
                return None

    def bound_socket(self, i: int) -> socket.socket:
        """A non-blocking TCP socket bound to socket ``i``'s source address."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # The port is picked at connect(), by 4-tuple, as for an unbound socket:
            # the bench takes no port other programs on the machine could use.
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source_address(i, self.job["per_addr"]), 0))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def tcp_connect(self, i: int, port: int, timeout: float) -> socket.socket:
        """A TCP connection from socket ``i``'s source address to ``port``, non-blocking;
        one not made within ``timeout`` raises ``ConnectTimeout``."""
        sock = self.bound_socket(i)
        try:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (self.job["host"], port)), timeout)
            except TimeoutError:
                raise ConnectTimeout from None
        except BaseException:
            sock.close()
            raise
        return sock

    def path(self, i: int, tag: str) -> str:
        """Socket ``i``'s URL path: its agent name, its peer, JSON, the subagents dialect."""
        name, peer = idle_name(i, tag, self.prefix)
        return f"/ws/{name}?peer={peer}&format=json&dialect=subagents"

    async def dial(self, i: int, tag: str, url: str, port: int, timeout: float) -> ClientConnection:
        """Open socket ``i`` (its name, its peer, its source address) to ``url``; raises.

        ``timeout`` bounds the TCP connection and the upgrade together; a TCP connection
        not made in time raises ``ConnectTimeout``."""
        start = time.monotonic()
        sock = await self.tcp_connect(i, port, timeout)
        try:
            timeout = max(0.001, timeout - (time.monotonic() - start))
            return await connect(
                url + self.path(i, tag),
                sock=sock,
                compression="deflate" if self.job.get("compression") == "deflate" else None,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                open_timeout=timeout,
                close_timeout=2,
            )
        except BaseException:
            sock.close()
            raise

    async def warm(self, count: int) -> None:
        """The first sockets pay one-time costs (lazy imports, caches, pools)."""
        deadline = time.monotonic() + 60
        socks = await asyncio.gather(*(self._connect(i, "w", deadline) for i in range(count)))
        await asyncio.gather(*(ws.close() for ws in socks if ws), return_exceptions=True)
        self.errors.clear()

    async def open(self) -> float:
        job = self.job
        first, count = job["first"], job["count"]
        deadline = time.monotonic() + job.get("open_timeout", 120)
        t = time.monotonic()
        socks = await asyncio.gather(
            *(self._connect(i, job["tag"], deadline) for i in range(first, first + count))
        )
        self.socks = [ws for ws in socks if ws is not None]
        return time.monotonic() - t

    def still_open(self) -> tuple[int, dict[str, int]]:
        closed: dict[str, int] = {}
        for ws in self.socks:
            if ws.close_code is not None:
                key = f"{ws.close_code} {ws.close_reason or ''}".strip()
                closed[key] = closed.get(key, 0) + 1
        return len(self.socks) - sum(closed.values()), closed

    async def close(self) -> None:
        close_sem = asyncio.Semaphore(256)

        async def close(ws: ClientConnection) -> None:
            async with close_sem:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 5)

        await asyncio.gather(*(close(ws) for ws in self.socks))


def _say(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")
    sys.stdout.flush()


async def _word(reader: asyncio.StreamReader, timeout: float) -> str:
    """The orchestrator's next line: ``""`` on end of input or after ``timeout``."""
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        return ""
    return line.decode().strip()


async def run_idle(job: dict[str, Any]) -> dict[str, Any]:
    """Open this generator's share of idle agent sockets and hold them until told."""
    limits = raise_nofile(job["count"] + 256)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    idle = IdleSockets(job)
    if job.get("warm"):
        await idle.warm(job["warm"])
    _say("warmed", nofile=limits)
    result: dict[str, Any] = {"count": job["count"], "nofile": limits, "open_s": None}
    if await _word(reader, 120) == "open":
        result["open_s"] = await idle.open()
        _say("opened", opened=len(idle.socks), errors=idle.errors)
        await _word(reader, job.get("hold_timeout", 600))
    still_open, closed = idle.still_open()
    result.update(
        opened=len(idle.socks),
        still_open=still_open,
        closed_by_server=closed,
        errors=idle.errors,
    )
    await idle.close()
    return result


async def main_async(job: dict[str, Any]) -> dict[str, Any]:
    if job["kind"] == "idle":
        return await run_idle(job)
    if job["kind"] == "storm":
        from busbench.stormclient import run_storm

        return await run_storm(job)
    raise_nofile(4096)
    if job.get("sessions"):
        from busbench.sessionload import SessionPairsRun

        return await SessionPairsRun(job).run()
    return await PairsRun(job).run()


def main() -> None:
    job_path, result_path = sys.argv[1], sys.argv[2]
    with open(job_path) as f:
        job = json.load(f)
    try:
        import uvloop

        result = uvloop.run(main_async(job))
    except ImportError:
        result = asyncio.run(main_async(job))
    result["pid"] = os.getpid()  # what ran when is read by pid (bench/tail_sources.py)
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
