"""Both dialect proxies speak sessions by default and turn a lossy resume into
``on_resume_gap``; a resume that lost nothing fires nothing."""

from typing import Any

import pytest
from pipecat_subagents.bus import AsyncQueueBus

from busclient.reconnecting_pipecat import ReconnectingWebSocketProxyClient
from busclient.reconnecting_subagents import ReconnectingWebSocketProxyClientAgent
from buswire import Dialect, Format, registry_message
from buswire.codec import encode_tree
from buswire.sessionframe import valid_session_id
from tests.support import waiting
from tests.support.waiting import TIMEOUT

URL = "ws://127.0.0.1:1/ws/local?peer=remote"


def make_proxy(dialect: str, **options: Any) -> Any:
    if dialect == "subagents":
        return ReconnectingWebSocketProxyClientAgent(
            "proxy",
            bus=AsyncQueueBus(),
            url=URL,
            remote_agent_name="remote",
            local_agent_name="local",
            **options,
        )
    return ReconnectingWebSocketProxyClient(
        "proxy", url=URL, remote_worker_name="remote", local_worker_name="local", **options
    )


DIALECTS = ("subagents", "pipecat")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_sessions_are_on_by_default_and_can_be_turned_off(dialect: str) -> None:
    session_id = make_proxy(dialect).reconnect_stats.session_id
    assert session_id is not None and valid_session_id(session_id)
    assert make_proxy(dialect).reconnect_stats.session_id != session_id  # one per instance
    assert make_proxy(dialect, session=False).reconnect_stats.session_id is None


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("result", "lost"), [("gap", True), ("new", True), ("recovered", False)])
async def test_a_lossy_resume_fires_on_resume_gap(dialect: str, result: str, lost: bool) -> None:
    proxy = make_proxy(dialect)
    fired: list[tuple[Any, str, str]] = []

    @proxy.event_handler("on_resume_gap")  # type: ignore[misc]
    async def on_resume_gap(who: Any, result: str, epoch: str) -> None:
        fired.append((who, result, epoch))

    proxy.reconnect_stats.last_resume_lost = lost  # as the link sets it before the hook
    await proxy.link_resumed(result, "e2")
    if not lost:
        # Handlers run as tasks: a lossy resume after it shows what the first one fired.
        proxy.reconnect_stats.last_resume_lost = True
        await proxy.link_resumed("gap", "e3")
    await waiting.until(lambda: bool(fired), TIMEOUT, what="on_resume_gap")
    expected = (result, "e2") if lost else ("gap", "e3")
    assert fired == [(proxy, *expected)]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_proxy_told_of_its_peer_says_so_on_its_next_handshakes(dialect: str) -> None:
    """Its later handshakes carry ``peer_seen=1`` (a node it resumes on where the peer
    is gone then takes it for lost); an announcement of another agent is no sign."""
    proxy = make_proxy(dialect)
    session = proxy.reconnect_stats.session
    which = Dialect.SUBAGENTS if dialect == "subagents" else Dialect.PIPECAT

    async def announce(agent: str) -> None:
        tree = registry_message(which, source="bushub", runner=f"bushub:{agent}:c1", agent=agent)
        await proxy.link_frame(encode_tree(tree, Format.JSON))

    await announce("someone-else")
    assert "peer_seen" not in session.url(URL)
    await announce("remote")
    assert session.url(URL).endswith("&peer_seen=1")
