"""``bushub tap AGENT``: print one agent's traffic, anywhere in the cluster, as it passes.

A client of ``GET /api/tap/{agent}`` (docs/protocol.md, Operator API) on any node: one
line per message (time, node it entered at, direction, type, source and target, size,
format) and its decoded body, or with ``--json`` the events as they come, one JSON
object per line, for scripts. Standard library only, so it runs wherever the hub is
installed.
"""

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, TextIO
from urllib.parse import quote

DEFAULT_NODE = "http://127.0.0.1:8765"


def add_tap_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``bushub tap``."""
    parser = commands.add_parser(
        "tap", help="print the messages sent by and addressed to one agent, live"
    )
    parser.add_argument("agent", help="the agent to watch")
    parser.add_argument(
        "--node", default=DEFAULT_NODE, help=f"any node's HTTP URL (default {DEFAULT_NODE})"
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("BUSHUB_ADMIN_TOKEN", ""),
        help="the nodes' --admin-token (default: $BUSHUB_ADMIN_TOKEN)",
    )
    parser.add_argument("--json", action="store_true", help="print the events as JSON lines")
    parser.add_argument(
        "--count", type=_count, default=0, help="stop after this many messages (0: never)"
    )


def _count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"{count}: a count of messages is 0 or more")
    return count


def run_tap_command(args: argparse.Namespace) -> int:
    """Tap until interrupted (or ``--count`` messages); the exit status."""
    # As the node reads its own: a token from a file keeps no newline.
    token = args.admin_token.strip()
    if not token:
        print(
            "bushub tap: no admin token: pass --admin-token or set BUSHUB_ADMIN_TOKEN",
            file=sys.stderr,
        )
        return 2
    if any(not ch.isprintable() or ch.isspace() for ch in token):
        print("bushub tap: the admin token holds whitespace or control characters", file=sys.stderr)
        return 2
    url = f"{args.node.rstrip('/')}/api/tap/{quote(args.agent, safe='')}"
    try:
        request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request) as response:
            return _print_events(_events(response), args.count, args.json, sys.stdout)
    except urllib.error.HTTPError as exc:
        print(f"bushub tap: {exc.code} {_error_of(exc)}", file=sys.stderr)
    except urllib.error.URLError as exc:
        print(f"bushub tap: cannot reach {args.node}: {exc.reason}", file=sys.stderr)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # Not a node's answer (another service on the port, a stream cut short), or a
        # --node that is no URL.
        print(f"bushub tap: {args.node}: {exc!r}", file=sys.stderr)
    except KeyboardInterrupt:
        return 0
    return 2


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["error"])
    except (ValueError, KeyError, TypeError):
        return exc.reason or ""


def _events(lines: Any) -> Iterator[dict[str, Any]]:
    for raw in lines:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if line.startswith("data: "):
            yield json.loads(line[6:])


def _print_events(events: Iterator[dict[str, Any]], count: int, as_json: bool, out: TextIO) -> int:
    messages = 0
    for event in events:
        if as_json:
            print(json.dumps(event), file=out, flush=True)
        else:
            print(describe(event), file=out, flush=True)
        if event.get("kind") == "message":
            messages += 1
            if messages == count:
                break
    return 0


def describe(event: dict[str, Any]) -> str:
    """One event for people: a header line, and the body on the next."""
    kind = event.get("kind")
    if kind == "open":
        return f"tapping {event.get('agent')} (through node {event.get('node')}); Ctrl-C ends"
    if kind == "dropped":
        return f"... {event.get('count')} events lost: the tap fell behind"
    if kind != "message":
        return json.dumps(event)
    at = (
        time.strftime("%H:%M:%S", time.localtime(event["t"])) + f".{int(event['t'] % 1 * 1000):03d}"
    )
    arrow = "->" if event.get("direction") == "sent" else "<-"
    # A message refused before it was decoded has no type, source or target yet.
    type_name = str(event.get("type") or "?").rsplit(".", 1)[-1]
    header = (
        f"{at} {event.get('node')} {arrow} {type_name} "
        f"{event.get('source') or '?'} -> {event.get('target') or '?'} "
        f"{event.get('size')} B {event.get('format')}"
    )
    if event.get("dropped"):
        header += f"  DROPPED by the hub: {event['dropped']}"
    if event.get("body") is None:
        return header
    return f"{header}\n    {json.dumps(event.get('body'), ensure_ascii=False)}"
