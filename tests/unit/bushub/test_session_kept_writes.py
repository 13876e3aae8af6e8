"""What a session's stream kept is written whole and once (docs/protocol.md,
Sessions): a replay larger than the socket's queue does not close a reader that keeps
up as a slow consumer, and a message the socket's format cannot carry spends its
position instead of leaving a hole that would be read (and refused) again."""

import asyncio
import json
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection

from buswire import sessionframe
from tests.support.messages import encode, task_request
from tests.unit.bushub.conftest import running_hub, small_settings
from tests.unit.bushub.helpers import wait_until

QUEUE = 64 << 10  # --queue-bytes, at its least (the largest message)


class Received:
    """The numbered messages a session socket got: (position, payload seq)."""

    def __init__(self, ws: ClientConnection, fmt: str = "json") -> None:
        self.ws = ws
        self.got: list[tuple[int, int]] = []
        self._fmt = fmt
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for data in self.ws:
            assert isinstance(data, bytes)
            frame = sessionframe.decode(data)
            if frame.kind is sessionframe.Kind.MESSAGE:
                load: Any = msgpack.unpackb if self._fmt == "msgpack" else json.loads
                self.got.append((frame.position, load(frame.payload)["__data__"]["payload"]["seq"]))


def padded(seq: int, size: int) -> bytes:
    tree: Any = task_request("a", "b", seq=seq)
    tree["__data__"]["payload"]["padding"] = "x" * size
    return encode(tree)


async def test_a_replay_larger_than_the_queue_reaches_a_reader_that_keeps_up() -> None:
    count, size = 300, 30_000  # 9 MB kept: over a hundred times the queue
    settings = small_settings(
        queue_bytes=QUEUE, resume_bytes=16 << 20, rate_messages=0, rate_bytes=0
    )
    async with running_hub(settings) as node:
        async with node.connect("b", peer="a", session="SB", on_peer_lost="keep"):
            await node.wait_metric("bushub_connections", 1)
        async with node.connect("a", peer="b", on_peer_lost="keep") as a:
            for seq in range(1, count + 1):
                await a.send(padded(seq, size))
            await node.wait_metric("bushub_session_messages_total", count, event="kept_away")
            async with node.connect("b", peer="a", session="SB", on_peer_lost="keep") as b:
                received = Received(b)
                await wait_until(
                    lambda: len(received.got) == count or b.close_code is not None,
                    "the whole replay, or the socket closed",
                    10.0,
                )
                assert b.close_code is None, f"closed {b.close_code} after {len(received.got)}"
                assert received.got == [(p, p) for p in range(1, count + 1)]
            assert node.metric("bushub_messages_dropped_total", reason="slow_consumer") == 0


def unreadable_in_msgpack(seq: int) -> bytes:
    """A JSON message whose bytes field is not base64: no MsgPack socket can take it."""
    tree: Any = task_request("a", "b", seq=seq)
    tree["__data__"]["payload"]["b"] = {"__type__": "bytes", "__data__": "!!!"}
    return encode(tree)


async def test_a_message_the_sockets_format_cannot_carry_spends_its_position(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = small_settings(rate_messages=0, rate_bytes=0)
    async with (
        running_hub(settings) as node,
        node.connect("b", peer="a", session="SB", format="msgpack", on_peer_lost="keep") as b,
        node.connect("a", peer="b", on_peer_lost="keep") as a,
    ):
        await node.wait_metric("bushub_connections", 2)
        received = Received(b, "msgpack")
        for seq, readable in ((1, True), (2, False), (3, True), (4, False), (5, False), (6, True)):
            await a.send(padded(seq, 10) if readable else unreadable_in_msgpack(seq))
        await wait_until(lambda: len(received.got) == 3, "the readable three")
        await asyncio.sleep(0.2)
        assert received.got == [(1, 1), (3, 3), (6, 6)]
        dropped = node.nonzero("bushub_messages_dropped_total")
        assert sum(dropped.values()) == 3, f"each unreadable one counted once: {dropped}"
        events = node.nonzero("bushub_session_messages_total")
        assert not {"event=duplicate", "event=lost"} & set(events), events
        # Its sender was told it went through: the drop is said, once per agent and
        # 10 s (the log's rate limit).
        said = [r for r in caplog.records if "cannot be written in msgpack" in r.getMessage()]
        assert said and said[0].getMessage().startswith("a message for b cannot be written")


def with_bytes(seq: int, size: int) -> bytes:
    """A MsgPack message carrying ``size`` raw bytes (base64 in JSON: a third more)."""
    tree: Any = task_request("a", "b", seq=seq)
    tree["__data__"]["payload"]["image"] = bytes(range(256)) * (size // 256)
    return encode(tree, "msgpack")


@pytest.mark.parametrize("session", [True, False], ids=["session", "plain"])
async def test_a_message_its_translation_makes_oversize_is_dropped_not_written(
    caplog: pytest.LogCaptureFixture, session: bool
) -> None:
    """Within --max-message-bytes as MsgPack, past it as JSON: written, it failed the
    receiving client's connection (past its own limit, the stock proxies' 1 MiB), and a
    session's resume gave it again, for good. Now it is dropped and its position spent."""
    limit = 4096
    settings = small_settings(rate_messages=0, rate_bytes=0, max_message_bytes=limit)
    query = {"session": "SB"} if session else {}
    async with (
        running_hub(settings) as node,
        node.connect("b", peer="a", on_peer_lost="keep", **query) as b,
        node.connect("a", peer="b", format="msgpack", on_peer_lost="keep") as a,
    ):
        await node.wait_metric("bushub_connections", 2)
        big = with_bytes(2, 3584)
        assert len(big) <= limit
        for frame in (with_bytes(1, 256), big, with_bytes(3, 256)):
            await a.send(frame)
        if session:
            received = Received(b)
            await wait_until(lambda: len(received.got) == 2, "the two that fit")
            assert received.got == [(1, 1), (3, 3)]
        else:
            seqs = []
            while len(seqs) < 2:
                tree = json.loads(await asyncio.wait_for(b.recv(), 5))
                if "payload" in tree["__data__"]:
                    seqs.append(tree["__data__"]["payload"]["seq"])
            assert seqs == [1, 3]
        assert node.metric("bushub_messages_dropped_total", reason="oversize") == 1
        said = [
            r.getMessage() for r in caplog.records if "cannot be written in json" in r.getMessage()
        ]
        assert said and "over --max-message-bytes" in said[0]
        assert b.close_code is None
