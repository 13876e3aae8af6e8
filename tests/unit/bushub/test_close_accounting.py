"""Whose close it was decides the reason a socket's end is counted under
(``bushub.closecodes.close_reason``), and every close the hub sends is a
``CloseCode``."""

import json

import pytest
from websockets.frames import CloseCode as Rfc6455

from bushub.closecodes import (
    CLIENT_CLOSED,
    CLOSE_REASONS,
    SOCKET_CLOSE_REASONS,
    CloseCode,
    close_reason,
)
from bushub.connection import Connection
from tests.support.messages import task_request
from tests.unit.bushub.conftest import RunningHub
from tests.unit.bushub.helpers import close_code, wait_until

CLOSED = "bushub_connections_closed_total"


@pytest.mark.parametrize(
    ("requested", "sent_by_socket", "reason"),
    [
        # The client closed or vanished, whatever code it used.
        (None, None, CLIENT_CLOSED),
        # The hub's WebSocket layer closed on its own.
        (None, CloseCode.INTERNAL_ERROR, "internal_error"),
        (None, CloseCode.INVALID_DATA, "invalid_data"),
        (None, CloseCode.PROTOCOL_ERROR, "protocol_error"),
        (None, CloseCode.MESSAGE_TOO_BIG, "too_big"),
        (None, CloseCode.SERVICE_RESTART, "draining"),
        # The hub asked for the close: its reason wins, even over a later layer close.
        (CloseCode.INVALID_DATA, None, "format_mismatch"),
        (CloseCode.TAKEN_OVER, CloseCode.PROTOCOL_ERROR, "taken_over"),
        (CloseCode.SLOW_CONSUMER, None, "slow_consumer"),
    ],
)
def test_close_reason(
    requested: CloseCode | None, sent_by_socket: CloseCode | None, reason: str
) -> None:
    assert close_reason(requested, sent_by_socket) == reason


def test_every_close_code_has_a_reason_and_the_rfc_value() -> None:
    for code in CloseCode:
        assert CLOSE_REASONS[code]
        if code < 4000:
            assert int(code) == int(Rfc6455[code.name]), code.name
    assert set(SOCKET_CLOSE_REASONS) <= set(CloseCode)


async def test_a_routing_bug_closes_1011_counted_as_internal_error(
    node: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in routing ends only the socket that hit it, with 1011, and is counted
    as the hub's internal error: not as the client closing."""

    def broken_route(conn: Connection, data: bytes) -> None:
        raise RuntimeError("a bug in routing")

    async with node.connect("bystander") as bystander:
        monkeypatch.setattr(node.hub.relay, "route", broken_route)
        async with node.connect("victim") as victim:
            await victim.send(json.dumps(task_request("victim", "bystander")).encode())
            assert await close_code(victim) == CloseCode.INTERNAL_ERROR
        await wait_until(lambda: node.metric(CLOSED, reason="internal_error") == 1, "the count")
        assert node.metric(CLOSED, reason=CLIENT_CLOSED) == 0
        assert not bystander.close_code
