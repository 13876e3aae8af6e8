"""The messages of workload R, built with the libraries' own serializers.

Each pair ``(a, b)`` gets, per payload and format, a request template (``a`` -> ``b``)
and a reply template (``b`` -> ``a``). A template is the serializer's bytes with a
10-character hole where a zero-padded sequence number goes: the ``task_id`` of a
``BusTaskRequestMessage``, or ``metadata["seq"]`` of a ``BusFrameMessage`` (which has
no target and is routed by pairing). Filling the hole with ``b"%010d" % n`` gives
exactly what the serializer would write for sequence ``n`` (checked here), so the
load generator builds and checks messages with two byte concatenations and no
serializer in its hot path.

The reply is the request with source and target swapped (a copy: same ids and
names), which is also what the stock-proxy baseline's echo agent does with the
message it deserializes, so all three servers are checked against the same bytes.
"""

import copy
import random
import warnings
from dataclasses import dataclass
from typing import Any

SEQ_WIDTH = 10
_MARK = "~" * SEQ_WIDTH
PAYLOADS = ("task", "audio")
FORMATS = ("json", "msgpack")
AUDIO_BYTES = 640  # 20 ms of 16 kHz mono s16le
# Audio chunks differ from message to message (chosen by the sequence number's last
# digit), as real audio does: with one chunk repeated, permessage-deflate's shared
# window (4 KB) would see every frame before and shrink it to almost nothing.
AUDIO_VARIANTS = 10
VARIANTS = {"task": 1, "audio": AUDIO_VARIANTS}


@dataclass(frozen=True)
class Template:
    """One message with a hole for the sequence number."""

    prefix: bytes
    suffix: bytes

    @property
    def offset(self) -> int:
        return len(self.prefix)

    @property
    def size(self) -> int:
        return len(self.prefix) + SEQ_WIDTH + len(self.suffix)

    def fill(self, seq: int) -> bytes:
        return self.prefix + b"%010d" % seq + self.suffix


def _quiet_imports() -> Any:
    # pipecat's deprecation helper forces "always" inside its own catch_warnings, so
    # filters do not silence it; muting the display for the imports does.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.showwarning = lambda *args, **kwargs: None
        from loguru import logger

        logger.remove()
        from pipecat.frames.frames import OutputAudioRawFrame
        from pipecat.processors.frame_processor import FrameDirection
        from pipecat_subagents.bus.messages import BusFrameMessage, BusTaskRequestMessage
        from pipecat_subagents.bus.serializers import JSONMessageSerializer

        from busclient.subagents import MsgPackMessageSerializer

        return (
            OutputAudioRawFrame,
            FrameDirection,
            BusFrameMessage,
            BusTaskRequestMessage,
            JSONMessageSerializer,
            MsgPackMessageSerializer,
        )


class Builder:
    """Builds templates; imports pipecat once."""

    def __init__(self) -> None:
        (
            self._audio_frame,
            self._direction,
            self._frame_msg,
            self._task_msg,
            json_cls,
            msgpack_cls,
        ) = _quiet_imports()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.showwarning = lambda *args, **kwargs: None
            self.serializers = {"json": json_cls(), "msgpack": msgpack_cls()}
        # Noise-like samples (seeded): real PCM barely compresses, and a periodic test
        # pattern would flatter permessage-deflate.
        self._audio = [
            random.Random(AUDIO_BYTES + v).randbytes(AUDIO_BYTES) for v in range(AUDIO_VARIANTS)
        ]

    def request(self, payload: str, a: str, b: str) -> Any:
        """A fresh request message from ``a`` to ``b`` with the sequence hole."""
        if payload == "task":
            return self._task_msg(
                source=a, target=b, task_id=_MARK, payload={"q": "weather", "city": "Lisbon"}
            )
        message = self._frame_msg(
            source=a,
            frame=self._audio_frame(audio=self._audio[0], sample_rate=16000, num_channels=1),
            direction=self._direction.DOWNSTREAM,
        )
        message.metadata = {"seq": _MARK}
        return message

    def variant(self, message: Any, variant: int) -> Any:
        """The same message (same ids and names) with audio chunk number ``variant``."""
        if variant == 0:
            return message
        out = copy.copy(message)
        out.frame = copy.copy(message.frame)
        out.frame.audio = self._audio[variant]
        return out

    @staticmethod
    def reply_to(message: Any, replier: str) -> Any:
        """The echo: a copy of ``message`` from ``replier`` back to its source."""
        reply = copy.copy(message)
        reply.source, reply.target = replier, (message.source if message.target else None)
        return reply

    @staticmethod
    def with_seq(message: Any, seq: str) -> Any:
        out = copy.copy(message)
        if hasattr(out, "task_id") and out.task_id == _MARK:
            out.task_id = seq
        else:
            out.metadata = {"seq": seq}
        return out

    def _template(self, message: Any, fmt: str) -> Template:
        serializer = self.serializers[fmt]
        data = serializer.serialize(message)
        mark = _MARK.encode()
        if data.count(mark) != 1:
            raise AssertionError(f"sequence mark not unique in {fmt} template")
        at = data.index(mark)
        template = Template(data[:at], data[at + SEQ_WIDTH :])
        # The template filled in is what the serializer writes for that sequence.
        for seq in (0, 7, 1234567890):
            expected = serializer.serialize(self.with_seq(message, f"{seq:010d}"))
            if template.fill(seq) != expected:
                raise AssertionError(f"{fmt} template differs from the serializer")
        return template

    def pairs(self, payload: str, fmt: str, a: str, b: str) -> list[tuple[Template, Template]]:
        """Request and reply templates of every variant of the payload for the pair."""
        base = self.request(payload, a, b)
        return [
            self.pair(payload, fmt, a, b, self.variant(base, v)) for v in range(VARIANTS[payload])
        ]

    def pair(
        self, payload: str, fmt: str, a: str, b: str, request: Any = None
    ) -> tuple[Template, Template]:
        """Request and reply templates for the pair, checked against a real echo."""
        if request is None:
            request = self.request(payload, a, b)
        reply = self.reply_to(request, b)
        req_t, rep_t = self._template(request, fmt), self._template(reply, fmt)
        # What the stock baseline's echo agent does: deserialize, swap, serialize.
        serializer = self.serializers[fmt]
        received = serializer.deserialize(req_t.fill(42))
        if serializer.serialize(self.reply_to(received, b)) != rep_t.fill(42):
            raise AssertionError(f"{payload}/{fmt}: echo of a deserialized message differs")
        return req_t, rep_t


def encode_template(t: Template) -> list[str]:
    """JSON-safe form for the load generator's job file."""
    return [t.prefix.hex(), t.suffix.hex()]


def decode_template(pair: list[str]) -> Template:
    return Template(bytes.fromhex(pair[0]), bytes.fromhex(pair[1]))
