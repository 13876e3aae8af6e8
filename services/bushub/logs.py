"""Logging set-up: plain lines for people, JSON lines for log shippers, and a
rate limiter so a repeated warning cannot flood either."""

import logging
import re
import sys
import time
from urllib.parse import unquote_plus

import orjson

from bushub.escapes import escape_controls


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the fields shippers index."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry).decode()
        except orjson.JSONEncodeError:
            # A lone surrogate (a client's JSON ``"\ud800"`` decodes to one) is no
            # UTF-8, and orjson refuses it: the line was lost, and logging wrote a
            # traceback of its own. Written as its escape instead.
            return orjson.dumps({k: _encodable(v) for k, v in entry.items()}).decode()


def _encodable(value: object) -> object:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    return value


class TextFormatter(logging.Formatter):
    """Plain lines in which a message is always one line.

    Messages carry what clients sent (agent names, paths, header values): a newline
    there would forge a line of its own, a NUL or an escape sequence would garble
    the file or the terminal. Escaping here covers every log call, the hub's and
    the libraries'. Tracebacks keep their lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        # ``format`` sets record.message afresh for each handler, so this changes
        # nothing another formatter sees. A trailing newline (uvicorn's "Exception
        # in ASGI application\n") only precedes the traceback.
        record.message = escape_controls(record.message.rstrip("\n"))
        return super().formatMessage(record)


class RateLimitFilter(logging.Filter):
    """Let each distinct warning template through at most once per ``interval``.

    Keyed by the unformatted message, so "redis unreachable (%s)" counts as one
    warning whatever the exception; the next one that passes says how many were
    suppressed meanwhile. A record with a ``rate_key`` (``extra=``) is limited per
    key: a warning about one agent does not hide the same warning about another.
    """

    def __init__(self, interval: float = 10.0, most_keys: int = 10_000) -> None:
        super().__init__()
        self._interval = interval
        self._most_keys = most_keys
        self._last: dict[tuple[str, object, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.msg, getattr(record, "rate_key", None))
        now = time.monotonic()
        if len(self._last) >= self._most_keys and key not in self._last:
            self._forget_before(now - self._interval)
        last, suppressed = self._last.get(key, (0.0, 0))
        if now - last < self._interval:
            self._last[key] = (last, suppressed + 1)
            return False
        if suppressed:
            record.msg = f"{record.msg} [{suppressed} similar suppressed]"
        self._last[key] = (now, 0)
        return True

    def _forget_before(self, since: float) -> None:
        """Drop keys not logged since ``since`` (their suppressed counts go unsaid);
        all of them if every key is that recent, so the map stays bounded."""
        stale = [key for key, (last, _) in self._last.items() if last < since]
        for key in stale or list(self._last):
            del self._last[key]


# Case-blind: the node reads only ``token``, but a client that wrote ``TOKEN=`` (and
# was refused) carried a working token all the same.
_TOKEN_IN_URL = re.compile(r"(?i)(token=)[^&\s\"']+")
# A session id resumes the session (with the agent's token, if auth is on): a
# credential as well, shown to peers only as a digest.
_SESSION_IN_URL = re.compile(r"(?i)([?&]session=)[^&\s\"']+")
_AUTHORIZATION = re.compile(r"(?i)(authorization:\s*(?:\S+\s+)?)\S+")
# A query's parameter names are percent-decoded before they are read (``?%74oken=``
# is ``?token=`` to the node), so a name written encoded is read as its decoding.
_QUERY_PARAMETER = re.compile(r"([?&])([^=&\s\"'#]*%[^=&\s\"'#]*)=([^&\s\"'#]*)")
_CREDENTIAL_PARAMETERS = ("token", "session")


def _redact_encoded(match: re.Match[str]) -> str:
    name = unquote_plus(match.group(2)).lower()
    if name.endswith(_CREDENTIAL_PARAMETERS):
        return f"{match.group(1)}{match.group(2)}=REDACTED"
    return match.group(0)


class RedactTokensFilter(logging.Filter):
    """Blank out ``?token=`` and ``?session=`` values (their names percent-encoded
    too) and ``Authorization`` headers: uvicorn logs handshake paths with their query,
    and at debug level every request header."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        lowered = record.msg.lower() if isinstance(record.msg, str) else ""
        if "token=" in lowered:
            record.msg = _TOKEN_IN_URL.sub(r"\1REDACTED", record.msg)
        if "session=" in lowered:
            record.msg = _SESSION_IN_URL.sub(r"\1REDACTED", record.msg)
        if isinstance(record.msg, str) and "%" in record.msg:
            record.msg = _QUERY_PARAMETER.sub(_redact_encoded, record.msg)
        if isinstance(record.msg, str) and "authorization" in record.msg.lower():
            record.msg = _AUTHORIZATION.sub(r"\1REDACTED", record.msg)
        return True


class UvicornNoiseFilter(logging.Filter):
    """Drop the lines uvicorn and websockets write that the node says better or not at
    all, by their message template:

    - the error after a handshake answered with an HTTP status: uvicorn
      (websockets-sansio) does not mark the handshake complete after a denial
      response, and then reports every 401/403/503 as "returned without completing
      handshake" (refusals are counted in bushub_connections_refused_total instead);
    - the two lines written for every socket accepted (``"WebSocket /ws/..."
      [accepted]`` and ``connection open``): the node writes one line of its own per
      socket opened (agent, peer, connection, node) and one per socket closed; with
      theirs a node wrote four, 8,000 a second at 2,000 handshakes a second.
    """

    _DROPPED = frozenset(
        {
            "ASGI callable returned without completing handshake.",
            '%s - "WebSocket %s" [accepted]',
            "connection open",
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self._DROPPED


def configure_logging(level: str, fmt: str) -> None:
    """Send logs to stderr as text or JSON lines, warnings rate-limited."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    # Rate-limit first: it keys on the message template, before redaction merges
    # the arguments in.
    handler.addFilter(RateLimitFilter())
    handler.addFilter(RedactTokensFilter())
    logging.getLogger("uvicorn.error").addFilter(UvicornNoiseFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Python's warnings (a library's, PyJWT's about a short key) as log lines, in the
    # log's format: printed raw, they broke a JSON log's one-object-per-line.
    logging.captureWarnings(True)
    root.setLevel(level.upper())
