"""Connection parameters (docs/protocol.md, Connection contract) and the plain HTTP
routes (Operating).

A handshake asking for something the hub does not offer is refused with HTTP 403
before any upgrade, and nothing of it is claimed or recorded.
"""

import asyncio

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.unit.bushub.conftest import RunningHub
from tests.unit.bushub.helpers import TIMEOUT, still_served

FORBIDDEN = 403

BAD = {
    "braces in agent": ("a{b}", {}),
    "space in agent": ("a b", {}),
    "agent too long": ("a" * 129, {}),
    "braces in peer": ("a", {"peer": "p{x}"}),
    "peer too long": ("a", {"peer": "p" * 129}),
    "unknown format": ("a", {"format": "xml"}),
    "unknown dialect": ("a", {"dialect": "klingon"}),
    "unknown on_peer_lost": ("a", {"on_peer_lost": "maybe"}),
    # Read as a declared json before (a first MsgPack frame closed the socket), where
    # an empty dialect= was refused.
    "empty format": ("a", {"format": ""}),
    # Names that look like another in every log line and console row: they were
    # taken as names of their own.
    "hangul filler": ("worker\u3164", {}),
    "variation selector": ("worker\ufe0f", {}),
    "grapheme joiner": ("wor\u034fker", {}),
    "not NFC": ("cafe\u0301", {}),
    "invisible peer": ("a", {"peer": "worker\u115f"}),
    "blank braille": ("a\u2800b", {}),
    "combining mark first": ("\u0301a", {}),
}

GOOD = {
    "longest agent": ("a" * 128, {}),
    "json": ("a", {"format": "json"}),
    "msgpack": ("a", {"format": "msgpack"}),
    "subagents": ("a", {"dialect": "subagents"}),
    "pipecat": ("a", {"dialect": "pipecat"}),
    "auto": ("a", {"dialect": "auto"}),
    "keep": ("a", {"on_peer_lost": "keep", "peer": "p"}),
    "close": ("a", {"on_peer_lost": "close", "peer": "p"}),
    "non-ASCII, NFC": ("caf\u00e9-\u540d\u524d", {}),
}


@pytest.mark.parametrize(("agent", "query"), list(BAD.values()), ids=list(BAD))
async def test_bad_parameters_are_refused_with_403(
    node: RunningHub, agent: str, query: dict[str, str]
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with node.connect(agent, **query):
            pass
    assert refused.value.response.status_code == FORBIDDEN
    assert node.metric("bushub_connections_opened_total") == 0
    assert node.metric("bushub_connections") == 0
    assert node.metric("bushub_connections_refused_total", reason="bad_parameters") == 1
    assert await node.holder(agent) is None


@pytest.mark.parametrize(("agent", "query"), list(GOOD.values()), ids=list(GOOD))
async def test_good_parameters_are_accepted(
    node: RunningHub, agent: str, query: dict[str, str]
) -> None:
    async with node.connect(agent, **query) as ws:
        if query.get("format") != "msgpack":
            await still_served(ws, agent)
        assert await node.holder(agent) is not None


async def test_healthz_and_readyz(node: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as http:
        health = await http.get("/healthz")
        ready = await http.get("/readyz")
    assert health.status_code == 200
    assert health.json()["status"] == "alive"
    assert ready.status_code == 200
    assert ready.json()["ready"] is True


async def test_a_plain_request_on_a_sockets_path_is_told_to_upgrade(node: RunningHub) -> None:
    """curl on the URL a proxy dials got FastAPI's 404, as if the path were wrong, and
    nothing counted it."""
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as http:
        plain = await http.get("/ws/worker")
        other = await http.get("/ws/worker", headers={"upgrade": "h2c", "connection": "Upgrade"})
        posted = await http.post("/ws/worker", content=b"{}")
    for response in (plain, other, posted):
        assert response.status_code == 426
        assert response.headers["upgrade"] == "websocket"
        assert "WebSocket handshakes" in response.text
    assert node.metric("bushub_connections_refused_total", reason="bad_upgrade") == 3


async def upgrade_answer(
    node: RunningHub, version: str = "1.1", host: str = "Host: h\r\n", ws_version: str = "13"
) -> bytes:
    """What the node answers a handshake written by hand, up to its close."""
    reader, writer = await asyncio.open_connection(node.host, node.port)
    writer.write(
        f"GET /ws/old?peer=x HTTP/{version}\r\n{host}Upgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: {ws_version}\r\n\r\n".encode()
    )
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)  # then closed
    writer.close()
    return answer


@pytest.mark.parametrize("version", ["0.9", "1.0", "2.0"])
async def test_an_upgrade_in_another_http_version_than_1_1_is_refused(
    node: RunningHub, version: str
) -> None:
    """RFC 6455 asks HTTP/1.1 of an upgrade: HTTP/0.9 and 2.0 request lines were upgraded
    (uvicorn rewrote them as 1.1 for the WebSocket layer)."""
    answer = await upgrade_answer(node, version=version)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.endswith(b"a WebSocket upgrade needs HTTP/1.1")
    assert node.metric("bushub_connections_refused_total", reason="bad_upgrade") == 1
    assert await node.holder("old") is None
    async with node.connect("new") as ws:  # HTTP/1.1, as every client sends
        await still_served(ws, "new")


@pytest.mark.parametrize("host", ["", "Host: h\r\nHost: other\r\n"])
async def test_an_upgrade_without_exactly_one_host_is_refused(node: RunningHub, host: str) -> None:
    """HTTP/1.1 asks exactly one Host of a request (RFC 9112 3.2); two were upgraded."""
    answer = await upgrade_answer(node, host=host)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.endswith(b"a request needs exactly one Host header")
    assert node.metric("bushub_connections_refused_total", reason="bad_upgrade") == 1
    assert await node.holder("old") is None


async def test_a_websocket_version_the_hub_does_not_speak_is_told_the_one_it_does(
    node: RunningHub,
) -> None:
    """RFC 6455 4.4: the refusal names the version the server speaks."""
    answer = await upgrade_answer(node, ws_version="8")
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 400 "), answer
    assert b"\r\nsec-websocket-version: 13" in head
    assert node.metric("bushub_connections_refused_total", reason="bad_upgrade") == 1
