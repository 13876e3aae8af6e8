"""Who may connect as which agent, and whom they may address.

A token is a JWT (HS256 with a shared secret, or RS256/ES256 checked against one
of several public keys, for rotation). Its claims:

- ``agents``: agent names the socket may hold: exact names or globs, where ``*``
  matches any run of characters (``voice-*``), ``?`` any one, and nothing else is
  special: read as fnmatch reads them, ``[...]`` made a grant of the legal name
  ``job[1]`` hold ``job1`` and not itself; ``sub`` stands in when ``agents`` is
  absent (not when it is empty: a token meant to hold no name holds none, whatever its
  identity provider put in ``sub``).
- ``targets``: agents it may address and pair with (the ``peer`` query, every
  message's target); absent means none.

A claim of another type than a string or a list of strings refuses the token
(``bad_claims``): read as absent, a malformed ``agents`` would have let ``sub`` in.

Errors carry a fixed reason for metrics and logs and never travel to the client.
"""

import fnmatch
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt


class AuthError(Exception):
    """A token that does not let this socket in.

    Args:
        reason: Fixed label: ``missing_token``, ``bad_token``, ``expired``,
            ``bad_claims``, ``agent_not_allowed``, ``peer_not_allowed``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows."""

    agents: tuple[str, ...]
    targets: tuple[str, ...]

    def may_hold(self, agent: str) -> bool:
        """True if the socket may take the name ``agent``."""
        return _matches(agent, self.agents)

    def may_address(self, agent: str) -> bool:
        """True if the socket may send to, or pair with, ``agent``."""
        return _matches(agent, self.targets)


# Everything is allowed when auth is off.
OPEN_GRANT = Grant(agents=("*",), targets=("*",))


def bearer_value(header: str) -> str | None:
    """The credentials of an ``Authorization: Bearer <value>`` header; None for any
    other (no scheme, another scheme, nothing after it). The scheme's case does not
    matter (RFC 9110)."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(
        pattern == name or fnmatch.fnmatchcase(name, _brackets_literal(pattern))
        for pattern in patterns
    )


@functools.lru_cache(maxsize=1024)
def _brackets_literal(pattern: str) -> str:
    """``pattern`` for fnmatch with ``[`` as itself (``[[]``): ``*`` and ``?`` stay
    wildcards. (fnmatch, not a regular expression of its own: its translation of
    ``*`` does not backtrack, where ``.*`` took seconds for ``*a*a*a*a*a*a*b``
    against a long name, on the event loop.)"""
    return pattern.replace("[", "[[]")


def _patterns(claims: dict[str, Any], name: str) -> tuple[str, ...] | None:
    """The names or globs claim ``name`` lists; None when the token has no such claim.

    Raises:
        AuthError: ``bad_claims``, for a claim that is not a string or a list of them.
    """
    if name not in claims:
        return None
    value = claims[name]  # null is no absence: "agents": null let ``sub`` in
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise AuthError("bad_claims")


class TokenVerifier:
    """Checks tokens against a shared secret and/or public keys.

    Args:
        secret: HS256 shared secret, or empty.
        public_key_files: PEM files of RS256/ES256 public keys; a token passes if
            any of them verifies it, so keys can be rotated by listing both.
        leeway: Seconds of clock skew tolerated on ``exp`` and ``nbf``.
        audience: When set, tokens must carry it in ``aud``; when empty, ``aud`` is
            not checked (identity providers often set one the hub has no use for).
    """

    def __init__(
        self,
        secret: str = "",
        public_key_files: Sequence[str] = (),
        leeway: float = 5.0,
        audience: str = "",
    ) -> None:
        self._audience = audience or None
        self._keys: list[tuple[Any, list[str]]] = []
        if secret:
            self._keys.append((secret, ["HS256"]))
        for path in public_key_files:
            self._keys.append((Path(path).read_text(), ["RS256", "ES256"]))
        self._leeway = leeway

    @property
    def enabled(self) -> bool:
        """False when no key is configured: every socket gets the open grant."""
        return bool(self._keys)

    def verify(self, token: str | None) -> Grant:
        """Turn a token into a grant.

        Raises:
            AuthError: missing, unverifiable or expired token.
        """
        if not self.enabled:
            return OPEN_GRANT
        if not token:
            raise AuthError("missing_token")
        claims: dict[str, Any] | None = None
        expired = False
        for key, algorithms in self._keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=algorithms,
                    leeway=self._leeway,
                    audience=self._audience,
                    options={"require": ["exp"], "verify_aud": self._audience is not None},
                )
                break
            except jwt.ExpiredSignatureError:
                expired = True
            except jwt.PyJWTError:
                continue
        if claims is None:
            raise AuthError("expired" if expired else "bad_token")
        exp = claims["exp"]
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            # PyJWT reads a string of digits as the time; RFC 7519 says a number.
            raise AuthError("bad_token")
        agents = _patterns(claims, "agents")
        if agents is None:
            agents = _patterns(claims, "sub")
        return Grant(agents=agents or (), targets=_patterns(claims, "targets") or ())


def make_token(
    secret: str, agents: Sequence[str], targets: Sequence[str], ttl: float, now: float
) -> str:
    """An HS256 token for local testing (``bushub token``)."""
    claims = {
        "sub": agents[0] if agents else "",
        "agents": list(agents),
        "targets": list(targets),
        "iat": int(now),
        "exp": math.ceil(now + ttl),  # never before it was issued, however short ttl
    }
    return jwt.encode(claims, secret, algorithm="HS256")
