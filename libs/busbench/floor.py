"""The floor relay: the smallest correct design the hub is measured against.

A bare ``websockets`` asyncio server plus ``redis.asyncio``, one Redis channel per
agent. A socket ``/ws/{agent}?peer=P&format=F`` subscribes the agent's channel on
connect (one shared pub/sub connection per process) and unsubscribes on close. Every
frame it sends is parsed (orjson or msgpack), its target read from ``__data__.target``
(untargeted: ``P``), and published to the target's channel, one awaited PUBLISH per
frame, in order. The pub/sub reader hands each message to the socket holding the
agent. No presence, no auth, no registry announcements, no metrics, no translation
between formats, no permessage-deflate: what is left is the relay.

    python -m busbench.floor --port 9001 --redis-url redis://127.0.0.1:6380/0
"""

import argparse
import asyncio
import contextlib
import signal
from urllib.parse import parse_qs, urlsplit

import msgpack
import orjson
import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

PREFIX = b"floor:"


def target_of(data: bytes, msgpack_format: bool) -> str | None:
    tree = msgpack.unpackb(data, raw=False) if msgpack_format else orjson.loads(data)
    return tree["__data__"].get("target")


class Floor:
    def __init__(self, redis_url: str) -> None:
        self.redis = aioredis.Redis.from_url(redis_url)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.local: dict[bytes, ServerConnection] = {}
        self.errors = 0

    async def start(self) -> None:
        await self.redis.ping()
        await self.pubsub.subscribe(PREFIX + b"-")  # a subscription to block on

    async def deliver(self) -> None:
        while True:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is None or message["type"] != "message":
                continue
            ws = self.local.get(message["channel"])
            if ws is None:
                continue
            with contextlib.suppress(ConnectionClosed):
                await ws.send(message["data"])

    async def handler(self, ws: ServerConnection) -> None:
        url = urlsplit(ws.request.path)
        agent = url.path.rsplit("/", 1)[-1]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        peer = query.get("peer")
        is_msgpack = query.get("format") == "msgpack"
        channel = PREFIX + agent.encode()
        self.local[channel] = ws
        await self.pubsub.subscribe(channel)
        publish = self.redis.publish
        try:
            async for data in ws:
                if isinstance(data, str):
                    data = data.encode()
                try:
                    target = target_of(data, is_msgpack) or peer
                except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException):
                    self.errors += 1
                    continue
                if target:
                    await publish(PREFIX + target.encode(), data)
        finally:
            if self.local.get(channel) is ws:
                del self.local[channel]
                with contextlib.suppress(Exception):
                    await self.pubsub.unsubscribe(channel)


async def main_async(port: int, redis_url: str) -> None:
    floor = Floor(redis_url)
    await floor.start()
    deliver = asyncio.create_task(floor.deliver())
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        floor.handler,
        "127.0.0.1",
        port,
        compression=None,
        max_size=1 << 21,
        ping_interval=None,
        backlog=4096,
    ):
        await stop
    deliver.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description="floor relay for bushub-bench")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main_async(args.port, args.redis_url))
    except ImportError:
        asyncio.run(main_async(args.port, args.redis_url))


if __name__ == "__main__":
    main()
