"""Checks of setting values that take a parser to read: numbers, Redis URLs, key files.

Each returns what is wrong in words (None when nothing is), for ``Settings.validate``
to name the option: a value that parses but cannot run stops the node at start-up
(exit code 2) instead of failing deep inside it, or, worse, running on something else
than what was meant (redis-py reads ``redis://:@/0`` as the machine's own Redis on
6379, and a database that is not a number as database 0).
"""

import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError
from redis.asyncio.connection import parse_url
from redis.exceptions import RedisError

# The longest time a setting in seconds may say (11.6 days): past it a value is a
# mistake, and deadlines built from it overflow what the event loop and Redis take.
MOST_SECONDS = 1_000_000.0


def number_problem(value: float, *, seconds: bool) -> str | None:
    """NaN and infinities pass every ``<``/``>`` test a bound makes (NaN compares
    false), so they are refused by name; so is a time past ``MOST_SECONDS``."""
    if not math.isfinite(value):
        return f"{value} is not a finite number"
    if seconds and value > MOST_SECONDS:
        return f"{value:g} s is over {MOST_SECONDS:g} s"
    return None


def redis_url_problem(url: str, cluster_scheme: str) -> str | None:
    """What redis-py would misread or fail on in ``url``: a port that is not one, no
    host, a database that is not a number (unix sockets give theirs as ``?db=``), a
    query parameter it cannot read or does not take, a TLS file that is not there. A
    cluster URL may name several seeds, comma-separated."""
    if url.startswith(cluster_scheme):
        whole = urlsplit("redis://" + url.removeprefix(cluster_scheme))
        login, _, seeds = whole.netloc.rpartition("@")
        for seed in seeds.split(","):
            if problem := _address_problem(urlsplit(f"redis://{login}@{seed}")):
                return problem
        # The cluster client drops query parameters it does not take: only their
        # values are read.
        first = f"{login}@{seeds.split(',')[0]}"
        one = urlunsplit(("redis", first, whole.path, whole.query, whole.fragment))
        return _options_problem(one, build=False)
    parts = urlsplit(url)
    if parts.scheme == "unix":
        if not parts.path:
            return "a unix:// URL needs the socket's path"
        return _options_problem(url, build=True)
    if problem := _address_problem(parts):
        return problem
    db = unquote(parts.path).strip("/")
    if db and not (db.isascii() and db.isdigit()):
        return f"database {db!r} is not a number"
    return _options_problem(url, build=True)


# The TLS files a URL may name (``rediss://...?ssl_ca_certs=...``): one that is not
# there fails every connection with "No such file or directory", read as Redis being
# out of reach, and the node would wait for it for ever.
_TLS_FILES = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")


def _options_problem(url: str, *, build: bool) -> str | None:
    """The URL's query parameters as redis-py reads them: a value it cannot read, a
    parameter its connection does not take (with ``build``: the connection is made,
    not opened), a TLS file that is not there. Unchecked, each ended the node's start
    in a traceback, or left it waiting."""
    options: dict[str, Any]
    try:
        if build:
            pool = aioredis.ConnectionPool.from_url(url)
            pool.connection_class(**pool.connection_kwargs)
            options = pool.connection_kwargs
        else:
            options = dict(parse_url(url))
    except TypeError as exc:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if unexpected is None:
            return str(exc)
        return f"query parameter {unexpected[1]!r} does not apply to a {url.split(':')[0]}:// URL"
    except (ValueError, RedisError) as exc:
        return str(exc)
    for name in _TLS_FILES:
        path = options.get(name)
        if path is not None and not Path(str(path)).exists():
            return f"{name}: {path} does not exist"
    return None


def _address_problem(parts: SplitResult) -> str | None:
    try:
        port = parts.port
    except ValueError as exc:
        return f"port: {exc}"
    if not parts.hostname:
        return "no host (redis://HOST:PORT/DB)"
    if port == 0:
        return "port 0 is not a Redis port"
    return None


def public_key_problem(path: str) -> str | None:
    """Whether ``path`` holds a key the token check can use (RS256 or ES256): a public
    one. PyJWT loads a private key as readily, and then fails every check with an
    error that is not a token's (each handshake with an RS256 or ES256 token answered
    500): it is refused by name."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path} cannot be read ({exc})"
    for algorithm in (RSAAlgorithm(RSAAlgorithm.SHA256), ECAlgorithm(ECAlgorithm.SHA256)):
        try:
            key = algorithm.prepare_key(text)
        except (InvalidKeyError, ValueError, TypeError):
            continue
        if not hasattr(key, "verify"):
            return (
                f"{path} holds a private key: give its public half "
                "(openssl pkey -in KEY -pubout), which is all the hub needs"
            )
        return None
    return f"{path} holds no RSA or EC public key (PEM) to check tokens with"
