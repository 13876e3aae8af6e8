"""What the security suite needs on top of ``tests/integration``: hub processes started
with security flags, tokens, a raw WebSocket client that records what it receives,
real bus messages to tamper with, and the hub's metrics.

Every wait derives from ``TIMEOUT`` of ``tests/integration/procs.py``.
"""

import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.procs import ROOT, TIMEOUT, HubNode
from tests.support import messages
from tests.support.messages import encode
from tests.support.waiting import until

# PyJWT warns about HMAC secrets under 32 bytes, and warnings are errors here.
SECRET = "bushub-security-suite-hs256-secret-" + "0123456789abcdef" * 2  # >= 64 bytes: HS512 too
OTHER_SECRET = "someone-else-entirely-hs256-secret-" + "fedcba9876543210" * 2
ADMIN_TOKEN = "bushub-security-suite-admin-token-abcdef"

SUBAGENTS_REGISTRY = "pipecat_subagents.bus.messages.BusAgentRegistryMessage"
PIPECAT_REGISTRY = "pipecat.bus.messages.BusWorkerRegistryMessage"
REGISTRY_TYPES = (SUBAGENTS_REGISTRY, PIPECAT_REGISTRY)


class SecureHub(HubNode):
    """A ``bushub serve`` process of ``tests/integration`` with extra flags appended.

    Flags given later win, so ``--log-level debug`` here overrides the default.
    """

    def __init__(
        self, node_id: str, log_path: Path, *flags: str, redis_url: str | None = None
    ) -> None:
        super().__init__(node_id, log_path, redis_url)
        self.flags = list(flags)

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        super()._spawn([*argv, *self.flags], env)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """GET ``path``: status and body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of ``/metrics`` (0 if it is not exported yet)."""
        status, body = self.get("/metrics")
        assert status == 200
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def dropped(self, reason: str) -> float:
        return self.metric("bushub_messages_dropped_total", reason=reason)

    def refused(self, reason: str) -> float:
        return self.metric("bushub_connections_refused_total", reason=reason)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


# ---- tokens -----------------------------------------------------------------


def token(
    agents: str | Sequence[str] | None,
    targets: Sequence[str] = (),
    *,
    key: Any = SECRET,
    algorithm: str = "HS256",
    ttl: float = 300.0,
    **claims: Any,
) -> str:
    """A signed token; ``claims`` override or add (``exp=None`` drops ``exp``)."""
    now = time.time()
    body: dict[str, Any] = {"iat": int(now), "exp": int(now + ttl)}
    if agents is not None:
        body["agents"] = [agents] if isinstance(agents, str) else list(agents)
    if targets:
        body["targets"] = list(targets)
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=algorithm)


def cli_token(*argv: str) -> str:
    """Run ``bushub token``; the token is the last line of its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "bushub", "token", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_token(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token built by hand, as an attacker would: any header, HMAC or no signature.

    PyJWT refuses to build the classic attacks (``alg: none``, HS256 keyed with a
    public key), so they are written out here.
    """
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


# ---- bus messages -----------------------------------------------------------


def task_request(source: str, target: str | None, payload: Any = None) -> dict[str, Any]:
    """The shared task request as the library's serializer writes it, a fresh task id."""
    body = {} if payload is None else payload
    return messages.task_request(
        source, target, payload=body, task_id=uuid.uuid4().hex, library=True
    )


def payload_of(tree: dict[str, Any]) -> Any:
    return tree.get("__data__", {}).get("payload")


def padded(source: str, target: str | None, size: int, label: str) -> dict[str, Any]:
    """A task request whose JSON encoding is exactly ``size`` bytes."""
    tree = task_request(source, target, {"label": label, "pad": ""})
    short = len(json.dumps(tree, separators=(",", ":")))
    assert short <= size, f"{size} bytes is too small for a task request"
    tree["__data__"]["payload"]["pad"] = "x" * (size - short)
    return tree


# ---- a recording client -----------------------------------------------------


def ws_url(hub: HubNode, agent: str, **query: str | None) -> str:
    params = {k: v for k, v in query.items() if v is not None}
    return f"{hub.url}/ws/{agent}" + (f"?{urlencode(params)}" if params else "")


class Peer:
    """One raw WebSocket connection to a hub, recording every frame it receives.

    Registry messages (the hub's announcements) are kept apart from the rest.
    """

    def __init__(self, ws: ClientConnection, agent: str, fmt: str) -> None:
        self.ws = ws
        self.agent = agent
        self.fmt = fmt
        self.messages: list[dict[str, Any]] = []
        self.announcements: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        hub: HubNode,
        agent: str,
        *,
        token: str | None = None,
        via: str = "header",
        peer: str | None = None,
        fmt: str = "json",
        origin: str | None = None,
    ) -> "Peer":
        """Open a socket; ``via`` is ``header`` (``Authorization: Bearer``) or ``query``.

        Raises:
            InvalidStatus: the hub refused the handshake.
        """
        headers = {}
        query: dict[str, str | None] = {"peer": peer, "format": fmt}
        if token is not None and via == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif token is not None:
            query["token"] = token
        ws = await connect(
            ws_url(hub, agent, **query),
            additional_headers=headers,
            origin=origin,  # type: ignore[arg-type]
            open_timeout=TIMEOUT,
            max_size=None,
            compression=None,
            proxy=None,
        )
        return cls(ws, agent, fmt)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                data = frame if isinstance(frame, bytes) else frame.encode()
                self.raw.append(data)
                tree = (
                    msgpack.unpackb(data, raw=False) if self.fmt == "msgpack" else json.loads(data)
                )
                if tree.get("__type__") in REGISTRY_TYPES:
                    self.announcements.append(tree)
                else:
                    self.messages.append(tree)
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self._changed.set()

    async def send(self, tree: Any) -> None:
        await self.ws.send(tree if isinstance(tree, bytes) else encode(tree, self.fmt))

    async def expect(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """The first received message matching ``predicate``, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if predicate(message):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._reader.done():
                seen = [payload_of(m) for m in self.messages]
                why = "the socket closed" if self._reader.done() else f"{timeout:.1f}s passed"
                raise AssertionError(f"{self.agent}: no matching message ({why}); saw {seen}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def expect_label(self, label: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        return await self.expect(lambda m: (payload_of(m) or {}).get("label") == label, timeout)

    def labels(self) -> list[Any]:
        """The ``label`` of every received message's payload, in order of arrival."""
        return [(payload_of(m) or {}).get("label") for m in self.messages]

    async def announced(self, agent: str, timeout: float = TIMEOUT) -> None:
        """Wait until the hub has announced ``agent`` to this socket."""
        deadline = time.monotonic() + timeout
        while not any(agent in json.dumps(a) for a in self.announcements):
            if time.monotonic() > deadline or self._reader.done():
                raise AssertionError(f"{self.agent}: {agent} never announced")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.1)

    @property
    def closed(self) -> bool:
        return self._reader.done()

    async def wait_closed(self, timeout: float = TIMEOUT) -> int | None:
        """Wait until the hub closes the socket; its close code."""
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


async def refusal(hub: HubNode, agent: str, **kwargs: Any) -> tuple[int, str]:
    """Connect, expecting the handshake to be refused: the HTTP status and body."""
    with pytest.raises(InvalidStatus) as info:
        peer = await Peer.connect(hub, agent, **kwargs)
        await peer.close()
    response = info.value.response
    return response.status_code, bytes(response.body or b"").decode(errors="replace")


# Words that would tell an attacker why a token failed.
_INTERNALS = ("expired", "signature", "jwt", "token", "key", "claim", "nbf", "exp")


async def assert_refused(
    hub: SecureHub, agent: str, status: int, reason: str, **kwargs: Any
) -> None:
    """The handshake gets ``status``, a body without internals, and counts ``reason``."""
    before = hub.refused(reason)
    got, body = await refusal(hub, agent, **kwargs)
    assert got == status
    assert body == {401: "unauthorized", 403: "forbidden", 503: "unavailable"}[status]
    assert not any(word in body.lower() for word in _INTERNALS)
    assert hub.refused(reason) == before + 1


async def assert_accepted(hub: SecureHub, agent: str, **kwargs: Any) -> None:
    peer = await Peer.connect(hub, agent, **kwargs)
    assert not peer.closed
    await peer.close()


async def wait_for_metric(
    hub: SecureHub, name: str, labels: dict[str, str], value: float, timeout: float = TIMEOUT
) -> None:
    """Poll ``/metrics`` until one sample reaches ``value``."""
    if not await until(lambda: hub.metric(name, **labels) >= value, timeout, 0.05):
        raise AssertionError(f"{name}{labels} is {hub.metric(name, **labels)}, expected {value}")


async def wait_idle(hub: SecureHub, timeout: float = TIMEOUT) -> None:
    """Wait until the hub holds no sockets (earlier tests' sockets are gone)."""
    await until(lambda: hub.metric("bushub_connections") <= 0, timeout, 0.05, what="no sockets")
