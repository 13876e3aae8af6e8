"""Taps: what an operator sees of one agent's traffic, anywhere in the cluster.

Two halves (docs/protocol.md, Operator API):

- ``TapRecorder``, on every node: for each message the node takes in (from a socket or
  ``POST /api/send``) whose source, target or sending socket is tapped, it publishes
  one event on the tapped agent's tap channel. Whether anything is tapped is one truth
  test of an empty dict (``Watched.tapped``) until a tap is open; events are bounded
  by a node-wide rate and go through the lossy ``SidePublisher``, so a tap never holds
  up the traffic it watches. What the bound drops is told in the next event
  (``lost``). A message the node refused (too large, over its rate, not allowed...)
  is shown too, with the reason (``dropped``), as far as it was read: a frame refused
  before its envelope was decoded shows only the socket that sent it.
- ``TapStreams``, on the node serving ``GET /api/tap/{agent}``: subscribes the tap
  channel, keeps the tap's notice renewed, and hands events to each open stream
  through a bounded queue; a slow reader loses events and is told how many.

Everything in an event that a client sent (the body's keys and strings, the type,
source and target) is cut at ``_MAX_STRING`` characters, and one event's JSON is at
most ``EVENT_MAX_BYTES``: a larger one is kept with its body replaced by a note. Tap
events travel on the tapping node's broker connection beside agents' traffic, so a
frame of control characters (six bytes of JSON each) must not become an event of
megabytes, which got that connection cut for its output buffer.
"""

import asyncio
import base64
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from bushub.limits import TokenBucket
from bushub.opsnotices import Watched
from bushub.sidepublisher import SidePublisher
from bushub.subscriptions import Subscriptions
from buswire import Format
from buswire.channels import tap_channel

TAP_PREFIX = tap_channel("")[:-2]
# Events a node publishes per second for all taps together, at most.
EVENT_RATE = 2_000.0
# Losses no later event has told are told on their own this many seconds after the first.
LOSSES_TOLD_AFTER = 1.0
# Events a stream holds for a slow reader before it drops: at most ~16 MiB
# (STREAM_CAPACITY x EVENT_MAX_BYTES) per open tap whose reader stopped reading.
STREAM_CAPACITY = 1_000
# A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_EVERY = 15.0

# One event's JSON at most. Room for what a person reads of one message (a summary
# cuts each string at 512 characters and shows 100 items of a list or map), and for
# the header fields at their worst (type, source and target of 512 characters that
# JSON writes in up to seven bytes each, a control character or an escaped lone
# surrogate: ~11 KiB) with the note that replaces a body too large to show: so every
# event is kept. It turns the bounds on counts into bounds on bytes: a node publishes
# at most EVENT_RATE x 16 KiB = 32 MiB of events a second, a tap whose reader stopped
# reading holds at most STREAM_CAPACITY x 16 KiB = ~16 MiB, and the node's side
# publisher queues at most 2,000 x 16 KiB = ~32 MiB of them.
EVENT_MAX_BYTES = 16 * 1024

_MAX_STRING = 512
_MAX_ITEMS = 100
_MAX_DEPTH = 16
# The integers orjson writes; any other is shown as its digits.
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def summarise(tree: Any, depth: int = 0) -> Any:
    """A message tree for people: bytes (raw, or the JSON dialect's tagged base64) as
    ``"<N bytes>"``, long strings and long lists cut, deep nesting elided."""
    if isinstance(tree, bytes | bytearray | memoryview):
        return f"<{len(tree)} bytes>"
    if isinstance(tree, str):
        return _cut(tree)
    if depth >= _MAX_DEPTH and isinstance(tree, dict | list):
        return "…"
    if isinstance(tree, dict):
        if tree.get("__type__") == "bytes" and "__data__" in tree:
            return _bytes_summary(tree["__data__"])
        items = list(tree.items())
        shown = {_key(key): summarise(value, depth + 1) for key, value in items[:_MAX_ITEMS]}
        if len(items) > _MAX_ITEMS:
            shown["…"] = f"+{len(items) - _MAX_ITEMS} keys"
        return shown
    if isinstance(tree, list | tuple):
        shown_list = [summarise(value, depth + 1) for value in tree[:_MAX_ITEMS]]
        if len(tree) > _MAX_ITEMS:
            shown_list.append(f"… +{len(tree) - _MAX_ITEMS} items")
        return shown_list
    if isinstance(tree, int) and not isinstance(tree, bool) and not _INT_MIN <= tree <= _INT_MAX:
        # Past what the event's encoder writes (64 bits); a client may send any.
        digits = str(tree)
        return digits if len(digits) <= _MAX_STRING else f"<{len(digits)}-digit integer>"
    if tree is None or isinstance(tree, bool | int | float):
        return tree
    return _utf8(repr(tree)[:_MAX_STRING])


def _cut(text: str) -> str:
    """``text`` as an event shows what a client sent: cut at ``_MAX_STRING``
    characters, in what UTF-8 can hold."""
    if len(text) > _MAX_STRING:
        return f"{_utf8(text[:_MAX_STRING])}… (+{len(text) - _MAX_STRING} chars)"
    return _utf8(text)


def _key(key: Any) -> str:
    """A map's key as the event's JSON takes it: a string, cut like a value. (MsgPack
    keys may be bytes, numbers or arrays: shown as their summary.)"""
    if isinstance(key, str):
        return _cut(key)
    shown = summarise(key, _MAX_DEPTH)  # nothing nested: a key is one short line
    return shown if isinstance(shown, str) else _cut(str(shown))


def _field(value: Any) -> str | None:
    """A header field (type, source, target) as shown: None stays None."""
    if value is None:
        return None
    return _cut(value if isinstance(value, str) else str(value))


def _utf8(text: str) -> str:
    """``text`` as UTF-8 can hold it: a lone surrogate (JSON's ``"\\ud800"`` decodes
    to one, and the hub relays it) as its escape, which the event's encoder takes."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _bytes_summary(data: Any) -> str:
    if isinstance(data, str):
        try:
            return f"<{len(base64.b64decode(data, validate=True))} bytes>"
        except ValueError:
            return f"<{len(data)} chars of base64>"
    if isinstance(data, bytes | bytearray):
        return f"<{len(data)} bytes>"
    return "<bytes>"


class TapRecorder:
    """Publishes what this node takes in of tapped agents' traffic.

    Args:
        node_id: Stamped on every event: where the message entered the cluster.
        watched: Which agents are tapped (from the ops channel).
        side: The lossy publisher events go through.
        counted: Told ``("published" | "dropped", n)`` per event.
    """

    def __init__(
        self,
        node_id: str,
        watched: Watched,
        side: SidePublisher,
        counted: Callable[[str, int], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node_id = node_id
        self._watched = watched
        self.tapped = watched.tapped  # the relay's truth test
        self._side = side
        self._counted = counted
        self._clock = clock
        self._rate = TokenBucket(EVENT_RATE)
        self._lost: dict[str, int] = defaultdict(int)
        # Set while losses wait to be told on their own (``LOSSES_TOLD_AFTER``).
        self._telling: asyncio.TimerHandle | None = None

    def seen(
        self,
        agent: str | None,
        type_name: str | None,
        source: str | None,
        target: str | None,
        tree: Any,
        size: int,
        fmt: Format,
        dropped: str | None = None,
    ) -> None:
        """One message taken in: from ``agent``'s socket (None from the HTTP API);
        ``dropped`` names why the node refused it (None: relayed). What was not read
        before the refusal is None."""
        watched = self._watched
        taps: list[tuple[str, str]] = []
        for name, direction in ((source, "sent"), (agent, "sent"), (target, "received")):
            if name is None or not watched.is_tapped(name) or any(n == name for n, _ in taps):
                continue
            # The bound comes first: past it, the message is not even summarised.
            if self._rate.take():
                taps.append((name, direction))
            else:
                self._lose(name, 1)
        if not taps:
            return
        event: dict[str, Any] = {
            "kind": "message",
            "t": self._clock(),
            "node": self._node_id,
            # What a client sent, cut like the body's strings, and made encodable: a
            # lone surrogate in a source failed the encoder, and the event was lost.
            "type": _field(type_name),
            "source": _field(source),
            "target": _field(target),
            "size": size,
            "format": fmt.value,
            "body": summarise(tree),
        }
        if dropped is not None:
            event["dropped"] = _field(dropped)
        if agent is not None and agent != source:
            # The socket it came through, where that is not its source's (a proxy
            # bridging a process's agents, or a source the socket only claims).
            event["via"] = _field(agent)
        for name, direction in taps:
            event["direction"] = direction
            lost = self._lost.pop(name, 0)
            if lost:
                event["lost"] = lost
            try:
                encoded = _encoded(event)
            except (TypeError, ValueError):
                # Whatever a client sent, a tap must not break the traffic it shows.
                self._lose(name, 1, lost)
                event.pop("lost", None)
                continue
            if self._side.publish(tap_channel(name), encoded):
                self._counted("published", 1)
            else:
                self._lose(name, 1, lost)
            event.pop("lost", None)

    def _lose(self, name: str, count: int, untold: int = 0) -> None:
        """``count`` events for ``name`` are lost (and ``untold`` earlier losses are not
        told yet): told with its next event, or on their own within
        ``LOSSES_TOLD_AFTER`` if none comes (the last losses of a burst waited for the
        agent's next message, which may never come, and were then told to whatever
        tap was open by then)."""
        self._lost[name] += count + untold
        self._counted("dropped", count)
        self._tell_later()

    def _tell_later(self) -> None:
        """Tell the losses on their own ``LOSSES_TOLD_AFTER`` from now, unless that is
        set already (or there is no loop: a test's, told with the next event only)."""
        if self._telling is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._telling = loop.call_later(LOSSES_TOLD_AFTER, self._tell_losses)

    def _tell_losses(self) -> None:
        """Tell each tapped name's losses in an event of their own."""
        self._telling = None
        for name, lost in list(self._lost.items()):
            if not self._watched.is_tapped(name):
                del self._lost[name]  # nobody to tell
                continue
            notice = {"kind": "lost", "t": self._clock(), "node": self._node_id, "lost": lost}
            if self._side.publish(tap_channel(name), orjson.dumps(notice)):
                del self._lost[name]
            else:
                self._tell_later()  # the side publisher was full: again later


def _encoded(event: dict[str, Any]) -> bytes:
    """``event`` as JSON of at most ``EVENT_MAX_BYTES``: past it, the body is replaced
    by a note of its size (in ``event`` too, for the other taps of the same message)."""
    encoded = orjson.dumps(event)
    if len(encoded) > EVENT_MAX_BYTES:
        event["body"] = f"<too large to show: {len(encoded)} bytes as JSON>"
        encoded = orjson.dumps(event)
    return encoded


class TapStream:
    """One open ``GET /api/tap/{agent}``: events for its reader, bounded.

    A reader that stops reading costs the node at most ``capacity`` events of at most
    ``EVENT_MAX_BYTES`` each (~16 MiB at the default), plus what its socket's buffers
    hold (uvicorn's 64 KiB, the kernel's); past that its events are dropped and
    counted, and the reader is told how many once it reads again.
    """

    def __init__(self, agent: str, capacity: int = STREAM_CAPACITY) -> None:
        self.agent = agent
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(capacity)
        # Events lost since the reader last heard of losses.
        self.dropped = 0
        self.ended = False
        self._end = asyncio.Event()

    def put(self, event: bytes) -> None:
        """Hand one event over; a full queue drops it (the reader is told)."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    def end(self) -> None:
        """End the stream (the node is draining): its reader sees it end at once."""
        self.ended = True
        self._end.set()

    async def next(self, timeout: float) -> bytes | None:
        """The next event; None when none came within ``timeout`` or the stream ended."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        getter = asyncio.ensure_future(self._queue.get())
        ender = asyncio.ensure_future(self._end.wait())
        try:
            await asyncio.wait(
                (getter, ender), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ender.cancel()
            if not getter.done():
                getter.cancel()
        return getter.result() if getter.done() and not getter.cancelled() else None


class TapStreams:
    """The taps served by this node: their subscriptions and their readers.

    Args:
        subscriptions: The node's reference-counted channel subscriptions.
        want_notices: Called with the agents tapped here whenever that set changes
            (the notice sender renews a notice per agent while it is in the set).
        notices_out: Waits until the notices sent so far are with the broker.
        watch_here: Marks an agent tapped on this node at once: its own notice comes
            back through the broker too, but a message entering here meanwhile must
            not miss the tap.
        dropped: Told how many events slow readers lost.
    """

    def __init__(
        self,
        subscriptions: Subscriptions,
        want_notices: Callable[[set[str]], None],
        notices_out: Callable[[], Awaitable[None]],
        watch_here: Callable[[str], None],
        dropped: Callable[[int], None],
    ) -> None:
        self._subscriptions = subscriptions
        self._want_notices = want_notices
        self._notices_out = notices_out
        self._watch_here = watch_here
        self._dropped = dropped
        self._streams: dict[str, set[TapStream]] = defaultdict(set)

    async def open(self, agent: str) -> TapStream:
        """Start a tap on ``agent``: subscribed before the notice goes out, so that
        no event a node publishes after hearing the notice is missed; returns once the
        broker has passed the notice on, so the tap sees what follows its opening."""
        stream = TapStream(agent)
        self._streams[agent].add(stream)
        try:
            # acquire() counts the want before it first waits: close() gives it back.
            await self._subscriptions.acquire(tap_channel(agent))
            self._want_notices(set(self._streams))
            self._watch_here(agent)
            await self._notices_out()
        except BaseException:  # the reader went away meanwhile: leave nothing behind
            await self.close(stream)
            raise
        return stream

    async def close(self, stream: TapStream) -> None:
        """End a tap; the last one on an agent lets its notice lapse."""
        streams = self._streams.get(stream.agent)
        if streams is None or stream not in streams:
            return
        streams.discard(stream)
        if not streams:
            del self._streams[stream.agent]
            self._want_notices(set(self._streams))
        await self._subscriptions.release(tap_channel(stream.agent))

    def on_event(self, agent: str, data: bytes) -> None:
        """An event from ``agent``'s tap channel, for every stream on it here."""
        for stream in self._streams.get(agent, ()):
            before = stream.dropped
            stream.put(data)
            if stream.dropped != before:
                self._dropped(1)

    def end_all(self) -> None:
        """End every stream served here (the node is draining)."""
        for streams in self._streams.values():
            for stream in streams:
                stream.end()

    @property
    def open_count(self) -> int:
        """Streams open on this node (for leak checks)."""
        return sum(len(streams) for streams in self._streams.values())


async def event_stream(stream: TapStream, node_id: str) -> AsyncIterator[bytes]:
    """The body of ``GET /api/tap/{agent}``: server-sent events, one JSON each."""
    yield _sse({"kind": "open", "agent": stream.agent, "node": node_id})
    while not stream.ended:
        event = await stream.next(KEEPALIVE_EVERY)
        if stream.dropped:
            lost, stream.dropped = stream.dropped, 0
            yield _sse({"kind": "dropped", "count": lost})
        if event is None:
            yield b": keepalive\n\n"
            continue
        lost_at_node = _lost_at_node(event)
        if lost_at_node:
            yield _sse({"kind": "dropped", "count": lost_at_node})
        if event.startswith(_LOSS_NOTICE):
            continue  # told as "dropped" above: nothing else in it for the reader
        yield b"data: " + event + b"\n\n"


# How a recorder's notice of losses alone begins (``TapRecorder._tell_losses``).
_LOSS_NOTICE = b'{"kind":"lost"'


def _lost_at_node(event: bytes) -> int:
    # Only events that say so carry "lost"; most skip the parse.
    if b'"lost":' not in event:
        return 0
    try:
        lost = orjson.loads(event).get("lost", 0)
    except orjson.JSONDecodeError:
        return 0
    return lost if isinstance(lost, int) else 0


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"
