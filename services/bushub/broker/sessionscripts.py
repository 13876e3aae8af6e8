"""The Redis side of sessions (docs/protocol.md, Sessions): the delivery, resume,
re-assert and release scripts, and the trim of what a session acknowledged.

Every message for an agent is published by ``DELIVER`` instead of a bare
``PUBLISH`` once sessions are on. In one step on the agent's shard it

- relays a session's message once: the newest position relayed per sending session
  is kept in ``bushub:relayed:{agent}``, and a position at or below it is answered -1
  (a resend after a reconnect, taken already); the record lives on at least a
  window past the last message relayed to the agent (``Delivery`` says when its
  expiry is set);
- for a frame a node sent again after a broker break (relay frame byte 1, bit 6) when
  a session holds the name: publishes it unnumbered if the session was put back in
  the last ``RECOVERY_MS`` (Redis lost what it kept: the copy may be all that is left
  of a message it acknowledged and never wrote; the receiving node delivers it if it
  has not already); else, for a stock sender's frame, answers -3 (the session's stream
  and resume cover the break, and storing the copy would number it twice), while a
  session's frame, having passed the relay check above, was never relayed here (its
  original was lost with a primary that failed over before its write reached the
  replica) and is kept and published as any new message;
- keeps it (unless the relay frame says transient: a bridged frame, with
  ``--transient-frames``) in the agent's stream when a session holds the name (connected, or away
  for at most the window), under the next position, trimming the oldest over the
  bounds (the highest position so lost is remembered: a resume from before it is a
  gap), and publishes it wrapped with its position; answered -2 when it was kept and
  nobody is subscribed (the session is away: not undeliverable); a stream this makes
  for an away session expires as the session's does, after twice its time left (its
  release could set no expiry on a stream that did not exist yet, and one made after
  it was kept for good; see ``RELEASE`` for why twice);
- otherwise publishes it as ``PUBLISH`` would.

The session's ``kept`` is an upper bound of the bytes its stream holds, not their
sum: an acknowledgement's ``TRIM`` only trims (5 µs of Redis, where one that read
and summed what it trimmed cost 23), so only what is kept adds to it. Over a bound
the script counts again before it drops anything, unless the stream still starts
where it started when ``kept`` was last exact (``head``: nothing trimmed since, as
for an away session, whose stream is only ever trimmed here): nothing is dropped for
bytes an acknowledgement freed, and an away session at its bound is not summed per
message (a connected one more than ``--resume-bytes`` behind its acknowledgements is
summed at most once per trim). Over the count bound alone the upper bound is enough:
it is not summed.

``bytes``, the exact sum that nodes of earlier versions keep and trim by, is left to
them. In a rolling upgrade from such a version each side misses what the other did:
a node of this version lets the stream pass the byte bound by what earlier nodes
added, and an earlier node finds ``bytes`` too high by what nodes of this version
trimmed of its own additions, so a session that takes more than ``--resume-bytes``
through earlier nodes while it lasts may lose its oldest messages early (a gap,
reported as any other).

Positions are written with ``%d``: Lua's numbers are doubles, exact to 2**53, and
``tostring`` would write a large one in exponent form.
"""

import asyncio
import enum
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bushub.broker.rawscripts import Script, arg_bytes, bulk, script_head
from buswire.channels import relayed_key, session_key, stream_key

# How long after a session was put back (Redis had lost it) a copy sent again after
# the break is published to it: the copies come within seconds of Redis' return.
RECOVERY_MS = 10_000

# KEYS: session, stream, relayed. ARGV: publish command, channel, most messages,
# most bytes, the relayed record's life (ms; negative: only for a sender it does
# not know yet, see ``Delivery``), relay frame.
DELIVER = """
local data = ARGV[6]
local life = tonumber(ARGV[5])
if string.byte(data, 1) == 2 then
  local position = struct.unpack('>d', data, 11)
  local sender = string.sub(data, 20, 19 + string.byte(data, 19))
  local last = redis.call('HGET', KEYS[3], sender)
  if last and position <= tonumber(last) then
    if life > 0 and redis.call('PTTL', KEYS[3]) < life then
      redis.call('PEXPIRE', KEYS[3], life)
    end
    return -1
  end
  redis.call('HSET', KEYS[3], sender, string.format('%d', position))
  if (life > 0 or not last) and redis.call('PTTL', KEYS[3]) < math.abs(life) then
    redis.call('PEXPIRE', KEYS[3], math.abs(life))
  end
elseif life > 0 and redis.call('PTTL', KEYS[3]) < life then
  redis.call('PEXPIRE', KEYS[3], life)
end
if string.byte(data, 2) % 128 >= 64 and redis.call('EXISTS', KEYS[1]) == 1 then
  local since = tonumber(redis.call('HGET', KEYS[1], 'reasserted') or '0')
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if since > 0 and ms - since < RECOVERY_MS then
    return redis.call(ARGV[1], ARGV[2], data)
  end
  if string.byte(data, 1) ~= 2 then
    return -3
  end
end
if string.byte(data, 2) >= 128 or redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.call(ARGV[1], ARGV[2], data)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], string.format('0-%d', seq), 'd', data)
local bytes = redis.call('HINCRBY', KEYS[1], 'kept', #data)
local count = redis.call('XLEN', KEYS[2])
if count == 1 then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl * 2)
  end
end
local most, most_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
if count > most or bytes > most_bytes then
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  local exact = first[1] == redis.call('HGET', KEYS[1], 'head')
  if bytes > most_bytes and not exact then
    bytes, exact = 0, true
    for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
      bytes = bytes + #e[2][2]
    end
  end
  local lost
  while count > 1 and (count > most or bytes > most_bytes) do
    redis.call('XDEL', KEYS[2], first[1])
    bytes = bytes - #first[2][2]
    lost = string.sub(first[1], 3)
    count = count - 1
    first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  end
  if exact then
    redis.call('HSET', KEYS[1], 'kept', bytes, 'head', first[1])
  else
    redis.call('HSET', KEYS[1], 'kept', bytes)
  end
  if lost then
    redis.call('HSET', KEYS[1], 'lost', lost)
  end
end
local n = redis.call(ARGV[1], ARGV[2], struct.pack('>Bd', 3, seq) .. data)
if n == 0 then
  return -2
end
return n
""".replace("RECOVERY_MS", str(RECOVERY_MS))

# KEYS: session, stream. ARGV: session id, received, new epoch, holding connection,
# most messages to replay (``REPLAY_PAGE``: the node reads the rest a page at a time),
# '1' when the proxy gave up messages it sent (a gap, replay or not).
# Returns {result, epoch, newest position, replay as {position, data, ...}, lost}:
# ``lost``, when the session resumed is not the one kept (another, or one expired,
# whose stream outlives it for that: ``RELEASE``), is how many messages that stream
# kept past ``received``, given to nobody (positions are consecutive from its first).
RESUME = """
local received = tonumber(ARGV[2])
local id = redis.call('HGET', KEYS[1], 'id')
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local result, epoch
local lost = 0
if id == ARGV[1] then
  epoch = redis.call('HGET', KEYS[1], 'epoch')
  local trimmed = tonumber(redis.call('HGET', KEYS[1], 'lost') or '0')
  if received > seq or trimmed > received or ARGV[6] == '1' then
    result, epoch = 'gap', ARGV[3]
  else
    result = 'recovered'
  end
else
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  if first then
    local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
    local from = math.max(tonumber(string.sub(first[1], 3)) - 1, received)
    lost = math.max(0, tonumber(string.sub(last[1], 3)) - from)
  end
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'kept', 0, 'bytes', 0, 'lost', 0, 'seq', seq)
  epoch = ARGV[3]
  if received > 0 then result = 'gap' else result = 'new' end
end
redis.call('HSET', KEYS[1], 'epoch', epoch, 'holder', ARGV[4])
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
local replay = {}
if result ~= 'new' and received < seq then
  local entries = redis.call('XRANGE', KEYS[2], string.format('0-%d', received + 1), '+',
    'COUNT', ARGV[5])
  for _, e in ipairs(entries) do
    replay[#replay + 1] = string.sub(e[1], 3)
    replay[#replay + 1] = e[2][2]
  end
end
return {result, epoch, string.format('%d', seq), replay, lost}
"""

# KEYS: session, stream. ARGV: session id, the first position kept (``0-<n>``).
# Trims what the session acknowledged, no more: nothing is read or summed (``kept``
# is an upper bound). The id check is for a name whose numbering started again: a
# Redis that lost the session (a restart, a failover) and a new session of the name
# resumed before the holder put the old one back numbers from 1, and a late trim of
# the old session would drop the new one's messages.
TRIM = """
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  return redis.call('XTRIM', KEYS[2], 'MINID', ARGV[2])
end
return 0
"""

# KEYS: session, stream. ARGV: session id, epoch, holding connection, position
# delivered. After a broker break: a Redis that restarted empty, or a replica promoted
# without the newest writes, no longer knows a connected session (or numbers from an
# older position): the holder puts it back, numbering after what its socket was given.
# After another node took the holder's node for dead (a stall past the presence TTL)
# and released its sessions for the window: held again, session and stream, for as
# long as the socket lasts (they expired under a connected socket).
# Returns 0 when another connection or session holds it, 1 when it is held as it
# was, 2 when it was put back (Redis had lost it).
REASSERT = """
local now = redis.call('TIME')
local ms = string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
local id = redis.call('HGET', KEYS[1], 'id')
if not id then
  -- A stream that outlived its session (``RELEASE``) numbers on after its newest: a
  -- position is written once, and the holder reads what is kept past its own.
  local seq = tonumber(ARGV[4])
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
  if last then
    seq = math.max(seq, tonumber(string.sub(last[1], 3)))
  end
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'epoch', ARGV[2], 'holder', ARGV[3],
    'kept', 0, 'bytes', 0, 'lost', 0, 'seq', string.format('%d', seq), 'reasserted', ms)
  redis.call('PERSIST', KEYS[2])
  return 2
end
if id ~= ARGV[1] or redis.call('HGET', KEYS[1], 'holder') ~= ARGV[3] then
  return 0
end
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') < tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'seq', ARGV[4], 'reasserted', ms)
end
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
return 1
"""

# KEYS: session, stream. ARGV: holding connection, window (ms). The session is away:
# it is kept for the window, unless a newer connection of it holds it already. Its
# stream outlives it by as long again: a resume of the name then (``RESUME``) counts
# what it kept as lost; gone with the session, it was counted nowhere.
RELEASE = """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 2)
return 1
"""

# KEYS: session, stream. ARGV: the position of the message the socket was given. A
# socket without a session holds the name and was given a message this session's
# stream keeps: the session is ended, stream and all, if it is away (kept for the
# window: its hash expires), so that a resume of it is a gap and not a replay of what
# that socket was given. One a socket holds is left alone (-1). Returns how many
# messages the stream kept before that position (positions are consecutive from its
# first): given to nobody, they are lost with it.
END_AWAY = """
if redis.call('PTTL', KEYS[1]) <= 0 then
  return -1
end
local lost = 0
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
if first then
  lost = math.max(0, tonumber(ARGV[1]) - tonumber(string.sub(first[1], 3)))
end
redis.call('DEL', KEYS[1], KEYS[2])
return lost
"""

# KEYS: relayed. ARGV: sender, position, sender, position... Forgets each sender's
# newest relayed position if it is still the one given: a sender that relayed again
# since it was read is alive after all.
FORGET = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return n
"""

# Kept messages read per command at most (a resume's, then each page of the rest): a
# resume of a session at its bound (10,000 messages, 16 MB) read in one script held
# Redis ~120 ms, every other client waiting, and its node wrote it all at once.
REPLAY_PAGE = 256

DELIVER_SHA = hashlib.sha1(DELIVER.encode()).hexdigest().encode()
# ``TRIM`` over a raw connection (its NOSCRIPT retry with it).
TRIM_SCRIPT = Script(TRIM)
_MESSAGE_PREFIX = b"bushub:msg:{"
_PREFIXES_KEPT = 4096
# Records read per HSCAN, and forgotten per script call.
_SCAN_BATCH = 500


@dataclass(frozen=True)
class SessionLimits:
    """What a session may keep while away, and for how long.

    Attributes:
        window: Seconds an away session is kept (``--resume-window``).
        messages: Messages kept per session at most (``--resume-messages``).
        bytes: Bytes kept per session at most (``--resume-bytes``).
    """

    window: float
    messages: int
    bytes: int

    @property
    def window_ms(self) -> int:
        return max(1, int(self.window * 1000))


def agent_of(channel: bytes) -> bytes | None:
    """The agent a message channel is for; None for any other channel."""
    if channel.startswith(_MESSAGE_PREFIX) and channel.endswith(b"}"):
        return channel[len(_MESSAGE_PREFIX) : -1]
    return None


def trim_minid(position: int) -> str:
    """The ``XTRIM ... MINID`` that drops every position up to ``position``."""
    return f"0-{position + 1}"


def trim_call(agent: str, session: str, position: int) -> tuple[tuple[str, str], tuple[str, str]]:
    """``TRIM``'s keys and arguments for one session, for ``TRIM_SCRIPT`` on a
    publish connection (a node's trims cost it a few microseconds each there, where
    redis-py's pipeline cost tens)."""
    return (session_key(agent), stream_key(agent)), (session, trim_minid(position))


class TrimCalls:
    """Builds ``TRIM`` calls by digest for a publish connection, the command up to its
    last argument kept per session: a busy session's acknowledgements make a trim due
    every ``TRIM_SPACING`` (sessions.py), and a call built from its parts formatted a
    dozen strings and numbers where only the position changes (3.7 against 0.45 µs)."""

    def __init__(self) -> None:
        self._heads: dict[tuple[str, str], bytes] = {}

    def by_sha(self, agent: str, session: str, position: int) -> bytes:
        """``TRIM_SCRIPT.call(*trim_call(agent, session, position), by_sha=True)``."""
        key = (agent, session)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= _PREFIXES_KEPT:
                self._heads.clear()
            keys, (session_id, _) = trim_call(agent, session, 0)
            head = script_head(TRIM, TRIM_SCRIPT.sha, keys, 2, by_sha=True)
            head = self._heads[key] = head + bulk(arg_bytes(session_id))
        return head + bulk(trim_minid(position).encode())


class Delivery:
    """Builds ``DELIVER`` commands in RESP for a publish connection.

    A session's resend is relayed once for as long as ``bushub:relayed:{agent}``
    remembers its sender: the record must outlive the last message relayed to the
    agent by the window. Its expiry set with every message cost Redis one call in
    nine (about 2 of 10 µs a message, ``bench/deliver_script.py``). A node asks for it
    at most every ``window / 4`` per agent, for twice the window, and the script sets
    it for a sender the record did not know yet (a record it makes, one emptied by
    ``FORGET``): a message relayed between two asks finds the record living at least
    1.75 windows on, 1.5 if one ask was lost in a broker break. The script only ever
    lengthens the record's life (``PTTL`` first, once per ask): a node with a shorter
    ``--resume-window`` (a setting being rolled out) would otherwise cut the life a
    longer window's node set.

    Args:
        limits: The bounds the script applies.
        publish: ``PUBLISH``, or ``SPUBLISH`` on Redis Cluster.
    """

    def __init__(self, limits: SessionLimits, publish: bytes) -> None:
        life = 2 * limits.window_ms
        self._tails = {
            ask: bulk(str(limits.messages).encode())
            + bulk(str(limits.bytes).encode())
            + bulk(str(life if ask else -life).encode())
            for ask in (False, True)
        }
        self._life = life
        self._ask_every = limits.window / 4
        self._publish = bulk(publish)
        self.limits = limits
        self.publish_command = publish
        # Per channel and call kind, the commands up to the frame's size (None for a
        # channel that is not an agent's). Bounded: few agents are addressed from one
        # node at a time, and a miss costs a few microseconds (and asks again).
        self._heads: dict[tuple[bytes, bool], _Heads | None] = {}
        # redis-py's path: per channel, when the record's expiry is next asked for.
        self._asks_at: dict[str, float] = {}

    def header(self, channel: bytes, size: int, *, by_sha: bool) -> bytes | None:
        """The command up to the relay frame's bytes (which follow, then CRLF); None
        when ``channel`` is not a message channel (it is published plainly).

        Args:
            by_sha: ``EVALSHA`` (the hot path; a Redis that lost its script cache
                answers NOSCRIPT, retried), else ``EVAL`` with the script's text.
        """
        key = (channel, by_sha)
        heads = self._heads.get(key, _UNKNOWN)
        if heads is _UNKNOWN:
            if len(self._heads) >= _PREFIXES_KEPT:
                self._heads.clear()  # each channel asks again: harmless
            heads = self._heads[key] = self._new_heads(channel, by_sha=by_sha)
        if heads is None:
            return None
        now = time.monotonic()
        if now < heads.ask_at:
            return heads.plain + b"$%d\r\n" % size
        heads.ask_at = now + self._ask_every
        return heads.asking + b"$%d\r\n" % size

    def _new_heads(self, channel: bytes, *, by_sha: bool) -> "_Heads | None":
        agent = agent_of(channel)
        if agent is None:
            return None
        name = agent.decode(errors="surrogateescape")
        keys = (session_key(name), stream_key(name), relayed_key(name))
        # Arguments: the publish command, the channel, three bounds, the relay frame.
        head = script_head(DELIVER, DELIVER_SHA, keys, 6, by_sha=by_sha)
        head += self._publish + bulk(channel)
        return _Heads(0.0, head + self._tails[False], head + self._tails[True])

    def args(self, channel: str, data: bytes, *, ask: bool = False) -> list[bytes | str | int]:
        """``DELIVER``'s keys and arguments, for redis-py (``keys`` first three).

        Args:
            ask: Ask for the record's expiry, due or not: for a call sent again by
                text after NOSCRIPT (its first try ran nothing, and may have been
                the one that asked).
        """
        agent = channel[len("bushub:msg:{") : -1]
        limits = self.limits
        now = time.monotonic()
        asks = ask or self._asks_at.get(channel, 0.0) <= now
        if asks:
            if len(self._asks_at) >= _PREFIXES_KEPT:
                self._asks_at.clear()
            self._asks_at[channel] = now + self._ask_every
        return [
            session_key(agent),
            stream_key(agent),
            relayed_key(agent),
            self.publish_command,
            channel,
            limits.messages,
            limits.bytes,
            self._life if asks else -self._life,
            data,
        ]


@dataclass(slots=True)
class _Heads:
    """A channel's ``DELIVER`` commands up to the frame's size: as most messages go,
    and asking for the relayed record's expiry, which the next message does at
    ``ask_at`` (``time.monotonic``)."""

    ask_at: float
    plain: bytes
    asking: bytes


_UNKNOWN = _Heads(0.0, b"", b"")


class Reasserted(enum.IntEnum):
    """What ``REASSERT`` found."""

    ELSEWHERE = 0  # another connection or session holds the name
    HELD = 1  # held by this connection, as it was
    PUT_BACK = 2  # Redis had lost the session: put back


@dataclass(frozen=True)
class Resumed:
    """What a resume found (see ``RESUME``).

    Attributes:
        result: ``new``, ``recovered`` or ``gap``.
        epoch: The session's epoch now.
        newest: The newest position kept for the agent when it was read.
        replay: The kept messages after the position resumed from, oldest first:
            (position, relay frame).
        lost: Messages another session of the name, or an expired one, kept past
            the position resumed from: given to nobody.
    """

    result: str
    epoch: str
    newest: int
    replay: list[tuple[int, bytes]]
    lost: int = 0


def parse_resumed(reply: list[object]) -> Resumed:
    """``RESUME``'s reply as a `Resumed`."""
    result, epoch, newest, flat, lost = reply
    entries = list(flat) if isinstance(flat, list) else []
    replay = [(int(_text(entries[i])), _raw(entries[i + 1])) for i in range(0, len(entries), 2)]
    return Resumed(_text(result), _text(epoch), int(_text(newest)), replay, int(_text(lost)))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _raw(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def sender_session(sender: bytes) -> tuple[str, str] | None:
    """(agent, session id) from a sender as relay frames name it (``sender_of``);
    None for anything else."""
    agent, space, session = sender.decode(errors="replace").rpartition(" ")
    return (agent, session) if space and agent and session else None


class SessionScripts:
    """``RESUME``, ``TRIM``, ``REASSERT``, ``RELEASE``, ``FORGET`` and ``END_AWAY`` on a redis-py
    client (one Redis or a cluster: each touches one agent's keys, on one slot)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._resume = client.register_script(RESUME)
        self._trim = client.register_script(TRIM)
        self._release = client.register_script(RELEASE)
        self._reassert = client.register_script(REASSERT)
        self._forget = client.register_script(FORGET)
        self._end_away = client.register_script(END_AWAY)

    async def senders_gone(self, agent: str, most: int) -> dict[bytes, bytes]:
        """See ``Broker.relayed_senders_gone``. The record is read a batch at a time
        (``HSCAN``), and each batch's senders' sessions looked up together (on a
        cluster the pipeline sends each to its shard)."""
        key = relayed_key(agent)
        gone: dict[bytes, bytes] = {}
        cursor = 0
        while True:
            cursor, records = await self._client.hscan(key, cursor, count=_SCAN_BATCH)
            gone.update(await self._gone(records))
            if cursor == 0 or len(gone) >= most:
                return dict(list(gone.items())[:most])

    async def _gone(self, records: dict[bytes, bytes]) -> dict[bytes, bytes]:
        named = [(sender, sender_session(sender)) for sender in records]
        asked = [(sender, who) for sender, who in named if who is not None]
        gone = {sender: records[sender] for sender, who in named if who is None}
        if asked:
            async with self._client.pipeline(transaction=False) as pipe:
                for _, (agent, _) in asked:
                    pipe.hget(session_key(agent), "id")
                ids = await pipe.execute()
            for (sender, (_, session)), current in zip(asked, ids, strict=True):
                if current is None or _text(current) != session:
                    gone[sender] = records[sender]
        return gone

    async def forget(self, agent: str, senders: dict[bytes, bytes]) -> int:
        """See ``Broker.forget_relayed``."""
        args = [part for pair in senders.items() for part in pair]
        forgotten = 0
        # A script call per batch: a huge record is not forgotten in one long step.
        for i in range(0, len(args), 2 * _SCAN_BATCH):
            batch = args[i : i + 2 * _SCAN_BATCH]
            forgotten += int(await self._forget(keys=[relayed_key(agent)], args=batch))
        return forgotten

    async def resume(
        self, agent: str, session: str, received: int, epoch: str, conn: str, renew: bool
    ) -> Resumed:
        keys = [session_key(agent), stream_key(agent)]
        args = [session, received, epoch, conn, REPLAY_PAGE, int(renew)]
        reply = await self._resume(keys=keys, args=args)
        return parse_resumed(list(reply))

    async def read(self, agent: str, after: int, most: int | None) -> list[tuple[int, bytes]]:
        entries = await self._client.xrange(stream_key(agent), min=f"0-{after + 1}", count=most)
        return [(int(_text(eid).partition("-")[2]), _raw(fields[b"d"])) for eid, fields in entries]

    async def reassert(
        self, agent: str, session: str, epoch: str, conn: str, delivered: int
    ) -> Reasserted:
        keys = [session_key(agent), stream_key(agent)]
        return Reasserted(await self._reassert(keys=keys, args=[session, epoch, conn, delivered]))

    async def trim(self, agent: str, session: str, position: int, client: Any = None) -> None:
        """``TRIM`` for one session; with ``client`` (a pipeline), queued on it."""
        keys = [session_key(agent), stream_key(agent)]
        await self._trim(keys=keys, args=[session, trim_minid(position)], client=client)

    async def kept(self, agent: str) -> bool:
        """See ``Broker.session_kept``."""
        return bool(await self._client.exists(session_key(agent)))

    async def end_away(self, agent: str, position: int) -> int | None:
        """See ``Broker.end_away_session``."""
        lost = int(
            await self._end_away(keys=[session_key(agent), stream_key(agent)], args=[position])
        )
        return None if lost < 0 else lost

    async def release(self, items: Sequence[tuple[str, str]], window: float) -> None:
        window_ms = max(1, int(window * 1000))
        # Agents live on different shards of a cluster: one call each, together.
        await asyncio.gather(
            *(
                self._release(keys=[session_key(agent), stream_key(agent)], args=[conn, window_ms])
                for agent, conn in items
            )
        )
