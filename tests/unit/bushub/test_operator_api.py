"""The operator API on one node (docs/protocol.md, Operator API): ``POST /api/send``,
``GET /api/tap/{agent}``, ``GET /api/cluster``, with real sockets and HTTP clients."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from bushub import opsapi
from bushub.auth import make_token
from bushub.settings import Settings
from bushub.taps import EVENT_RATE
from buswire import Format
from tests.support.messages import TASK_REQUEST, encode, task_request
from tests.unit.bushub.conftest import RunningHub, running_hub, small_settings
from tests.unit.bushub.helpers import (
    BRIEF,
    PIPECAT_REGISTRY,
    TIMEOUT,
    as_json,
    assert_silent,
    frame_message,
    recv_bytes,
    recv_non_registry,
    wait_until,
)

ADMIN = "admin-secret-token"
SECRET = "jwt-secret-for-the-operator-api-tests-0123456789"


@pytest.fixture
def hub_settings() -> Settings:
    return small_settings(admin_token=ADMIN, max_message_bytes=4096)


def admin() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN}"}


async def post_send(node: RunningHub, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as client:
        return await client.post("/api/send", content=body, headers=headers)


class Tap:
    """An open ``GET /api/tap/{agent}``: its events, read as they come."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next event (comment lines skipped)."""

        async def read() -> dict[str, Any]:
            async for line in self._lines:
                if line.startswith("data: "):
                    event: dict[str, Any] = json.loads(line[6:])
                    return event
            raise AssertionError("the tap stream ended")

        return await asyncio.wait_for(read(), timeout)

    async def next_message(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next event of kind ``message``."""
        while (event := await self.next(timeout))["kind"] != "message":
            pass
        return event


@asynccontextmanager
async def tapping(node: RunningHub, agent: str) -> AsyncIterator[Tap]:
    """A tap on ``agent``, open until the block ends; its ``open`` event read, and the
    node's recorder told of it (what is sent from then on is shown)."""
    async with (
        httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as client,
        client.stream("GET", f"/api/tap/{agent}", headers=admin()) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        tap = Tap(response)
        assert await tap.next() == {"kind": "open", "agent": agent, "node": "unit"}
        await wait_until(lambda: agent in node.hub.operators.watched.tapped, "tap noticed")
        yield tap


# ---- POST /api/send ----------------------------------------------------------


async def test_send_reaches_the_agent_byte_identical(node: RunningHub) -> None:
    body = as_json(task_request("scheduler", "worker", 7))
    async with node.connect("worker") as worker:
        await node.wait_holder("worker")
        response = await post_send(node, body, admin())
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": True, "target": "worker", "nodes": 1}
        assert await recv_non_registry(worker) == body
    assert node.metric("bushub_api_sends_total", result="accepted") == 1


@pytest.mark.parametrize(
    ("body", "status", "result", "says"),
    [
        (encode(task_request("s", "nobody")), 404, "no_agent", "no agent named 'nobody'"),
        (b'{"__type__": "os.system", "__data__": {"source": "s", "target": "worker"}}', 400,
         "bad_request", "type_not_allowed"),
        (encode(task_request("s", "worker", pad=5000)), 413, "oversize", "max-message-bytes"),
        (encode(task_request("s", None)), 400, "bad_request", "no target"),
        (b"{not json", 400, "bad_request", "malformed"),
        (b'{"__type__": "' + PIPECAT_REGISTRY.encode() + b'", "__data__": {"source": "s",'
         b' "target": "worker"}}', 400, "bad_request", "registry"),
        (encode(task_request("s", "a{b}")), 400, "bad_request", "bad_agent"),
    ],
    ids=["no-agent", "unknown-type", "oversize", "no-target", "malformed", "registry", "bad-name"],
)  # fmt: skip
async def test_bad_sends_get_a_clear_error_and_change_nothing(
    node: RunningHub, body: bytes, status: int, result: str, says: str
) -> None:
    async with node.connect("worker") as worker:
        await node.wait_holder("worker")
        response = await post_send(node, body, admin())
        assert response.status_code == status, response.text
        assert says in response.json()["error"]
        await assert_silent(worker, BRIEF * 4)
        # The socket is served as before.
        good = as_json(task_request("s", "worker"))
        assert (await post_send(node, good, admin())).status_code == 202
        assert await recv_non_registry(worker) == good
    assert node.metric("bushub_api_sends_total", result=result) == 1
    assert node.metric("bushub_messages_received_total", format="json") == 0


async def test_send_with_an_endless_body_is_cut_off_as_oversize(node: RunningHub) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(10_000):  # 10 MB if the node read it all
            yield b"x" * 1024

    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as client:
        response = await client.post("/api/send", content=body(), headers=admin())
    assert response.status_code == 413


async def test_a_send_over_the_limit_is_told_its_declared_size(node: RunningHub) -> None:
    # The node stops reading a large body short of its end: the size it had read so
    # far was reported as the body's.
    body = b"x" * 2_000_000
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as client:
        response = await client.post("/api/send", content=body, headers=admin())
    assert response.status_code == 413
    assert response.json()["error"].startswith("2000000 bytes is over"), response.text


async def test_send_needs_a_token(node: RunningHub) -> None:
    body = as_json(task_request("s", "worker"))
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": ADMIN[:-1]}):
        response = await post_send(node, body, headers)
        assert response.status_code == 401, headers
    # A 401 was counted nowhere: a client guessing the token left no trace.
    assert node.metric("bushub_api_sends_total", result="unauthorized") == 3
    assert node.metric("bushub_operator_refused_total", reason="bad_admin_token") == 3


async def test_requests_without_the_admin_token_are_counted_and_logged(
    node: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as client:
        for path in ("/api/cluster", "/agents", "/api/tap/x"):
            response = await client.get(path, headers={"authorization": "Bearer guess"})
            assert response.status_code == 401, path
            # What the API answers is never cached, and read as JSON only.
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["x-content-type-options"] == "nosniff"
        granted = await client.get("/api/cluster", headers=admin())
        schema = await client.get("/openapi.json")
    assert node.metric("bushub_operator_refused_total", reason="bad_admin_token") == 3
    assert "refused GET /api/cluster from 127.0.0.1: bad_admin_token" in caplog.text
    assert granted.status_code == 200 and granted.headers["cache-control"] == "no-store"
    # The routes' schema is not served to whoever asks.
    assert schema.status_code == 404


REQUIRED = "admin token required: send Authorization: Bearer <admin token>"


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, REQUIRED),
        ({"authorization": ADMIN}, REQUIRED),
        ({"authorization": "Bearer"}, REQUIRED),
        ({"authorization": f"Basic {ADMIN}"}, REQUIRED),
        ({"authorization": "Bearer guess"}, "bad admin token"),
        ({"authorization": f"Bearer {ADMIN[:-1]}"}, "bad admin token"),
    ],
    ids=["no-header", "no-scheme", "no-value", "basic", "wrong", "prefix"],
)
async def test_a_missing_admin_token_is_told_from_a_wrong_one(
    node: RunningHub, headers: dict[str, str], error: str
) -> None:
    """A user who forgot the header (or "Bearer ") was told the token was bad, and
    went looking for a typo in a token never sent."""
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as client:
        for path in ("/agents", "/api/cluster", "/api/tap/x"):
            response = await client.get(path, headers=headers)
            assert (response.status_code, response.json()) == (401, {"error": error}), path
    sent = await post_send(node, as_json(task_request("s", "worker")), headers)
    assert (sent.status_code, sent.json()) == (401, {"error": error})
    assert node.metric("bushub_operator_refused_total", reason="bad_admin_token") == 4


@pytest.mark.parametrize(
    ("allowed", "logged"), [("", "127.0.0.2"), ("127.0.0.0/30", "203.0.113.7")]
)
async def test_a_proxys_client_address_is_believed_from_the_proxies_listed_only(
    allowed: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy not on the node's loopback (nginx in compose, an ingress pod) is
    believed once ``--forwarded-allow-ips`` lists it; before, no setting could say
    so, and every log line named the proxy instead of the client."""
    settings = small_settings(admin_token=ADMIN)
    if allowed:
        settings = small_settings(admin_token=ADMIN, forwarded_allow_ips=allowed)
    async with running_hub(settings) as node:
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=node.http_url, transport=transport) as client:
            headers = {"authorization": "Bearer guess", "x-forwarded-for": "203.0.113.7"}
            response = await client.get("/agents", headers=headers)
    assert response.status_code == 401
    assert f"refused GET /agents from {logged}: bad_admin_token" in caplog.text


async def test_a_short_admin_token_or_jwt_secret_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_hub(small_settings(admin_token="t0ken", jwt_secret="short-secret")):
        pass
    assert "--admin-token is 5 characters: short enough to guess" in caplog.text
    assert "--jwt-secret is 12 bytes: HS256 wants 32 or more" in caplog.text


async def test_send_and_the_console_are_off_without_admin_token_or_token_auth() -> None:
    async with running_hub(small_settings()) as bare:
        response = await post_send(bare, as_json(task_request("s", "w")), admin())
        async with httpx.AsyncClient(base_url=bare.http_url, timeout=TIMEOUT) as client:
            page = await client.get("/console")
            cluster = await client.get("/api/cluster", headers=admin())
    assert response.status_code == 403
    assert "--admin-token" in response.json()["error"]
    assert page.status_code == 403 and page.headers["content-type"].startswith("text/html")
    assert cluster.status_code == 403


async def test_an_agent_token_may_send_within_its_grant() -> None:
    settings = small_settings(admin_token=ADMIN, jwt_secret=SECRET)
    token = make_token(SECRET, agents=["scheduler"], targets=["worker-*"], ttl=60, now=time.time())
    worker_token = make_token(SECRET, agents=["worker-1"], targets=["*"], ttl=60, now=time.time())
    headers = {"authorization": f"Bearer {token}"}
    async with running_hub(settings) as node:
        query = {"token": worker_token}
        async with node.connect("worker-1", **query) as worker:
            await node.wait_holder("worker-1")
            ok = as_json(task_request("scheduler", "worker-1"))
            assert (await post_send(node, ok, headers)).status_code == 202
            assert await recv_non_registry(worker) == ok
            outside = await post_send(node, as_json(task_request("scheduler", "db")), headers)
            assert outside.status_code == 403
            assert "may not address 'db'" in outside.json()["error"]
            impostor = await post_send(node, as_json(task_request("boss", "worker-1")), headers)
            assert impostor.status_code == 403
            assert "may not send as 'boss'" in impostor.json()["error"]
            expired = make_token(
                SECRET, agents=["scheduler"], targets=["*"], ttl=-60, now=time.time()
            )
            late = await post_send(node, ok, {"authorization": f"Bearer {expired}"})
            assert late.status_code == 401
            await assert_silent(worker, BRIEF * 4)
        assert node.metric("bushub_api_sends_total", result="forbidden") == 2
        assert node.metric("bushub_api_sends_total", result="unauthorized") == 1
        assert node.metric("bushub_operator_refused_total", reason="bad_token") == 1


# ---- GET /api/tap/{agent} ------------------------------------------------------


async def test_a_tap_shows_what_an_agent_sends_and_receives(node: RunningHub) -> None:
    async with node.connect("a") as a, node.connect("b") as b, tapping(node, "b") as tap:
        await a.send(as_json(task_request("a", "b", 1, payload={"note": "hello"})))
        event = await tap.next_message()
        assert await recv_non_registry(b)
        assert event["direction"] == "received"
        assert (event["type"], event["source"], event["target"]) == (TASK_REQUEST, "a", "b")
        assert event["format"] == "json" and event["node"] == "unit" and event["size"] > 0
        assert event["body"]["__data__"]["payload"] == {"note": "hello"}

        # What b sends, in MsgPack with audio: bytes are summarised, not shown. A frame
        # with no target and no peer is refused, and the tap says so.
        await b.send(encode(frame_message("b", b"\x01" * 640), "msgpack"))
        await b.send(encode(task_request("b", "a", 2, payload={"pcm": b"\x00" * 640}), "msgpack"))
        event = await tap.next_message()
        assert (event["dropped"], event["direction"], event["target"]) == ("no_route", "sent", None)
        assert event["type"].endswith("BusFrameMessage") and event["source"] == "b"
        event = await tap.next_message()
        assert "dropped" not in event
        assert event["direction"] == "sent" and event["format"] == "msgpack"
        assert event["body"]["__data__"]["payload"]["pcm"] == "<640 bytes>"
        assert await recv_non_registry(a)

        # Traffic between others is not shown.
        async with node.connect("c") as c:
            await a.send(as_json(task_request("a", "c", 3)))
            assert await recv_non_registry(c)
        response = await post_send(node, as_json(task_request("ops", "b", 4)), admin())
        assert response.status_code == 202
        event = await tap.next_message()
        assert (event["source"], event["direction"]) == ("ops", "received")
    assert node.metric("bushub_tap_events_total", outcome="published") == 4


async def test_an_untargeted_message_refused_shows_in_its_peers_tap(node: RunningHub) -> None:
    # Bound for the socket's peer, as a bridged frame is: the peer's tap answers "did
    # my message reach it?" (it showed only in the sender's, with no target).
    async with node.connect("a", peer="b") as a, node.connect("b"), tapping(node, "b") as tap:
        refused = task_request("a", None, 1)
        refused["__type__"] = "evil.module.Payload"
        await a.send(as_json(refused))
        event = await tap.next_message()
        assert (event["dropped"], event["direction"], event["target"]) == (
            "type_not_allowed",
            "received",
            "b",
        )


async def test_the_last_losses_of_a_burst_are_told_without_a_later_message(
    node: RunningHub,
) -> None:
    taps = node.hub.relay.taps
    assert taps is not None
    async with tapping(node, "b") as tap:
        burst = int(EVENT_RATE) + 500  # past the node's bound for all taps at once
        for n in range(burst):
            taps.seen("a", "m.T", "a", "b", {"n": n}, 10, Format.JSON)
        shown = dropped = 0
        while shown + dropped < burst:
            event = await tap.next()
            assert event["kind"] in ("message", "dropped"), event  # no bare notice
            if event["kind"] == "message":
                shown += 1
            else:
                dropped += event["count"]
        assert dropped > 0


async def test_a_tap_shows_what_the_hub_refused_and_why(node: RunningHub) -> None:
    async with node.connect("a") as a, node.connect("b"), tapping(node, "a") as tap:
        # Too large to be read: only the socket that sent it is known.
        await a.send(as_json(task_request("a", "b", 1, pad=5000)))
        event = await tap.next_message()
        assert event["dropped"] == "oversize" and event["size"] > 4096
        assert (event["type"], event["source"], event["target"], event["body"]) == (
            None,
            None,
            None,
            None,
        )
        assert event["direction"] == "sent"
        # A registry message is answered for by the hub, not shown as refused.
        registry = task_request("a", "b", 0)
        registry["__type__"] = PIPECAT_REGISTRY
        await a.send(as_json(registry))
        # Read, and refused by the type policy: everything read is shown.
        refused = task_request("a", "b", 2)
        refused["__type__"] = "evil.module.Payload"
        await a.send(as_json(refused))
        event = await tap.next_message()
        assert (event["dropped"], event["type"], event["target"]) == (
            "type_not_allowed",
            "evil.module.Payload",
            "b",
        )
        assert event["body"]["__data__"]["payload"]["seq"] == 2


async def test_a_tap_changes_nothing_for_values_its_encoder_cannot_write(node: RunningHub) -> None:
    # JSON lets a client send a lone surrogate and an integer of any size; the hub
    # relays both. The tap shows them as text; the sender's socket, the delivery and
    # POST /api/send's answer are what they are untapped.
    payload = '{"text": "\\ud800 and \\udfff", "big": %s, "\\udc00key": 1}' % ("9" * 400)
    tree = task_request("a", "b", 1)
    raw = json.dumps(tree).replace('{"seq": 1}', payload).encode()
    async with node.connect("a") as a, node.connect("b") as b, tapping(node, "b") as tap:
        await a.send(raw)
        assert json.loads(await recv_non_registry(b))["__data__"]["payload"]["big"] == int(
            "9" * 400
        )
        event = await tap.next_message()
        shown = event["body"]["__data__"]["payload"]
        assert shown == {"text": "\\ud800 and \\udfff", "big": "9" * 400, "\\udc00key": 1}
        refused = raw.replace(TASK_REQUEST.encode(), b"evil.module.Payload")
        await a.send(refused)
        assert (await tap.next_message())["dropped"] == "type_not_allowed"
        response = await post_send(node, raw.replace(b'"a"', b'"ops"', 1), admin())
        assert response.status_code == 202
        assert await recv_non_registry(b)
        assert (await tap.next_message())["source"] == "ops"
        await a.send(as_json(task_request("a", "b", 2)))  # the sender's socket is open
        assert await recv_non_registry(b)
    assert node.metric("bushub_tap_events_total", outcome="dropped") == 0


async def test_no_tap_no_cost_and_a_closed_tap_lapses(node: RunningHub) -> None:
    taps = node.hub.relay.taps
    assert taps is not None and not taps.tapped
    async with node.connect("a") as a, node.connect("b") as b:
        async with tapping(node, "b"):
            assert "b" in taps.tapped
        # The node notices the reader gone and ends the stream (and its subscription).
        await wait_until(lambda: node.hub.operators.streams.open_count == 0, "tap closed")
        await a.send(as_json(task_request("a", "b")))
        assert await recv_non_registry(b)
    # Nothing renews the notice any more (it lapses by itself: test_opsnotices.py).
    await wait_until(lambda: not node.hub.operators.announcer.renewing, "renewals stopped")


async def test_a_slow_tap_reader_loses_events_and_is_told(
    node: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bushub.taps import STREAM_CAPACITY, TapStream

    # The reader is held while the events come (loopback's socket buffers would take
    # them all from a reader that merely does not read): a slow reader for sure.
    reading = asyncio.Event()
    reading.set()
    next_event = TapStream.next

    async def held(stream: TapStream, timeout: float) -> bytes | None:
        await reading.wait()
        return await next_event(stream, timeout)

    monkeypatch.setattr(TapStream, "next", held)
    async with node.connect("a") as a, node.connect("b") as b, tapping(node, "b") as tap:
        reading.clear()
        count = STREAM_CAPACITY + 300
        for seq in range(count):
            await a.send(as_json(task_request("a", "b", seq)))
        for _ in range(count):  # the traffic itself is whole
            await recv_non_registry(b)
        await wait_until(
            lambda: node.metric("bushub_tap_events_total", outcome="published") == count,
            "all published",
        )
        await asyncio.sleep(BRIEF)
        reading.set()
        seen, dropped = 0, 0
        while seen + dropped < count:
            event = await tap.next()
            if event["kind"] == "dropped":
                dropped += event["count"]
            else:
                seen += 1
        assert seen >= STREAM_CAPACITY and dropped > 0
        assert node.metric("bushub_tap_events_total", outcome="reader_dropped") == dropped


async def test_tap_needs_the_admin_token_and_an_agent_name(node: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as client:
        assert (await client.get("/api/tap/b")).status_code == 401
        wrong = {"authorization": "Bearer nope"}
        assert (await client.get("/api/tap/b", headers=wrong)).status_code == 401
        assert (await client.get("/api/tap/a%7Bb%7D", headers=admin())).status_code == 400
        # Names no socket can hold (its path refuses them): bytes that are not UTF-8,
        # which the decoded path turned into U+FFFD and tapped, a lone surrogate's
        # encoding, dot segments.
        for name in ("%FF", "%ED%A0%80", "%2E%2E", "%2E", "a%2Fb", "a/b", ""):
            answer = await client.get(f"/api/tap/{name}", headers=admin())
            assert answer.status_code == 400, name
            # As sent (it named the decoded "\ufffd" for %FF), and JSON as every
            # answer of the API (a slash, or nothing, got the framework's 404).
            assert answer.json()["error"] == f"not an agent name: {name!r} (as sent)"
        async with client.stream("GET", "/api/tap/caf%C3%A9", headers=admin()) as valid:
            assert valid.status_code == 200
        assert (await client.get("/api/cluster", headers=wrong)).status_code == 401
    assert node.hub.operators.streams.open_count == 0


async def test_a_draining_node_serves_no_new_tap(node: RunningHub) -> None:
    node.hub.draining = True  # as SIGTERM sets it: the node is about to go
    try:
        async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as client:
            response = await client.get("/api/tap/b", headers=admin())
        assert response.status_code == 503
        assert "draining" in response.json()["error"]
        assert node.hub.operators.streams.open_count == 0
    finally:
        node.hub.draining = False


# ---- GET /api/cluster ----------------------------------------------------------


async def test_cluster_lists_the_node_and_its_sockets_with_their_counts(node: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as client:
        async with node.connect("a", peer="b") as a, node.connect("b", format="msgpack") as b:
            await node.wait_holder("b")
            for seq in range(3):
                await a.send(as_json(task_request("a", "b", seq)))
                await recv_bytes(b)
            await a.send(b"\xff not a message")
            await wait_until(lambda: node.metric_sum("bushub_messages_dropped_total") == 1, "drop")
            response = await client.get("/api/cluster", headers=admin())
            assert response.status_code == 200
            view = response.json()
        assert view["node"] == "unit" and view["truncated"] is False
        [report] = view["nodes"]
        assert report["node"] == "unit" and report["ready"] is True and report["broker"] == "up"
        assert report["connections"] == 2 and report["agents"] == 2
        assert report["dropped"] == {"malformed": 1}
        rows = {row["agent"]: row for row in view["agents"]}
        assert list(rows) == ["a", "b"]
        assert rows["a"]["messages_in"] == 4 and rows["a"]["dropped"] == 1
        assert rows["a"]["peer"] == "b" and rows["a"]["format"] == "json"
        assert rows["b"]["format"] == "msgpack" and rows["b"]["messages_out"] >= 3
        assert rows["b"]["session"] is False and rows["b"]["dialect"] == "auto"
        # Sockets gone, rows gone.
        await wait_until(lambda: node.hub.connection_count == 0, "closed")
        view = (await client.get("/api/cluster", headers=admin())).json()
        assert view["agents"] == []


async def test_agents_lists_a_bounded_number_and_says_so(
    node: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unbounded, 100,000 agents' records took the answering node 2.3 s on its loop."""
    client = httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT)
    async with client, node.connect("a"), node.connect("b"), node.connect("c"):
        for agent in ("a", "b", "c"):
            await node.wait_holder(agent)
        whole = (await client.get("/agents", headers=admin())).json()
        monkeypatch.setattr(opsapi, "AGENTS_MOST", 2)
        cut = (await client.get("/agents", headers=admin())).json()
    assert [row["agent"] for row in whole["agents"]] == ["a", "b", "c"]
    assert whole["truncated"] is False
    assert len(cut["agents"]) == 2 and cut["truncated"] is True


async def test_console_page_is_served(node: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as client:
        response = await client.get("/console")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert b"api/cluster" in response.content
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


async def test_a_trailing_slash_is_not_redirected_to_the_host_a_client_named(
    node: RunningHub,
) -> None:
    """``/agents/`` was answered 307 to ``http://<the request's Host>/agents``: any Host
    a client sent came back as a redirect. Now it is not found, as any other path."""
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as client:
        for path in ("/agents/", "/api/cluster/", "/console/"):
            answer = await client.get(path, headers={**admin(), "host": "evil.example"})
            assert answer.status_code == 404, path
            assert "location" not in answer.headers
