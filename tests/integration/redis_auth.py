"""Locks for the test Redis servers: a password (``requirepass``) or an ACL user.

A hub is given only what an operator would give it: the password, or an ACL user
holding just the permissions the hub needs (`HUB_ACL_RULES`). The harness itself
(readiness PING, ``redis-cli``, a cluster replica's link to its primary) logs in
with the server's own credentials: the password, or an all-powerful admin user.

The passwords hold characters that must be percent-encoded in a URL, so every
connection the hub opens is shown to decode them alike.
"""

from dataclasses import dataclass
from urllib.parse import quote

# What a hub's ACL user needs, and no more: its own keys and channels, and the
# commands it sends, redis-py's cluster discovery (CLUSTER SLOTS, COMMAND) among
# them. AUTH needs no permission; redis-py's CLIENT SETINFO (Redis >= 7.2) may be
# refused, it ignores that. The presence and node-registry scripts' commands are
# checked against the key patterns as well.
HUB_ACL_RULES = (
    "resetkeys",
    "~bushub:*",
    "resetchannels",
    "&bushub:*",
    "-@all",
    "+ping",
    "+get",
    "+set",
    "+mget",
    "+del",
    "+exists",
    "+scan",
    "+time",
    "+zadd",
    "+zrem",
    "+zscore",
    "+zrange",
    "+zrangebyscore",
    "+zremrangebyscore",
    "+sadd",
    "+srem",
    "+smembers",
    "+sunionstore",
    "+hget",
    "+hset",
    "+hincrby",
    "+hscan",
    "+hdel",
    "+pexpire",
    "+pttl",
    "+persist",
    "+xadd",
    "+xlen",
    "+xrange",
    "+xdel",
    "+xtrim",
    "+eval",
    "+evalsha",
    "+script|load",
    "+script|exists",
    "+publish",
    "+subscribe",
    "+unsubscribe",
    "+spublish",
    "+ssubscribe",
    "+sunsubscribe",
    "+cluster|slots",
    "+command",
)

# The harness's own login on a server locked with an ACL user.
ADMIN_USER = "harness-admin"
ADMIN_PASSWORD = "admin/p@ss:word"


@dataclass(frozen=True)
class RedisAuth:
    """How a test Redis is locked, and what a hub is given to get in.

    Attributes:
        username: The hub's ACL user (the default user is then disabled); None
            locks the default user with ``requirepass`` instead.
        password: The hub's password.
    """

    username: str | None
    password: str

    @property
    def admin_login(self) -> tuple[str | None, str]:
        """(user, password) the harness logs in with; no user means the default."""
        if self.username is None:
            return None, self.password
        return ADMIN_USER, ADMIN_PASSWORD

    def server_args(self) -> list[str]:
        """redis-server options that lock it."""
        if self.username is None:
            return ["--requirepass", self.password]
        return [
            *("--user", "default", "off"),
            *("--user", ADMIN_USER, "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all"),
            *("--user", self.username, "on", f">{self.password}", *HUB_ACL_RULES),
        ]

    def replica_args(self) -> list[str]:
        """redis-server options a cluster replica needs to log in to its primary."""
        user, password = self.admin_login
        return ["--masterauth", password, *(["--masteruser", user] if user else [])]

    def cli_args(self) -> list[str]:
        """redis-cli options that log the harness in."""
        user, password = self.admin_login
        return [*(["--user", user] if user else []), "--pass", password, "--no-auth-warning"]

    def auth_command(self) -> bytes:
        """AUTH as the harness, in RESP (for the readiness probe's raw socket)."""
        user, password = self.admin_login
        parts = [b"AUTH", *([user.encode()] if user else []), password.encode()]
        return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

    def userinfo(self) -> str:
        """The hub's ``user:password@`` for a URL, percent-encoded."""
        return f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"

    def with_password(self, password: str) -> "RedisAuth":
        """The same login with another password (a wrong one, for refusal tests)."""
        return RedisAuth(self.username, password)


REQUIREPASS = RedisAuth(None, "hub/p@ss:word")
ACL_USER = RedisAuth("bushub-hub", "hub/acl@pass:word")
