"""The socket path names one agent, ``/ws/{agent}``, decoded strictly: anything else is
refused with 403 before any upgrade and counted (``bad_path``), and two paths never
decode to the same name unless they spell it the same."""

import pytest

from bushub.endpoint import BadParameters, agent_in_path
from tests.unit.bushub.conftest import RunningHub
from tests.unit.bushub.helpers import still_served, upgrade_status

FORBIDDEN = 403
SWITCHING = 101

BAD_PATHS = {
    "no name": "/ws",
    "empty name": "/ws/",
    "two segments": "/ws/a/b",
    "encoded slash": "/ws/a%2Fb",
    "encoded slash, lower case": "/ws/a%2fb",
    "dot dot": "/ws/..",
    "encoded dot dot": "/ws/%2E%2E",
    "dot": "/ws/.",
    "dot dot then a name": "/ws/../x",
    "not UTF-8 (FF)": "/ws/%FF",
    "not UTF-8 (FE)": "/ws/%FE",
    "truncated UTF-8": "/ws/caf%C3",
    "another path": "/agents",
}


@pytest.mark.parametrize("target", list(BAD_PATHS.values()), ids=list(BAD_PATHS))
async def test_a_path_naming_no_single_agent_is_refused_and_counted(
    node: RunningHub, target: str
) -> None:
    assert await upgrade_status(node.port, target) == FORBIDDEN
    assert node.metric("bushub_connections_refused_total", reason="bad_path") == 1
    assert node.metric("bushub_connections_opened_total") == 0


async def test_names_that_are_not_utf8_do_not_take_each_other_over(node: RunningHub) -> None:
    """%FF and %FE both decoded to U+FFFD before; a name that really is U+FFFD is
    still an agent's, and neither invalid spelling reaches it."""
    async with node.connect("\ufffd") as holder:
        await still_served(holder, "\ufffd")
        for target in ("/ws/%FF", "/ws/%FE"):
            assert await upgrade_status(node.port, target) == FORBIDDEN
        await still_served(holder, "\ufffd")
        assert node.metric("bushub_connections_closed_total", reason="taken_over") == 0
    assert node.metric("bushub_connections_refused_total", reason="bad_path") == 2


async def test_encoded_names_are_served_under_their_decoded_name(node: RunningHub) -> None:
    assert await upgrade_status(node.port, "/ws/caf%C3%A9") == SWITCHING
    async with node.connect("café") as ws:
        await still_served(ws, "café")
    assert node.metric("bushub_connections_refused_total", reason="bad_path") == 0


@pytest.mark.parametrize(
    ("raw", "agent"),
    [(b"/ws/a", "a"), (b"/ws/caf%C3%A9", "café"), (b"/ws/a%20b", "a b"), (b"/ws/%2E.x", "..x")],
)
def test_agent_in_path_decodes_one_segment(raw: bytes, agent: str) -> None:
    assert agent_in_path(raw) == agent


@pytest.mark.parametrize("raw", [t.encode() for t in BAD_PATHS.values()])
def test_agent_in_path_refuses(raw: bytes) -> None:
    with pytest.raises(BadParameters):
        agent_in_path(raw)


@pytest.mark.parametrize("query", ["peer=%FF", "peer=caf%C3", "peer=w&format=%FEjson"])
async def test_a_query_parameter_that_is_not_utf8_is_refused_and_counted(
    node: RunningHub, query: str
) -> None:
    """The server's decoding turned ``peer=%FF`` into U+FFFD, a peer no socket's path
    can name; the same rule as for the path holds for the query."""
    assert await upgrade_status(node.port, f"/ws/a?{query}") == FORBIDDEN
    assert node.metric("bushub_connections_refused_total", reason="bad_parameters") == 1
    assert await upgrade_status(node.port, "/ws/a?peer=caf%C3%A9") == SWITCHING
