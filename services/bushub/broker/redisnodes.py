"""The node registry on Redis or Redis Cluster (``bushub.broker.nodes``).

Every registry key carries the ``{nodes}`` hash tag, so each script runs on one shard,
and times come from the Redis clock (``TIME``): nodes' clocks may disagree, the
registry's cannot.
"""

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from redis.asyncio import Redis, RedisCluster

from bushub.broker.coalesce import Coalesced
from bushub.broker.nodes import Beat, BeatStatus, NodeRegistry
from bushub.broker.rawscripts import Requester, arg_bytes
from bushub.broker.refusals import BrokerRefused
from bushub.broker.respconn import encode_command
from buswire.channels import (
    collected_index_key,
    collecting_key,
    gone_key,
    live_nodes_key,
    node_index_key,
)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: live, collecting, index, collected, gone; ARGV: node, ttl ms.
# A node being collected is not registered again until that ends (its records
# are being deleted; re-asserting them now would race the cleaner). A node whose
# cleaner gave up merges the collected index back into its own.
BEAT_SCRIPT = (
    _NOW
    + """
local status
local hold = redis.call('ZSCORE', KEYS[2], ARGV[1])
if hold and tonumber(hold) >= now then
  status = 'collecting'
else
  if hold then
    redis.call('ZREM', KEYS[2], ARGV[1])
    if redis.call('EXISTS', KEYS[4]) == 1 then
      redis.call('SUNIONSTORE', KEYS[3], KEYS[3], KEYS[4])
      redis.call('DEL', KEYS[4])
    end
  end
  local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not s then status = 'absent'
  elseif tonumber(s) < now then status = 'lapsed'
  else status = 'live' end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. now)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
for _, n in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do table.insert(dead, n) end
for _, n in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do table.insert(dead, n) end
return {status, dead}
"""
)

# KEYS: live, collecting, index, collected; ARGV: node, hold ms.
TAKE_SCRIPT = (
    _NOW
    + """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
local hold = redis.call('ZSCORE', KEYS[2], ARGV[1])
if s and tonumber(s) >= now then return false end
if hold and tonumber(hold) >= now then return false end
if (not s) and (not hold) then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('SUNIONSTORE', KEYS[4], KEYS[4], KEYS[3])
  redis.call('DEL', KEYS[3])
end
return redis.call('SMEMBERS', KEYS[4])
"""
)


# KEYS: collecting, collected, gone; ARGV: node, linger ms.
COLLECTED_SCRIPT = (
    _NOW
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS: index.
RESET_SCRIPT = """
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return members
"""


def _by_node(items: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """Index members grouped by node, in the order given."""
    by_node: dict[str, list[str]] = {}
    for node, members in items:
        by_node.setdefault(node, []).extend(members)
    return by_node


def _keys(node: str) -> list[str]:
    return [
        live_nodes_key(),
        collecting_key(),
        node_index_key(node),
        collected_index_key(node),
        gone_key(),
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisNodeRegistry(NodeRegistry):
    """The registry on a redis-py client, single or cluster.

    Args:
        client: The broker's command client.
        guard: Wraps every call: the broker's translation of Redis errors into
            ConnectionError and BrokerRefused, and its time bound.
        raw: A raw connection to the same Redis (one Redis only) for the index
            writes of many handshakes or ends at once, as one write with no pool.
    """

    def __init__(
        self,
        client: "Redis | RedisCluster",
        guard: Callable[[], AbstractAsyncContextManager[None]],
        raw: Requester | None = None,
    ) -> None:
        self._client = client
        self._guard = guard
        self._raw = raw
        self._beat = client.register_script(BEAT_SCRIPT)
        self._take = client.register_script(TAKE_SCRIPT)
        self._reset = client.register_script(RESET_SCRIPT)
        self._collected = client.register_script(COLLECTED_SCRIPT)
        self._enlist = Coalesced(self._enlist_batch)
        self._delist = Coalesced(self._delist_batch)

    async def beat(self, node: str, ttl: float) -> Beat:
        async with self._guard():
            status, dead = await self._beat(keys=_keys(node), args=[node, _ms(ttl)])
        return Beat(BeatStatus(_text(status)), frozenset(_text(n) for n in dead) - {node})

    async def enlist(self, node: str, members: Sequence[str]) -> None:
        if members:
            await self._enlist((node, list(members)))

    async def _enlist_batch(self, items: list[tuple[str, list[str]]]) -> list[None]:
        """The claims of one loop iteration (a storm of handshakes) in one SADD a node."""
        await self._index(b"SADD", _by_node(items))
        return [None] * len(items)

    async def delist(self, node: str, member: str) -> None:
        await self._delist((node, [member]))

    async def _delist_batch(self, items: list[tuple[str, list[str]]]) -> list[None]:
        """The ends of one loop iteration (a drain, a mass disconnect) in one SREM a node."""
        await self._index(b"SREM", _by_node(items))
        return [None] * len(items)

    async def _index(self, command: bytes, by_node: dict[str, list[str]]) -> None:
        """``command`` (SADD, SREM) on each node's index."""
        keys = [node_index_key(node) for node in by_node]
        if self._raw is not None:
            commands = b"".join(
                encode_command(command, arg_bytes(key), *(arg_bytes(m) for m in members))
                for key, members in zip(keys, by_node.values(), strict=True)
            )
            async with self._guard():
                replies = await self._raw.request(commands, len(keys))
            refused = next((r for r in replies if isinstance(r, Exception)), None)
            if refused is not None:
                raise BrokerRefused(refused)
            return
        write = self._client.sadd if command == b"SADD" else self._client.srem
        for key, members in zip(keys, by_node.values(), strict=True):
            async with self._guard():
                await write(key, *members)

    async def take(self, dead: str, hold: float) -> list[str] | None:
        async with self._guard():
            members = await self._take(keys=_keys(dead), args=[dead, _ms(hold)])
        return None if members is None else [_text(m) for m in members]

    async def collected(self, dead: str, linger: float) -> None:
        keys = [collecting_key(), collected_index_key(dead), gone_key()]
        async with self._guard():
            await self._collected(keys=keys, args=[dead, _ms(linger)])

    async def reset(self, node: str) -> list[str]:
        async with self._guard():
            members = await self._reset(keys=[node_index_key(node)])
        return [_text(m) for m in members]

    async def leave(self, node: str) -> None:
        async with self._guard():
            await self._client.zrem(live_nodes_key(), node)
            await self._client.delete(node_index_key(node))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
