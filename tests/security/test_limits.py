"""Operator limits with real sockets: rates, sizes, connection cap, Origin allowlist.

The "ops" hub runs with ``--rate-messages 10 --rate-bytes 6000 --max-message-bytes
3000`` and an Origin allowlist; the "cap" hub with ``--max-connections 2``. Excess
traffic is dropped and counted while the socket stays open; excess sockets and
foreign origins are refused before the upgrade.
"""

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from busclient.reconnecting import Disconnect, ReconnectingLink, ReconnectPolicy
from tests.integration.procs import TIMEOUT
from tests.security.conftest import (
    ACCEPT_RATE,
    ALLOWED_ORIGINS,
    MAX_CONNECTIONS,
    MAX_MESSAGE_BYTES,
    RATE_BYTES,
    RATE_MESSAGES,
)
from tests.security.helpers import (
    Peer,
    SecureHub,
    assert_accepted,
    assert_refused,
    padded,
    task_request,
    token,
    wait_for_metric,
    wait_idle,
    ws_url,
)
from tests.support.messages import encode
from tests.support.reports import register_log

pytestmark = pytest.mark.integration

# A second is the refill period of both buckets; a little more to be sure.
REFILL = 1.2


@pytest.fixture
async def pair(
    ops_hub: SecureHub, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Peer, Peer]]:
    name = request.node.name.removeprefix("test_")[:40]
    sender = await Peer.connect(ops_hub, f"{name}-s", peer=f"{name}-r")
    receiver = await Peer.connect(ops_hub, f"{name}-r")
    yield sender, receiver
    await sender.close()
    await receiver.close()


async def test_message_rate_drops_the_excess_and_recovers(
    ops_hub: SecureHub, pair: tuple[Peer, Peer]
) -> None:
    sender, receiver = pair
    burst = 3 * RATE_MESSAGES
    before = ops_hub.dropped("rate_limited")
    started = time.monotonic()
    for i in range(burst):
        await sender.send(task_request(sender.agent, receiver.agent, {"label": f"b{i}"}))
    elapsed = time.monotonic() - started
    await asyncio.sleep(REFILL)
    await sender.send(task_request(sender.agent, receiver.agent, {"label": "after"}))
    await receiver.expect_label("after")

    delivered = [label for label in receiver.labels() if label != "after"]
    dropped = ops_hub.dropped("rate_limited") - before
    assert delivered == [f"b{i}" for i in range(len(delivered))], "the first ones pass, in order"
    # One second's burst, plus whatever refilled while sending.
    assert RATE_MESSAGES <= len(delivered) <= RATE_MESSAGES + 1 + elapsed * RATE_MESSAGES
    assert len(delivered) + dropped == burst
    assert not sender.closed

    # Recovered: a full second's worth passes again.
    for i in range(RATE_MESSAGES - 1):
        await sender.send(task_request(sender.agent, receiver.agent, {"label": f"r{i}"}))
    await receiver.expect_label(f"r{RATE_MESSAGES - 2}")
    assert ops_hub.dropped("rate_limited") - before == dropped


async def test_byte_rate_drops_the_excess_and_recovers(
    ops_hub: SecureHub, pair: tuple[Peer, Peer]
) -> None:
    sender, receiver = pair
    size = 2500  # under --max-message-bytes, two fit in one second's bytes
    count = 6
    before = ops_hub.dropped("rate_limited")
    for i in range(count):
        await sender.send(padded(sender.agent, receiver.agent, size, f"b{i}"))
    await asyncio.sleep(REFILL)
    await sender.send(padded(sender.agent, receiver.agent, size, "after"))
    await receiver.expect_label("after")

    delivered = [label for label in receiver.labels() if label != "after"]
    # One second's bytes (two frames), plus one more only if sending took ~0.4 s.
    assert delivered == [f"b{i}" for i in range(len(delivered))]
    assert RATE_BYTES // size <= len(delivered) <= RATE_BYTES // size + 1
    assert ops_hub.dropped("rate_limited") - before == count - len(delivered)
    assert not sender.closed


async def test_oversize_frames_are_dropped_and_the_socket_survives(
    ops_hub: SecureHub, pair: tuple[Peer, Peer]
) -> None:
    sender, receiver = pair
    before = ops_hub.dropped("oversize")
    await sender.send(padded(sender.agent, receiver.agent, MAX_MESSAGE_BYTES + 1, "big"))
    await sender.send(padded(sender.agent, receiver.agent, MAX_MESSAGE_BYTES, "at-limit"))
    await receiver.expect_label("at-limit")
    assert receiver.labels() == ["at-limit"]
    assert ops_hub.dropped("oversize") == before + 1
    assert not sender.closed


async def test_frames_over_the_transport_limit_close_only_that_socket(
    ops_hub: SecureHub, pair: tuple[Peer, Peer]
) -> None:
    sender, receiver = pair
    other = await Peer.connect(ops_hub, "huge-other", peer=receiver.agent)
    try:
        huge = encode(padded(sender.agent, receiver.agent, 200_000, "huge"))
        await sender.ws.send(huge)
        assert await sender.wait_closed() == 1009
        # Everyone else carries on.
        await other.send(task_request(other.agent, receiver.agent, {"label": "still-here"}))
        await receiver.expect_label("still-here")
        assert receiver.labels() == ["still-here"]
    finally:
        await other.close()


async def test_max_connections_refuses_past_the_cap_with_503(cap_hub: SecureHub) -> None:
    await wait_idle(cap_hub)
    held = [await Peer.connect(cap_hub, f"cap-{i}") for i in range(MAX_CONNECTIONS)]
    try:
        await assert_refused(cap_hub, "cap-extra", 503, "over_capacity")
        with pytest.raises(InvalidStatus) as full:
            await Peer.connect(cap_hub, "cap-extra")
        # Behind a load balancer another node may have room: no reason to wait.
        assert full.value.response.headers.get("Retry-After") is None
        # A takeover is a new socket too.
        await assert_refused(cap_hub, "cap-0", 503, "over_capacity")
        assert all(not peer.closed for peer in held)
        await held.pop().close()
        deadline = time.monotonic() + TIMEOUT
        while True:  # the freed slot comes back once the hub has let go of the socket
            try:
                held.append(await Peer.connect(cap_hub, "cap-extra"))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
    finally:
        for peer in held:
            await peer.close()


async def test_origin_allowlist(ops_hub: SecureHub) -> None:
    for origin in (
        "https://evil.example.com",
        "http://app.example.com",
        "https://app.example.com.evil.com",
        "https://app.example.com:8443",
        "null",
    ):
        await assert_refused(ops_hub, "origin-1", 403, "origin_not_allowed", origin=origin)
    for origin in ALLOWED_ORIGINS:
        await assert_accepted(ops_hub, "origin-1", origin=origin)
    # Non-browser clients send no Origin.
    await assert_accepted(ops_hub, "origin-1")


async def test_no_origin_check_when_no_allowlist(auth_hub: SecureHub) -> None:
    await assert_accepted(auth_hub, "origin-2", token=token("origin-2"), origin="https://x.y")


async def test_with_auth_off_and_no_allowlist_browsers_are_refused(cap_hub: SecureHub) -> None:
    # A page on any site, open in a browser on the node's machine, could dial the
    # loopback node and take over an agent's name: it was let in.
    for origin in ("https://evil.example", f"http://127.0.0.1:{cap_hub.port}", "null"):
        await assert_refused(cap_hub, "origin-4", 403, "origin_not_allowed", origin=origin)
    await assert_accepted(cap_hub, "origin-4")  # no Origin: not a browser
    # The page is refused for what it is, whatever it asks for.
    await assert_refused(
        cap_hub, "origin-4", 403, "origin_not_allowed", origin="https://evil.example", fmt="xml"
    )
    assert "with auth off, list it in --allowed-origins" in cap_hub.log_path.read_text()


async def test_allowed_origins_are_read_as_browsers_write_them(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Upper case, a trailing slash, a default port: browsers send none of them, and
    # such a list refused every browser.
    listed = "HTTPS://App.Example.com/,http://dev.example:80"
    hub = SecureHub("origins", tmp_path / "hub-origins.log", "--allowed-origins", listed)
    register_log(request, "hub origins log", hub.log_path)
    hub.start()
    try:
        for origin in ("https://app.example.com", "http://dev.example"):
            await assert_accepted(hub, "origin-5", origin=origin)
        await assert_refused(hub, "origin-5", 403, "origin_not_allowed", origin="https://x.y")
    finally:
        hub.stop()


async def test_handshake_with_garbage_origin_does_not_crash_the_hub(ops_hub: SecureHub) -> None:
    # A raw upgrade request with an Origin the websockets client would not send.
    reader, writer = await asyncio.open_connection("127.0.0.1", ops_hub.port)
    writer.write(
        b"GET /ws/origin-3 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Origin: \xff\xfe\r\n\r\n"
    )
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), TIMEOUT)
    writer.close()
    assert status.startswith(b"HTTP/1.1 403")
    assert ops_hub.get("/healthz")[0] == 200
    async with connect(f"{ops_hub.url}/ws/origin-3", proxy=None):
        pass


async def test_a_message_rate_under_one_per_second_still_lets_messages_through(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # --rate-messages 0.5: one message every two seconds, so the first one passes.
    hub = SecureHub("slow", tmp_path / "hub-slow.log", "--rate-messages", "0.5")
    register_log(request, "hub slow log", hub.log_path)
    hub.start()
    try:
        sender = await Peer.connect(hub, "slow-s", peer="slow-r")
        receiver = await Peer.connect(hub, "slow-r")
        await sender.send(task_request("slow-s", "slow-r", {"label": "first"}))
        await sender.send(task_request("slow-s", "slow-r", {"label": "second"}))
        await wait_for_metric(hub, "bushub_messages_received_total", {"format": "json"}, 2)
        assert hub.dropped("rate_limited") == 1, "the first message of a fresh socket was dropped"
        await receiver.expect_label("first")
        await sender.close()
        await receiver.close()
    finally:
        hub.stop()


async def test_handshakes_past_the_accept_rate_get_503_with_retry_after(
    rate_hub: SecureHub,
) -> None:
    """A burst of handshakes (a reconnect storm): one second's worth is taken, the rest
    is told to come back; those that do, a second later, are taken."""
    statuses: list[int] = []
    retry_after: set[str | None] = set()
    held = []
    for n in range(3 * ACCEPT_RATE):
        try:
            held.append(await connect(ws_url(rate_hub, f"storm-{n}"), open_timeout=TIMEOUT))
            statuses.append(101)
        except InvalidStatus as exc:
            statuses.append(exc.response.status_code)
            retry_after.add(exc.response.headers.get("Retry-After"))
    try:
        assert statuses.count(101) <= ACCEPT_RATE + 1  # the burst, and what refilled
        assert statuses.count(101) >= ACCEPT_RATE - 1
        assert set(statuses) == {101, 503}
        assert retry_after == {"1"}
        assert rate_hub.refused("accept_rate") == statuses.count(503)
        await asyncio.sleep(1.0)
        await assert_accepted(rate_hub, "storm-later")
    finally:
        await asyncio.gather(*(ws.close() for ws in held))


class _LinkEvents:
    """A reconnecting link's hooks, recording its waits and its connection."""

    def __init__(self) -> None:
        self.waits: list[tuple[Disconnect, float]] = []
        self.connected = asyncio.Event()

    async def link_connected(self, websocket: ClientConnection, first: bool, attempts: int) -> None:
        self.connected.set()

    async def link_frame(self, data: bytes | str) -> None:
        pass

    async def link_resumed(self, result: str, epoch: str) -> None:
        pass

    async def link_reconnecting(self, disconnect: Disconnect, attempt: int, delay: float) -> None:
        self.waits.append((disconnect, delay))

    async def link_gave_up(
        self, websocket: ClientConnection | None, disconnect: Disconnect, reason: str
    ) -> None:
        pass


async def test_a_reconnecting_proxy_refused_in_a_storm_waits_what_the_hub_asks(
    rate_hub: SecureHub,
) -> None:
    """Past the accept rate the hub answers ``Retry-After: 1``: the reconnecting link
    waits at least that, not its own 50 ms backoff, and is taken when it comes back."""
    policy = ReconnectPolicy(initial_delay=0.05, max_delay=5.0, jitter=0.0, max_elapsed=20.0)
    # The budget refills one handshake every 1/ACCEPT_RATE s: a stall of the machine
    # between using it up and the link's first dial lets that dial in (tried again).
    for _ in range(3):
        held = []
        try:
            for n in range(3 * ACCEPT_RATE):  # the accept budget, used up
                held.append(await connect(ws_url(rate_hub, f"fill-{n}"), open_timeout=TIMEOUT))
        except InvalidStatus:
            pass
        events = _LinkEvents()
        link = ReconnectingLink(
            ws_url(rate_hub, "patient"), events, policy=policy, rng=random.Random(0)
        )
        task = asyncio.create_task(link.run())
        try:
            await asyncio.wait_for(events.connected.wait(), 10.0)
        finally:
            await link.close()
            await asyncio.wait_for(task, 5)
            await asyncio.gather(*(ws.close() for ws in held))
        if events.waits:
            break
        await asyncio.sleep(1.0)  # the budget back, for the next try
    refused, wait = events.waits[0]
    assert (refused.status, refused.retry_after) == (503, 1.0)
    assert 1.0 <= wait <= 1.5


async def test_a_handshake_whose_client_hung_up_claims_nothing(ops_hub: SecureHub) -> None:
    """A reconnect storm's stale handshake: its client timed out, hung up and got in on a
    new socket; when the hub gets to the old request, it must not claim the name (which
    would take it from the live socket, or refuse that one 403, and a reconnecting
    proxy gives up on 403). Counted as ``client_gone``, nothing else happens."""
    live = await Peer.connect(ops_hub, "gone-live")
    sender = await Peer.connect(ops_hub, "gone-sender", peer="gone-live")
    before = ops_hub.refused("client_gone")
    try:
        await asyncio.to_thread(_request_then_hang_up, ops_hub.port, "/ws/gone-live")
        await wait_for_metric(
            ops_hub, "bushub_connections_refused_total", {"reason": "client_gone"}, before + 1
        )
        await sender.send(task_request("gone-sender", "gone-live", {"label": "after"}))
        await live.expect_label("after")
        assert not live.closed
    finally:
        await sender.close()
        await live.close()


def _request_then_hang_up(port: int, path: str) -> None:
    """An upgrade request and the client's FIN in one segment (corked): the hub reads
    the request of a client that has already gone, as a storm's late handshakes."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(TIMEOUT)
        while sock.recv(4096):  # until the hub closes its end
            pass
