"""Which browser pages may open a socket: the handshake's ``Origin`` header.

Only browsers send ``Origin`` (the pipecat proxies, like most WebSocket clients, send
none), and a browser sends it for whatever page opened the socket. With auth on, a
page gets nowhere without a token, which a browser never adds on its own; with auth
off, a page on any site, open in a browser on the node's machine, could dial the
loopback node and take over an agent's name. So with auth off and no
``--allowed-origins``, browsers are refused; ``*`` lets every origin in.

Browsers write an origin as ``scheme://host[:port]``, host in lower case and no
default port; the configured values are brought to that form, so that
``https://App.example/`` matches what a browser sends.
"""

from collections.abc import Iterable
from urllib.parse import urlsplit

ANY = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _opaque(origin: str) -> bool:
    """Whether ``origin`` is the one a sandboxed frame, a file:// page or a redirect
    sends, whatever site it is on."""
    return origin.lower() == "null"


def origin_problem(value: str) -> str | None:
    """What keeps ``value`` from being an origin to list (None: nothing)."""
    if value == ANY:
        return None
    if _opaque(value):
        # The origin of a sandboxed frame, a file:// page, a redirect: any site can
        # make its page send it, so listed it lets every site in, as * does, unsaid.
        return "'null' is an origin any site can send (a sandboxed frame): list * if you mean any"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not one
    except ValueError as exc:
        return f"{value!r}: {exc}"
    if not parts.scheme or not parts.hostname:
        return f"{value!r} is not scheme://host[:port]"
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return f"{value!r} has more than scheme://host[:port] (a browser sends no path)"
    return None


def normalized(value: str) -> str:
    """``value`` as a browser writes its origin (lower case, no default port, no
    trailing slash); unchanged when it cannot be read as one."""
    if value == ANY:
        return value
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return value
    if not parts.scheme or not parts.hostname:
        return value
    scheme = parts.scheme.lower()
    host = parts.hostname  # urlsplit gives it in lower case, without IPv6 brackets
    if not host.isascii():
        # Browsers send an internationalized host in its ASCII form (xn--...).
        try:
            host = host.encode("idna").decode()
        except UnicodeError:
            return value
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class OriginPolicy:
    """Whether a handshake's ``Origin`` may open a socket on this node."""

    def __init__(self, allowed: Iterable[str], *, auth_enabled: bool) -> None:
        listed = {normalized(value) for value in allowed}
        self._any = ANY in listed or (not listed and auth_enabled)
        self._allowed = frozenset(listed - {ANY})

    @property
    def refuses_browsers(self) -> bool:
        """Whether every browser is refused (auth off, no ``--allowed-origins``)."""
        return not self._any and not self._allowed

    def wants_listing(self, origin: str | None) -> bool:
        """Whether ``origin``, refused, would be let in by listing it: every browser
        is refused for want of a list, and it is one that can be listed."""
        return self.refuses_browsers and origin is not None and not _opaque(origin)

    def allows(self, origin: str | None) -> bool:
        if origin is None or self._any:
            return True
        return normalized(origin) in self._allowed
