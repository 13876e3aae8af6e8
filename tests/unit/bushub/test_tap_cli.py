"""``bushub tap`` against what a node, an agent or something else on the port sends:
hostile text in events, redirects, odd event streams, an endless line, a node that
ends the tap. Each against a real local HTTP server (a thread, port 0)."""

import argparse
import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bushub.tap_cli import (
    EXIT_DONE,
    EXIT_ENDED_BY_NODE,
    EXIT_NO_TAP,
    MAX_LINE,
    add_tap_command,
    describe,
    run_tap_command,
)

TOKEN = "tap-cli-admin-token-0123456789"
OPEN = b'data: {"kind":"open","agent":"x","node":"n1"}\n\n'
# What a terminal acts on, or shows as nothing, or as another line.
STEERING = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]} - {"\t"}
STEERING |= set("\u2028\u2029\u061c\u200b\u200e\u200f\u202a\u202e\u2066\ufeff")

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


@contextlib.contextmanager
def serving(handle: Handler) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A local HTTP server answering every GET with ``handle``: its URL, and the
    headers of each request it got."""
    seen: list[dict[str, str]] = []

    class Handle(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            handle(self)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handle)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def event_stream(body: bytes) -> Handler:
    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return handle


def tap(node: str, *extra: str) -> int:
    parser = argparse.ArgumentParser(prog="bushub")
    add_tap_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tap", "x", "--node", node, "--admin-token", TOKEN, *extra])
    return run_tap_command(args)


def message(**fields: Any) -> dict[str, Any]:
    base = {"kind": "message", "t": 0.0, "node": "n1", "direction": "sent", "format": "json"}
    return {**base, "type": "m.T", "source": "a", "target": "b", "size": 5, **fields}


def test_every_field_printed_has_its_control_characters_escaped() -> None:
    hostile = message(
        node="n1\x9b31m",
        type="m.\x1b]0;pwned\x07T",
        source="a\x1b[2J",
        target="b\n00:00:00.000 n1 -> Forged ops -> b 5 B json",
        size="5\u202e",
        format="json\x7f",
        dropped="type_not_allowed\r",
        via="c\x1b[1A",
        body={"k": "v\x9b\u202e\u200b\x1b"},
    )
    header, body = describe(hostile).split("\n")
    for line in (header, body, describe({"kind": "open", "agent": "\x1bc", "node": "\u2028"})):
        assert not STEERING & set(line), repr(line)
    assert "a\\x1b[2J -> b\\n00:00:00.000" in header
    assert "via c\\x1b[1A's socket" in header
    assert describe({"kind": "dropped", "count": "1\n2"}).startswith("... 1\\n2 events lost")


def test_a_lone_surrogate_is_escaped_for_any_terminal() -> None:
    """No terminal encoding takes one: a UTF-8 one refused the line (the tap ended), a
    C locale wrote a surrogate-escaped byte raw."""
    header, body = describe(message(source="a\udc9b", body={"k": "v\ud800"})).split("\n")
    assert "a\\udc9b" in header and "v\\ud800" in body
    (header + body).encode("ascii")  # nothing left that an encoder could refuse


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"data: [1,2,3]", "an event that is not a JSON object"),
        (b'data: {"kind":"message","node":"evil"}', "a message without its time"),
        (b'data: {"kind":"message","t":1e300}', "a message at a time no clock shows"),
        (b'data: {"kind":"message","t":"soon"}', "a message without its time"),
        (b"data: {not json", "an event that is not JSON"),
        (b"data: " + b"[" * 100_000, "an event that is not JSON"),
    ],
)
def test_an_odd_event_ends_the_tap_with_one_line(
    data: bytes, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: AttributeError, KeyError, OverflowError, TypeError tracebacks."""
    with serving(event_stream(OPEN + data + b"\n\n")) as (url, _):
        assert tap(url) == EXIT_NO_TAP
    [line] = capsys.readouterr().err.splitlines()
    assert line == f"bushub tap: {url}: not a node's answer: {said}" or line.startswith(
        f"bushub tap: {url}: not a node's answer: {said} ("
    )


def test_an_endless_line_is_cut_off_at_the_cap(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the line grew in memory until the server stopped (here: 32 MiB)."""
    sent = 0

    def endless(h: http.server.BaseHTTPRequestHandler) -> None:
        nonlocal sent
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.end_headers()
        h.wfile.write(b"data: ")
        with contextlib.suppress(OSError):
            for _ in range(32):
                h.wfile.write(b"a" * (1 << 20))
                sent += 1 << 20

    with serving(endless) as (url, _):
        assert tap(url) == EXIT_NO_TAP
    said = capsys.readouterr().err.strip()
    assert said == f"bushub tap: {url}: not a node's answer: a line over {MAX_LINE} bytes"
    # What the kernel's buffers took before the tap hung up, not the whole line.
    assert sent < 16 << 20, sent


def test_a_redirect_is_refused_and_the_token_goes_nowhere_else(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: urllib followed it, Authorization and all, to the other host."""
    with serving(event_stream(OPEN)) as (elsewhere, asked_elsewhere):

        def redirect(h: http.server.BaseHTTPRequestHandler) -> None:
            h.send_response(302)
            h.send_header("location", f"{elsewhere}/api/tap/x\x1b[2J")
            h.send_header("content-length", "0")
            h.end_headers()

        with serving(redirect) as (url, asked):
            assert tap(url, "--count", "1") == EXIT_NO_TAP
    assert asked[0]["Authorization"] == f"Bearer {TOKEN}" and asked_elsewhere == []
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"bushub tap: {url} redirects to {elsewhere}/api/tap/x\\x1b[2J (302)")


def test_a_node_that_ends_the_tap_is_told_apart_from_count_reached(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: both exited 0, the node's end without a word."""
    one = b'data: {"kind":"message","t":0.0,"node":"n1","type":"m.T","source":"a"}\n\n'
    with serving(event_stream(OPEN + one)) as (url, _):
        assert tap(url, "--count", "1") == EXIT_DONE
        assert capsys.readouterr().err == ""
        assert tap(url, "--count", "2") == EXIT_ENDED_BY_NODE
    printed = capsys.readouterr()
    assert printed.out.splitlines()[0] == "tapping x (through node n1); Ctrl-C ends"
    assert printed.err == (
        f"bushub tap: {url} ended the tap (a draining node does): tap through another node\n"
    )


def test_an_error_answer_is_escaped_and_read_only_in_part(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def refuse(h: http.server.BaseHTTPRequestHandler) -> None:
        body = b'{"error": "bad admin token\\u001b[2J"}' + b" " * (1 << 20)
        h.send_response(401)
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        with contextlib.suppress(OSError):
            h.wfile.write(body)

    with serving(refuse) as (url, _):
        assert tap(url) == EXIT_NO_TAP
    assert capsys.readouterr().err == "bushub tap: 401 bad admin token\\x1b[2J\n"


@pytest.mark.parametrize("answers", [False, True])
def test_a_node_that_says_nothing_ends_the_tap_after_the_silent_limit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, answers: bool
) -> None:
    """A request that reached a process that hangs (a stopped worker of a --workers
    node): before, the tap waited for ever, printing nothing."""
    monkeypatch.setattr("bushub.tap_cli.SILENT_LIMIT", 0.3)
    release = threading.Event()

    def hang(h: http.server.BaseHTTPRequestHandler) -> None:
        if answers:  # the answer and the first event, then nothing
            h.send_response(200)
            h.send_header("content-type", "text/event-stream")
            h.end_headers()
            h.wfile.write(OPEN)
            h.wfile.flush()
        release.wait(10)

    with serving(hang) as (url, _):
        try:
            assert tap(url) == EXIT_NO_TAP
        finally:
            release.set()
    said = capsys.readouterr().err
    assert said == f"bushub tap: {url} said nothing for 0.3 s (a node that hangs?)\n"
