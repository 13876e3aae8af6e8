"""The login a Redis URL carries, for the connections a broker opens by address.

redis-py clients built with ``from_url`` read ``user:password@`` themselves. The
raw publish and pub/sub connections, and the per-primary connections of a Redis
Cluster, are opened from a host and port: each must be handed the same login, or
a password-protected Redis refuses it.
"""

from dataclasses import dataclass, field

from redis.asyncio.connection import parse_url


@dataclass(frozen=True)
class Credentials:
    """An ACL user and/or password; both None for an open Redis.

    A URL with only a password (``redis://:secret@host``) logs in as the default
    user, which is what ``requirepass`` protects.
    """

    username: str | None = None
    # Kept out of repr: a Credentials may end up in a log line or a traceback.
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> "Credentials":
        """The login in ``url``, percent-decoded as redis-py decodes it."""
        params = parse_url(url)
        return cls(params.get("username") or None, params.get("password") or None)
