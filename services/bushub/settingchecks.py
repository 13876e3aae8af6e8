"""Checks of setting values that take a parser to read: numbers, Redis URLs, key files.

Each returns what is wrong in words (None when nothing is), for ``Settings.validate``
to name the option: a value that parses but cannot run stops the node at start-up
(exit code 2) instead of failing deep inside it, or, worse, running on something else
than what was meant (redis-py reads ``redis://:@/0`` as the machine's own Redis on
6379, and a database that is not a number as database 0).
"""

import math
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

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
    host, a database that is not a number (unix sockets give theirs as ``?db=``). A
    cluster URL may name several seeds, comma-separated."""
    if url.startswith(cluster_scheme):
        rest = url.removeprefix(cluster_scheme)
        netloc = rest.split("/", 1)[0].split("?", 1)[0]
        login, _, seeds = netloc.rpartition("@")
        for seed in seeds.split(","):
            if problem := _address_problem(urlsplit(f"redis://{login}@{seed}")):
                return problem
        return None
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return None if parts.path else "a unix:// URL needs the socket's path"
    if problem := _address_problem(parts):
        return problem
    db = unquote(parts.path).strip("/")
    if db and not (db.isascii() and db.isdigit()):
        return f"database {db!r} is not a number"
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
    """Whether ``path`` holds a key the token check can use (RS256 or ES256)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path} cannot be read ({exc})"
    for algorithm in (RSAAlgorithm(RSAAlgorithm.SHA256), ECAlgorithm(ECAlgorithm.SHA256)):
        try:
            algorithm.prepare_key(text)
        except (InvalidKeyError, ValueError, TypeError):
            continue
        return None
    return f"{path} holds no RSA or EC public key (PEM) to check tokens with"
