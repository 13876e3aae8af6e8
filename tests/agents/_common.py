"""Plumbing shared by the test agent programs: arguments, event lines, logging, audio.

Every program prints one JSON object per line on stdout (``{"event": ..., "t": ...}``) and
flushes each line, so a test can follow it as it happens. Logs go to stderr.
"""

import argparse
import hashlib
import json
import sys
import time
from typing import Any
from urllib.parse import urlencode

# 20 ms of 16 kHz, 16-bit mono audio.
AUDIO_SAMPLE_RATE = 16000
AUDIO_CHUNK_BYTES = 640


def emit(event: str, **fields: Any) -> None:
    """Print one event as a JSON line and flush it at once."""
    line = json.dumps({"event": event, "t": time.time(), **fields}, default=str)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def audio_chunk(index: int) -> bytes:
    """A deterministic, non-repeating 640-byte audio chunk for ``index``."""
    seed = hashlib.sha256(f"chunk-{index}".encode()).digest()
    return (seed * (AUDIO_CHUNK_BYTES // len(seed)))[:AUDIO_CHUNK_BYTES]


def digest(chunks: list[bytes]) -> str:
    """One hash over a sequence of chunks, order included."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(len(chunk).to_bytes(4, "big"))
        h.update(chunk)
    return h.hexdigest()


def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every program takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", required=True, help="hub base URL, e.g. ws://127.0.0.1:8765")
    parser.add_argument("--name", required=True, help="this side's agent name")
    parser.add_argument("--peer", required=True, help="the remote agent's name")
    parser.add_argument("--on-peer-lost", default="close", choices=("close", "keep"))
    parser.add_argument(
        "--format", default="json", choices=("json", "msgpack"), help="the proxy's serializer"
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="per-step timeout, seconds")
    parser.add_argument("--log-level", default="INFO")
    return parser


def hub_url(args: argparse.Namespace, dialect: str) -> str:
    """The hub URL for this side: ``/ws/{name}?peer={peer}&dialect=...``."""
    fields = {"peer": args.peer, "dialect": dialect, "on_peer_lost": args.on_peer_lost}
    if args.format != "json":
        fields["format"] = args.format
    return f"{args.url.rstrip('/')}/ws/{args.name}?{urlencode(fields)}"


def serializer(args: argparse.Namespace, dialect: str) -> Any:
    """The proxy's serializer: None (the library's JSON) or bushub's MsgPack one."""
    if args.format == "json":
        return None
    if dialect == "subagents":
        from busclient.subagents import MsgPackMessageSerializer
    else:
        from busclient.pipecat_core import MsgPackMessageSerializer  # type: ignore[assignment]
    return MsgPackMessageSerializer()


def setup_logging(level: str) -> None:
    """Send loguru's output to stderr at ``level``."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=level.upper())


def close_code(ws: Any) -> int | None:
    """The close code of a websockets connection, if it is closed."""
    return getattr(ws, "close_code", None) if ws is not None else None
