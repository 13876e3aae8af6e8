"""The sharded subscriber and a MOVED reply to a SSUBSCRIBE (its slot moved on, the
slot map a step behind): reported as such, whenever it comes, and not taken for the
PING's answer, which failed the connection with every channel on it (a node whose
slot map was behind a reshard went unready, every Redis up). The real cluster's
reshard is in tests/integration/test_cluster_reshard.py."""

import asyncio
from typing import Any

import pytest
from redis.exceptions import ResponseError

from bushub.broker.subscriber import Subscriber


class Transport(asyncio.Transport):
    """Takes writes; nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return False


def connected(sharded: bool = True) -> tuple[Subscriber, list[Exception], list[Exception]]:
    sub = Subscriber(lambda channel, data: None, sharded=sharded)
    sub.connection_made(Transport())
    moved: list[Exception] = []
    refused: list[Exception] = []
    sub.on_moved = moved.append
    sub.on_refused = refused.append
    return sub, moved, refused


async def test_a_moved_subscribe_before_the_ping_is_reported_and_the_ping_answered() -> None:
    sub, moved, refused = connected()
    sub.subscribe(["bushub:msg:{a}", "bushub:msg:{b}"])
    answered = sub.ping()
    sub.data_received(
        b"*3\r\n$10\r\nssubscribe\r\n$14\r\nbushub:msg:{a}\r\n:1\r\n"
        b"-MOVED 3300 127.0.0.1:7001\r\n"
        b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    )
    await asyncio.wait_for(answered, 1)
    assert [str(e) for e in moved] == ["MOVED 3300 127.0.0.1:7001"]
    assert refused == []


async def test_a_moved_subscribe_later_is_reported_too() -> None:
    sub, moved, refused = connected()
    sub.data_received(b"-MOVED 3300 127.0.0.1:7001\r\n")
    assert len(moved) == 1 and refused == []


async def test_any_other_refusal_before_the_ping_still_fails_it() -> None:
    sub, moved, _ = connected()
    answered = sub.ping()
    sub.data_received(b"-CLUSTERDOWN Hash slot not served\r\n")
    with pytest.raises(ResponseError, match="CLUSTERDOWN"):
        await asyncio.wait_for(answered, 1)
    assert moved == []


async def test_classic_pub_sub_has_no_moved() -> None:
    sub, moved, _ = connected(sharded=False)
    answered = sub.ping()
    sub.data_received(b"-MOVED 3300 127.0.0.1:7001\r\n")
    with pytest.raises(ResponseError, match="MOVED"):
        await asyncio.wait_for(answered, 1)
    assert moved == []
