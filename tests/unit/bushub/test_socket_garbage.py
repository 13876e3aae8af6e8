"""What a socket leaves once it has ended: nothing for the cycle collector.

The node raises the collector's thresholds (bushub.gcpolicy), so what only a
reference cycle keeps alive waits for a rare full collection. Each accepted socket
left three: uvicorn's HTTP protocol and its parser (uvicorn breaks that one in a
``connection_lost`` an upgraded protocol never gets), the WebSocket protocol and its
inbox's callback, and the protocol and its scope's direct-path extension; with what
they held, ~52 objects (9 KB) a socket, and a probe's node grew 47 MB over 8,000
sockets before a full collection. Here every one of a closed socket's objects dies by
reference count.
"""

import asyncio
import gc
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bushub.wsprotocol import HubWebSocketProtocol
from tests.support.messages import task_request
from tests.unit.bushub.conftest import RunningHub
from tests.unit.bushub.helpers import as_json, recv_non_registry, wait_until

PAIRS = 10


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """What the collector finds unreachable from here on (it runs only when asked)."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def reset(client: Any) -> None:
    """End a ``websockets`` client's connection with a TCP reset, no close frame."""
    sock = client.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.transport.abort()


async def all_ended(node: RunningHub) -> None:
    """Once every socket of ``node`` has ended and its last callbacks ran, collected."""
    await wait_until(lambda: node.hub.connection_count == 0, "every socket ended")
    await asyncio.sleep(0.1)
    gc.collect()


async def test_an_ended_socket_leaves_nothing_to_the_cycle_collector(
    node: RunningHub, saved_garbage: list[object]
) -> None:
    for n in range(PAIRS):
        async with node.connect(f"g-b{n}") as b, node.connect(f"g-a{n}", peer=f"g-b{n}") as a:
            await node.wait_holder(f"g-b{n}")
            await a.send(as_json(task_request(f"g-a{n}", f"g-b{n}")))
            await recv_non_registry(b)
            if n % 2:  # half end with a TCP reset, no close frame
                reset(a)
    await all_ended(node)
    left = [o for o in saved_garbage if isinstance(o, HubWebSocketProtocol | HttpToolsProtocol)]
    assert left == [], f"{len(left)} protocols of {2 * PAIRS} sockets left to a full collection"


async def test_an_ended_socket_is_let_go_at_once(node: RunningHub) -> None:
    """A socket whose connection was gone before its end was handled (a reset) kept
    its protocol (and the transport and parser it holds) alive for the close timeout:
    the timer that cuts off a client that stops reading was set after the connection
    was lost. A client resuming in a loop at 200 a second kept ~2,000 alive."""
    for n in range(PAIRS):
        async with node.connect(f"c-a{n}") as a:
            await node.wait_holder(f"c-a{n}")
            if n % 2:  # half end with a TCP reset, half with a close frame
                reset(a)
    await all_ended(node)
    alive = [o for o in gc.get_objects() if isinstance(o, HubWebSocketProtocol)]
    assert alive == [], f"{len(alive)} protocols of {PAIRS} ended sockets still alive"
