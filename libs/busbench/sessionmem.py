"""Redis memory and CPU per session: N agents, each sent M messages it never acknowledges.

On one fresh hub node (sessions on) and a fresh Redis, per payload-format combination,
two variants side by side: N plain sockets, then N session sockets. Each socket
``rsA{i}`` is paired with a plain partner ``rsB{i}`` (peers of each other); the partner
sends it M messages (the workload's request: targeted for the task, routed by the
pairing for the audio frame). A session socket reads them and never acknowledges, so
every message stays in its stream. Redis ``used_memory`` (``INFO memory``) is read

- before the sockets open,
- once they are open and announced (idle sessions),
- after every message arrived (M kept per session),
- after every socket closed (away sessions: kept for ``--resume-window``),

and Redis CPU (``used_cpu_sys + used_cpu_user``, ``INFO cpu``) and the node's CPU
(``/proc``) over the sends. The clients run in the orchestrator (their CPU is not
measured here). Every wait is bounded.
"""

import asyncio
import contextlib
import dataclasses
import secrets
import time
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from busbench.idle import RedisInfo
from busbench.loadgen import proc_times
from busbench.payloads import Builder, Template
from busclient.session import session_url
from buswire import sessionframe

KINDS = ("plain", "session")
_WAIT_S = 30.0
WARM_SESSIONS = 100


@dataclass
class MemoryPlan:
    """What the memory measurement does; the CLI's ``--resume-*`` flags."""

    sessions: int
    messages: int
    combos: list[str]
    away_s: float = 2.0
    settle_s: float = 1.0
    concurrency: int = 32

    def variants(self) -> list[tuple[str, str]]:
        """(plain or session, combination), plain first for each combination."""
        return [(kind, combo) for combo in self.combos for kind in KINDS]


def agent(side: str, i: int, tag: str) -> str:
    """Socket ``i``'s agent name on ``side`` A (measured) or B (its partner): one
    width for every ``i``, so a template's names can be swapped byte for byte."""
    return f"rs{side}{i:05d}{tag}"


def retarget(t: Template, i: int, tag: str) -> Template:
    """Template ``t`` (built for pair 0) for pair ``i``: the names replaced."""
    swaps = [(agent(s, 0, tag).encode(), agent(s, i, tag).encode()) for s in "AB"]

    def swap(data: bytes) -> bytes:
        for old, new in swaps:
            data = data.replace(old, new)
        return data

    return Template(swap(t.prefix), swap(t.suffix))


def used_memory(info: RedisInfo) -> int:
    return int(info.read("memory")["used_memory"])


def redis_cpu(info: RedisInfo) -> float:
    cpu = info.read("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def keyspace(info: RedisInfo) -> str:
    return info.read("keyspace").get("db0", "")


def measure(
    plan: MemoryPlan,
    builder: Builder,
    url: str,
    redis: tuple[int, int],
    hub_pid: int,
    log: Any,
) -> dict[str, Any]:
    """Every variant of ``plan`` in turn on the node at ``url``; ``redis`` is (pid, port)."""
    info = RedisInfo(redis[1])
    out: dict[str, Any] = {"sessions": plan.sessions, "messages": plan.messages, "variants": []}
    try:
        # Unmeasured first: Redis's first sessions, streams and subscribers of a run
        # grow its tables and load the scripts; the measured variants should not pay.
        warm = dataclasses.replace(plan, sessions=min(plan.sessions, WARM_SESSIONS))
        for k, combo in enumerate(plan.combos):
            for kind in KINDS:
                log(f"resume memory: warm-up, {warm.sessions} {kind} sockets, {combo}")
                asyncio.run(_Variant(warm, builder, url, info, hub_pid, kind, combo, f"w{k}").run())
        for k, (kind, combo) in enumerate(plan.variants()):
            log(f"resume memory: {plan.sessions:,} {kind} sockets, {combo}, {plan.messages} each")
            probe = _Variant(plan, builder, url, info, hub_pid, kind, combo, f"m{k}")
            out["variants"].append(asyncio.run(probe.run()))
    finally:
        info.close()
    return out


class _Variant:
    def __init__(
        self,
        plan: MemoryPlan,
        builder: Builder,
        url: str,
        info: RedisInfo,
        hub_pid: int,
        kind: str,
        combo: str,
        tag: str,
    ) -> None:
        self.plan, self.url, self.info, self.hub_pid = plan, url, info, hub_pid
        self.kind, self.combo, self.tag = kind, combo, tag
        payload, _, self.fmt = combo.partition("-")
        # The partner's request to the measured socket: b -> a.
        request, _ = builder.pair(payload, self.fmt, agent("B", 0, tag), agent("A", 0, tag))
        self.template = request
        self.a: list[ClientConnection] = []
        self.b: list[ClientConnection] = []
        self.got = 0
        self.announced = 0
        self.other = 0

    async def _open(self, i: int, sem: asyncio.Semaphore) -> tuple[ClientConnection, ...]:
        a, b = agent("A", i, self.tag), agent("B", i, self.tag)
        query = f"format={self.fmt}&dialect=subagents"
        a_url = f"{self.url}/ws/{a}?peer={b}&{query}"
        if self.kind == "session":
            a_url = session_url(a_url, secrets.token_urlsafe(12), 0)
        opts: dict[str, Any] = {
            "compression": None,
            "ping_interval": None,
            "open_timeout": _WAIT_S,
            "close_timeout": 2,
            "max_size": 1 << 22,
        }
        async with sem:
            ws_a = await connect(a_url, **opts)
            ws_b = await connect(f"{self.url}/ws/{b}?peer={a}&{query}", **opts)
        return ws_a, ws_b

    async def _read_a(self, ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            async for data in ws:
                raw = data if isinstance(data, bytes) else data.encode()
                if self.kind == "session":
                    frame = sessionframe.decode(raw)
                    kind, payload = frame.kind, frame.payload
                else:
                    kind, payload = sessionframe.Kind.MESSAGE, raw
                if b"Registry" in payload:
                    self.announced += 1
                elif kind is sessionframe.Kind.MESSAGE:
                    self.got += 1
                else:
                    self.other += 1

    @staticmethod
    async def _drain(ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            async for _ in ws:
                pass

    async def _until(self, done: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def run(self) -> dict[str, Any]:
        plan, info = self.plan, self.info
        n, m = plan.sessions, plan.messages
        mem = {"before": used_memory(info)}
        keys = {"before": keyspace(info)}
        sem = asyncio.Semaphore(plan.concurrency)
        t = time.monotonic()
        opened = await asyncio.gather(*(self._open(i, sem) for i in range(n)))
        open_s = time.monotonic() - t
        self.a = [p[0] for p in opened]
        self.b = [p[1] for p in opened]
        readers = [asyncio.create_task(self._read_a(ws)) for ws in self.a]
        readers += [asyncio.create_task(self._drain(ws)) for ws in self.b]
        try:
            announced = await self._until(lambda: self.announced >= n, _WAIT_S)
            await asyncio.sleep(plan.settle_s)
            mem["open"] = used_memory(info)
            keys["open"] = keyspace(info)
            cpu0, hub0, t0 = redis_cpu(info), sum(proc_times(self.hub_pid)), time.monotonic()
            templates = [retarget(self.template, i, self.tag) for i in range(n)]
            for seq in range(m):
                for ws, tpl in zip(self.b, templates, strict=True):
                    await ws.send(tpl.fill(seq))
            arrived = await self._until(lambda: self.got >= n * m, _WAIT_S)
            cpu1, hub1, t1 = redis_cpu(info), sum(proc_times(self.hub_pid)), time.monotonic()
            await asyncio.sleep(plan.settle_s)
            mem["kept"] = used_memory(info)
            keys["kept"] = keyspace(info)
        finally:
            await asyncio.gather(
                *(asyncio.wait_for(ws.close(), 5) for ws in (*self.a, *self.b)),
                return_exceptions=True,
            )
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.sleep(plan.away_s)
        mem["away"] = used_memory(info)
        keys["away"] = keyspace(info)
        return {
            "kind": self.kind,
            "combo": self.combo,
            "sessions": n,
            "messages": m,
            "message_bytes": self.template.size,
            "open_s": open_s,
            "announced": announced,
            "arrived": arrived,
            "received": self.got,
            "other_frames": self.other,
            "used_memory": mem,
            "keys": keys,
            "send_s": t1 - t0,
            "redis_cpu_s": cpu1 - cpu0,
            "hub_cpu_s": hub1 - hub0,
        }
