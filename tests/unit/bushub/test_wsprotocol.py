"""The direct path writes the same bytes websockets would for a server's binary frame."""

import pytest
from websockets.frames import Frame, Opcode

from bushub.wsprotocol import frame_header


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_header_matches_websockets_serialization(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = Frame(Opcode.BINARY, payload).serialize(mask=False)
    assert frame_header(size) + payload == expected
