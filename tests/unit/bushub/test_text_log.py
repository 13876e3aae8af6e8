"""The text log's formatter keeps every message on one line of printable text
(``bushub.logs.TextFormatter``); tracebacks keep their lines."""

import json
import logging
import sys
import warnings

import pytest

from bushub.logs import JsonFormatter, RedactTokensFilter, TextFormatter, configure_logging


def render(msg: str, *args: object, exc: bool = False) -> str:
    record = logging.LogRecord("bushub.test", logging.INFO, __file__, 1, msg, args, None)
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            record.exc_info = sys.exc_info()
    return TextFormatter("%(levelname)s %(message)s").format(record)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("a\nINFO forged", "a\\nINFO forged"),
        ("a\r\nb", "a\\r\\nb"),
        ("nul\x00", "nul\\x00"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("csi\x9b", "csi\\x9b"),
        ("line\u2028sep", "line\\u2028sep"),
        # What reorders or hides the rest of a line in a viewer: shown as escapes.
        ("/ws/a\u202eevil", "/ws/a\\u202eevil"),
        ("ali\u200bce", "ali\\u200bce"),
        # No encoding takes a lone surrogate (a client's JSON "\ud800" decodes to one).
        ("lone\ud800", "lone\\ud800"),
        ("tab\tstays, é and ✓ too", "tab\tstays, é and ✓ too"),
    ],
)
def test_arguments_are_escaped(value: str, shown: str) -> None:
    assert render("refused %s: bad", value) == f"INFO refused {shown}: bad"


def test_a_traceback_keeps_its_lines_after_a_one_line_message() -> None:
    lines = render("Exception in ASGI application\n", exc=True).splitlines()
    assert lines[0] == "INFO Exception in ASGI application"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (
            '"GET /ws/a?peer=b&session=s3cr3t-Id_1&received=4 HTTP/1.1" 101',
            '"GET /ws/a?peer=b&session=REDACTED&received=4 HTTP/1.1" 101',
        ),
        ("/ws/a?session=abc", "/ws/a?session=REDACTED"),
        ("/ws/a?token=t.k.n&session=abc", "/ws/a?token=REDACTED&session=REDACTED"),
        ("the session=... of a message, not a query", "the session=... of a message, not a query"),
        # The node decodes a parameter's name before reading it: these were logged whole.
        ('"WebSocket /ws/a?%74oken=t.k.n&b" 403', '"WebSocket /ws/a?%74oken=REDACTED&b" 403'),
        ("/ws/a?peer=b&tok%65n=t.k.n", "/ws/a?peer=b&tok%65n=REDACTED"),
        ("/ws/a?%73ession=abc&received=%34", "/ws/a?%73ession=REDACTED&received=%34"),
        ("/ws/a?peer=%41b&x=1", "/ws/a?peer=%41b&x=1"),
        # Not read by the node (refused), yet a working token: logged whole before.
        ("/ws/a?TOKEN=t.k.n&Session=abc", "/ws/a?TOKEN=REDACTED&Session=REDACTED"),
    ],
)
def test_session_ids_and_tokens_in_request_lines_are_redacted(line: str, shown: str) -> None:
    # uvicorn's access log passes the request line as an argument.
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "%s", (line,), None)
    assert RedactTokensFilter().filter(record)
    assert record.getMessage() == shown


def test_python_warnings_are_log_lines_in_the_logs_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """PyJWT's warning about a short key was printed raw: two lines that are no JSON
    object in a JSON log (the image's default format)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", "json")
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # this suite makes warnings errors
            warnings.warn("a library's warning", UserWarning, stacklevel=1)
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines, "the warning went nowhere"
        entry = json.loads(lines[-1])
        assert entry["logger"] == "py.warnings" and "a library's warning" in entry["msg"]
    finally:
        logging.captureWarnings(False)
        root.handlers[:], level = saved
        root.setLevel(level)


def test_a_json_line_keeps_a_lone_surrogate_as_its_escape() -> None:
    """orjson refuses a lone surrogate: the line was lost, and logging printed a
    traceback of its own in its place."""
    record = logging.LogRecord(
        "bushub.test", logging.WARNING, __file__, 1, "refused %s: %s", ("a\udc9b", "x"), None
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "refused a\\udc9b: x"
    assert entry["level"] == "warning" and entry["logger"] == "bushub.test"
