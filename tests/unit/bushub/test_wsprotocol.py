"""The direct path writes the same bytes websockets would for a server's binary frame."""

import socket

import pytest
from websockets.frames import Frame, Opcode

from bushub.wsprotocol import frame_header, on_client_socket


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_header_matches_websockets_serialization(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = Frame(Opcode.BINARY, payload).serialize(mask=False)
    assert frame_header(size) + payload == expected


def test_a_transport_whose_socket_is_closed_counts_as_hung_up() -> None:
    """Its descriptor is -1 once closed, which ``socket.socket`` refuses with a
    ValueError, not an OSError: a socket that ended while its reading was held logged
    an ERROR traceback from the event loop."""
    closed = socket.socket()
    closed.close()

    class Transport:
        def get_extra_info(self, name: str) -> object:
            return closed if name == "socket" else None

    assert on_client_socket(Transport(), lambda sock: False)  # type: ignore[arg-type]
