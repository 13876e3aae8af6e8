"""Text from clients made safe to show on one line: in a log file, a log shipper's
JSON, an operator's terminal.

Only the standard library: ``bushub tap`` runs on an operator's machine and imports
this, and so do the node's log formatters.
"""

import re

# Characters that end a line, or steer a terminal, in someone's viewer: C0 and C1
# controls (NUL, CR, LF, ESC, CSI...), DEL, Unicode's line and paragraph separators;
# what reorders or hides the rest of a line: bidi controls and overrides, zero-width
# characters (``ali\u200bce`` read as ``alice``); and lone surrogates, which no
# encoding takes (JSON's ``"\ud800"`` decodes to one: a C locale wrote it as a raw
# byte, a UTF-8 terminal refused the line, orjson the log entry). A tab stays.
_CONTROL = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029"
    "\u061c\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff"
    "\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    escaped = repr(char)[1:-1]  # \n, \r, \x00, \x1b, \u2028, \ud800
    return escaped if escaped != char else f"\\x{ord(char):02x}"


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters written as Python escapes."""
    return _CONTROL.sub(_escape, text)
