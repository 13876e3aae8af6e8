"""``bushub tap AGENT``: print one agent's traffic, anywhere in the cluster, as it passes.

A client of ``GET /api/tap/{agent}`` (docs/protocol.md, Operator API) on any node: one
line per message (time, node it entered at, direction, type, source and target, size,
format) and its decoded body, or with ``--json`` the events as they come, one JSON
object per line, for scripts. Standard library only, so it runs wherever the hub is
installed.

What a node sends is shown as data: every field printed has its control characters
(C0, C1, DEL, Unicode's line separators, bidi and zero-width characters) written as
escapes (``bushub.escapes``, as the node's log lines), so an agent cannot steer the
operator's terminal or forge a line; the
admin token goes to ``--node`` only (a redirect is refused, not followed); and an
answer that is no node's (odd events, a line over ``MAX_LINE``) ends the tap with one
line saying so.

Exit status: 0 after ``--count`` messages or Ctrl-C; 1 when the node ended the tap
(a draining node does: tap through another); 2 when there was no tap, or it broke
(no token or a wrong one, a node that cannot be reached or did not answer as a node
does, a stream cut short).
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
from typing import IO, Any, TextIO
from urllib.parse import quote

from bushub.escapes import escape_controls

DEFAULT_NODE = "http://127.0.0.1:8765"

EXIT_DONE = 0
EXIT_ENDED_BY_NODE = 1
EXIT_NO_TAP = 2

# A line of the event stream, at most. A node's events are at most 16 KiB
# (bushub.taps.EVENT_MAX_BYTES); without a cap, one endless line from something that
# is not a node would grow this process without limit.
MAX_LINE = 1 << 20
# What of an error answer's body is read for its message.
_MAX_ERROR_BODY = 1 << 16
# Seconds the node may say nothing, its answer or the stream: a node sends a comment
# line every 15 s while a tap is quiet (bushub.taps.KEEPALIVE_EVERY). Without it, a tap
# whose request reached a process that hangs (a stopped worker) waited for ever.
SILENT_LIMIT = 30.0


class NotANodesAnswer(ValueError):
    """The event stream holds something a node does not send."""


def add_tap_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``bushub tap``."""
    parser = commands.add_parser(
        "tap",
        help="print the messages sent by and addressed to one agent, live",
        description="Print the messages sent by and addressed to one agent, live.",
        epilog=(
            "exit status: 0 after --count messages or Ctrl-C; 1 when the node ended "
            "the tap (a draining node does: tap through another); 2 when there was no "
            "tap or it broke (no or a wrong token, no node there, not a node's answer)"
        ),
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
    """Tap until interrupted, ``--count`` messages or the node ends the tap; the exit
    status (see the module's docstring)."""
    # As the node reads its own: a token from a file keeps no newline.
    token = args.admin_token.strip()
    if not token:
        print(
            "bushub tap: no admin token: pass --admin-token or set BUSHUB_ADMIN_TOKEN",
            file=sys.stderr,
        )
        return EXIT_NO_TAP
    if any(not ch.isprintable() or ch.isspace() for ch in token):
        print("bushub tap: the admin token holds whitespace or control characters", file=sys.stderr)
        return EXIT_NO_TAP
    url = f"{args.node.rstrip('/')}/api/tap/{quote(args.agent, safe='')}"
    opener = urllib.request.build_opener(_RefuseRedirects)
    try:
        request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"})
        with opener.open(request, timeout=SILENT_LIMIT) as response:
            status = _print_events(_events(response), args.count, args.json, sys.stdout)
    except urllib.error.HTTPError as exc:
        location = exc.headers.get("location") if exc.headers else None
        if location is not None:
            print(
                f"bushub tap: {args.node} redirects to {shown(location)} ({exc.code}): not "
                "followed, the admin token goes to --node only; pass that as --node",
                file=sys.stderr,
            )
        else:
            print(f"bushub tap: {exc.code} {_error_of(exc)}", file=sys.stderr)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            _silent(args.node)
        else:
            print(f"bushub tap: cannot reach {args.node}: {shown(exc.reason)}", file=sys.stderr)
    except TimeoutError:
        _silent(args.node)
    except NotANodesAnswer as exc:
        print(f"bushub tap: {args.node}: not a node's answer: {exc}", file=sys.stderr)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # Not a node's answer (another service on the port, a stream cut short), or a
        # --node that is no URL.
        print(f"bushub tap: {args.node}: {shown(repr(exc))}", file=sys.stderr)
    except KeyboardInterrupt:
        return EXIT_DONE
    else:
        if status == EXIT_ENDED_BY_NODE:
            print(
                f"bushub tap: {args.node} ended the tap (a draining node does): "
                "tap through another node",
                file=sys.stderr,
            )
        return status
    return EXIT_NO_TAP


def _silent(node: str) -> None:
    print(
        f"bushub tap: {node} said nothing for {SILENT_LIMIT:g} s (a node that hangs?)",
        file=sys.stderr,
    )


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: urllib's own handler sends the request's headers, the
    admin token among them, to whatever host a redirect names. The 3xx answer then
    comes back as an ``HTTPError``."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        return shown(json.loads(exc.read(_MAX_ERROR_BODY))["error"])
    except (ValueError, KeyError, TypeError, OSError, http.client.HTTPException):
        return shown(exc.reason or "")


def _events(response: Any) -> Iterator[dict[str, Any]]:
    """The events of a node's answer, until it ends.

    Raises:
        NotANodesAnswer: A line over ``MAX_LINE`` bytes, or an event that is no JSON
            object.
    """
    while True:
        raw = response.readline(MAX_LINE + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            raise NotANodesAnswer(f"a line over {MAX_LINE} bytes")
        line = raw.decode(errors="replace").rstrip("\r\n")
        if not line.startswith("data: "):
            continue  # a keepalive comment, or the blank line that ends an event
        try:
            event = json.loads(line[6:])
        except (ValueError, RecursionError):
            raise NotANodesAnswer("an event that is not JSON") from None
        if not isinstance(event, dict):
            raise NotANodesAnswer("an event that is not a JSON object")
        yield event


def _print_events(events: Iterator[dict[str, Any]], count: int, as_json: bool, out: TextIO) -> int:
    """Print ``events``: ``EXIT_DONE`` after ``count`` messages, ``EXIT_ENDED_BY_NODE``
    when they end first."""
    messages = 0
    for event in events:
        if as_json:
            print(json.dumps(event), file=out, flush=True)
        else:
            print(describe(event), file=out, flush=True)
        if event.get("kind") == "message":
            messages += 1
            if messages == count:
                return EXIT_DONE
    return EXIT_ENDED_BY_NODE


def shown(value: object) -> str:
    """``value`` as text on one line of the operator's terminal: control characters
    written as Python escapes."""
    return escape_controls(str(value))


def describe(event: dict[str, Any]) -> str:
    """One event for people: a header line, and the body on the next. Every field is
    shown escaped (``shown``): they hold what agents sent.

    Raises:
        NotANodesAnswer: A message without a time a clock can show.
    """
    kind = event.get("kind")
    if kind == "open":
        agent, node = shown(event.get("agent")), shown(event.get("node"))
        return f"tapping {agent} (through node {node}); Ctrl-C ends"
    if kind == "dropped":
        return f"... {shown(event.get('count'))} events lost: the tap fell behind"
    if kind != "message":
        return json.dumps(event)  # ASCII only: every control character escaped
    arrow = "->" if event.get("direction") == "sent" else "<-"
    # A message refused before it was decoded has no type, source or target yet.
    type_name = str(event.get("type") or "?").rsplit(".", 1)[-1]
    header = (
        f"{_clock(event.get('t'))} {shown(event.get('node'))} {arrow} {shown(type_name)} "
        f"{shown(event.get('source') or '?')} -> {shown(event.get('target') or '?')} "
        f"{shown(event.get('size'))} B {shown(event.get('format'))}"
    )
    if event.get("via"):
        header += f" via {shown(event['via'])}'s socket"
    if event.get("dropped"):
        header += f"  DROPPED by the hub: {shown(event['dropped'])}"
    if event.get("body") is None:
        return header
    # json.dumps escapes C0 controls; C1, bidi and zero-width characters are left.
    return f"{header}\n    {shown(json.dumps(event.get('body'), ensure_ascii=False))}"


def _clock(t: Any) -> str:
    """A message's time as ``HH:MM:SS.mmm``, local."""
    if isinstance(t, bool) or not isinstance(t, int | float):
        raise NotANodesAnswer("a message without its time")
    try:
        at = time.localtime(t)
    except (OverflowError, OSError, ValueError):
        raise NotANodesAnswer(f"a message at a time no clock shows ({t!r})") from None
    return time.strftime("%H:%M:%S", at) + f".{int(t % 1 * 1000):03d}"
