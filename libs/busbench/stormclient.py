"""The clients of a reconnect storm: one load generator's share of agent sockets.

The sockets are opened on the node that will be killed, as agent pairs watching each
other (``stA{n}?peer=stB{n}`` and the reverse). They are ``busbench.rawws`` sockets,
not websockets' client: 10,000 of those took a generator most of a core, where the
survivors need the cores (see that module); they answer the hub's pings but send none
(a storm is over within a keepalive interval), and offer no compression (the hub
declines it anyway). When a socket is lost, its client does what the repository's
reconnecting proxies do (``busclient.reconnecting.ReconnectPolicy``, used here as it
is): wait the policy's jittered exponential backoff, dial again, and on a refused
handshake (HTTP 503) or a network failure wait longer and dial again, until the
policy's ``max_elapsed`` is spent, when the client gives up. The proxies dial one URL
and a load balancer picks a live node; here the client picks a survivor itself (by its
index, or at random).

Every time is ``time.monotonic()`` (one clock for every process on the machine), so
the orchestrator's kill time and the clients' times compare directly. The client
keeps, per socket: when it was lost, when it was re-established and where, how many
attempts that took, and when the first registry message naming its peer arrived on the
new socket; and per failed attempt: when, on which survivor, and why.
"""

import asyncio
import contextlib
import random
import sys
import time
from typing import Any

from websockets.exceptions import InvalidHandshake

from busbench.loadgen import (
    ConnectTimeout,
    IdleSockets,
    _error_key,
    _say,
    _word,
    idle_name,
    raise_nofile,
)
from busbench.rawws import RawSocket, open_raw, upgrade_request
from busclient.reconnecting import ReconnectPolicy, describe_failure

# The reconnecting proxies' default handshake timeout (``ReconnectingLink.open_timeout``).
OPEN_TIMEOUT = 10.0
# What ``ReconnectingLink.run`` counts as a failed handshake rather than a bug.
DIAL_ERRORS = (OSError, TimeoutError, EOFError, InvalidHandshake, ValueError)


def policy_of(job: dict[str, Any]) -> ReconnectPolicy:
    """The proxies' policy with the job's overrides (backoff shape, deadline)."""
    fields = job.get("policy") or {}
    return ReconnectPolicy(**fields)


def give_up_key(policy: ReconnectPolicy, disconnect: Any) -> str:
    """Why a client gave up, without the seconds or attempt counts that vary."""
    retry, why = policy.classify(disconnect)
    return f"deadline; last: {disconnect.describe()}" if retry else why


class StormSockets(IdleSockets):
    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(job)
        self.policy = policy_of(job)
        self.rng = random.Random(job.get("seed", 0) * 1_000_003 + job["first"])
        self.survivors: list[tuple[str, int]] = [(u, int(p)) for u, p in job["survivors"]]
        self.pick: str = job.get("pick", "alternate")
        n = job["count"]
        self.first: int = job["first"]
        self.ws: list[RawSocket | None] = [None] * n
        self.lost: list[float | None] = [None] * n
        self.est: list[float | None] = [None] * n
        self.target: list[int] = [-1] * n
        self.attempts: list[int] = [0] * n
        self.reg_before: list[bool] = [False] * n
        self.reg_after: list[float | None] = [None] * n
        self.failures: list[tuple[float, int, str]] = []
        self.gave_up: dict[str, int] = {}
        self.closed_after: dict[str, int] = {}
        self.opened: list[int] = []
        self.finished = 0
        self.all_finished = asyncio.Event()
        self.closing = False
        self.tasks: list[asyncio.Task[None]] = []
        self.loop = asyncio.get_running_loop()

    # ---- the first sockets, on the node to be killed -------------------------------

    async def warm_all(self, count: int, urls: list[tuple[str, int]]) -> None:
        """The first sockets on every node pay one-time costs; then closed."""
        deadline = time.monotonic() + 60
        for url, port in urls:

            async def one(i: int, url: str = url, port: int = port) -> None:
                async with self.sem:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    with contextlib.suppress(*DIAL_ERRORS):
                        ws = await self.dial_raw(i, "w", url, port, min(left, 30))
                        await ws.close()

            await asyncio.gather(*(one(i) for i in range(count)))

    async def open_share(self) -> float:
        job = self.job
        count = job["count"]
        deadline = time.monotonic() + job.get("open_timeout", 120)
        t = time.monotonic()
        socks = await asyncio.gather(
            *(
                self.attempt(self.dial_raw, self.first + j, job["tag"], deadline)
                for j in range(count)
            )
        )
        for j, ws in enumerate(socks):
            if ws is not None:
                self.ws[j] = ws
                self.opened.append(j)
        elapsed = time.monotonic() - t
        for j in self.opened:
            self.tasks.append(asyncio.create_task(self._life(j)))
        if not self.opened:
            self.all_finished.set()
        return elapsed

    # ---- one client ----------------------------------------------------------------

    async def dial_raw(self, i: int, tag: str, url: str, port: int, timeout: float) -> RawSocket:
        """Open socket ``i`` to ``port`` as ``dial`` does, with the lean client; its data
        frames go to ``_on_data`` (a warm-up socket's nowhere). ``timeout`` bounds the
        TCP connection and the upgrade together (one ``asyncio.timeout``, no task: a
        generator dials thousands at once)."""
        j = i - self.first
        on_data = (lambda data: None) if tag == "w" else (lambda data: self._on_data(j, data))
        request = upgrade_request(self.job["host"], port, self.path(i, tag))
        sock = self.bound_socket(i)
        connected = False
        try:
            async with asyncio.timeout(timeout):
                await self.loop.sock_connect(sock, (self.job["host"], port))
                connected = True
                return await open_raw(sock, request, on_data)
        except TimeoutError:
            sock.close()
            if not connected:
                raise ConnectTimeout from None
            raise
        except BaseException:
            sock.close()
            raise

    def _peer_needle(self, j: int) -> bytes:
        _, peer = idle_name(self.first + j, self.job["tag"], self.prefix)
        return b'"' + peer.encode() + b'"'

    def _on_data(self, j: int, data: bytes) -> None:
        """Notes the first registry naming the peer, before the loss and after."""
        if b"Registry" not in data or self._peer_needle(j) not in data:
            return
        if self.lost[j] is None:
            self.reg_before[j] = True
        elif self.reg_after[j] is None:
            self.reg_after[j] = time.monotonic()

    def _choose(self, i: int) -> int:
        if self.pick == "random":
            return self.rng.randrange(len(self.survivors))
        return i % len(self.survivors)

    def _finish(self) -> None:
        self.finished += 1
        if self.finished >= len(self.opened):
            self.all_finished.set()

    async def _life(self, j: int) -> None:
        i = self.first + j
        ws = self.ws[j]
        assert ws is not None
        await ws.ended
        if self.closing:
            return
        outage = self.lost[j] = time.monotonic()
        disconnect = ws.disconnect()
        self.ws[j] = None
        attempt = 0
        while True:
            attempt += 1
            decision = self.policy.decide(disconnect, attempt, time.monotonic() - outage, self.rng)
            if not decision.retry:
                key = give_up_key(self.policy, disconnect)
                self.gave_up[key] = self.gave_up.get(key, 0) + 1
                self._finish()
                return
            await asyncio.sleep(decision.delay)
            k = self._choose(i)
            url, port = self.survivors[k]
            self.attempts[j] += 1
            try:
                ws = await self.dial_raw(i, self.job["tag"], url, port, OPEN_TIMEOUT)
            except DIAL_ERRORS as exc:
                disconnect = describe_failure(exc)
                self.failures.append((time.monotonic(), k, _error_key(exc)))
                continue
            break
        self.est[j] = time.monotonic()
        self.target[j] = k
        self.ws[j] = ws
        self._finish()
        await ws.ended
        if not self.closing:
            code = ws.close_code
            key = f"{code} {ws.close_reason or ''}".strip() if code is not None else "1006"
            self.closed_after[key] = self.closed_after.get(key, 0) + 1

    # ---- the end -------------------------------------------------------------------

    def figures(self, t_kill: float | None) -> dict[str, Any]:
        """Raw per-socket times relative to the kill, and counts."""
        t0 = t_kill or 0.0

        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - t0, 4)

        still_open = sum(
            1
            for j in self.opened
            if self.est[j] is not None and (ws := self.ws[j]) is not None and not ws.ended.done()
        )
        return {
            "opened": len(self.opened),
            "registry_before": sum(self.reg_before[j] for j in self.opened),
            "lost": [rel(self.lost[j]) for j in self.opened],
            "established": [rel(self.est[j]) for j in self.opened],
            "survivor": [self.target[j] for j in self.opened],
            "attempts": [self.attempts[j] for j in self.opened],
            "registry_after": [rel(self.reg_after[j]) for j in self.opened],
            "failures": [[rel(t), k, key] for t, k, key in self.failures],
            "gave_up": self.gave_up,
            "unfinished": len(self.opened) - self.finished,
            "closed_after": self.closed_after,
            "still_open": still_open,
            "open_errors": self.errors,
        }

    async def close_all(self) -> None:
        self.closing = True
        close_sem = asyncio.Semaphore(256)

        async def close(ws: RawSocket) -> None:
            async with close_sem:
                await ws.close()

        await asyncio.gather(*(close(ws) for ws in self.ws if ws is not None))
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def run_storm(job: dict[str, Any]) -> dict[str, Any]:
    """Open this generator's share on the doomed node; reconnect after the kill; report.

    Words from the orchestrator: ``open``; ``storm <kill time>`` (the node was killed);
    ``close``. Lines to it: ``warmed``, ``opened``, ``restored`` (every socket of the
    share re-established or given up, or the restore timeout passed).
    """
    limits = raise_nofile(job["count"] + 256)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    storm = StormSockets(job)
    if job.get("warm"):
        await storm.warm_all(job["warm"], [(job["url"], job["port"]), *storm.survivors])
    _say("warmed", nofile=limits)
    result: dict[str, Any] = {"count": job["count"], "nofile": limits, "open_s": None}
    t_kill: float | None = None
    try:
        if await _word(reader, 120) == "open":
            result["open_s"] = await storm.open_share()
            _say("opened", opened=len(storm.opened), errors=storm.errors)
            word = await _word(reader, job.get("hold_timeout", 600))
            if word.startswith("storm "):
                t_kill = float(word.split()[1])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(storm.all_finished.wait(), job["restore_timeout"])
                _say(
                    "restored",
                    finished=storm.finished,
                    opened=len(storm.opened),
                    gave_up=sum(storm.gave_up.values()),
                )
                await _word(reader, job.get("hold_timeout", 600))
        result.update(storm.figures(t_kill), t_kill=t_kill)
    finally:
        await storm.close_all()
    return result
