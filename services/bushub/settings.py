"""One settings object: every option is a ``bushub serve`` flag and a ``BUSHUB_*``
variable, described once here.

Precedence: flag, then environment variable, then default. Values are checked at
start-up and a bad one stops the process with a message naming the option.
"""

import argparse
import ipaddress
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from bushub import settingchecks
from bushub.origins import origin_problem
from buswire.allowlist import TypePolicy
from buswire.complexity import BASE_CONTAINERS, DEFAULT_BYTES_PER_CONTAINER

# A --redis-url with this scheme selects the Redis Cluster broker (sharded pub/sub).
CLUSTER_SCHEME = "redis+cluster://"
# listen() takes a C int: a larger backlog would stop the node at start-up with an
# OverflowError. The kernel caps what is asked at net.core.somaxconn anyway.
MAX_BACKLOG = 2**31 - 1
# The number settings that are rates, not seconds (any finite size goes).
_RATES = frozenset({"rate_messages", "rate_bytes", "accept_rate"})


class SettingsError(ValueError):
    """A setting has a value the hub cannot run with."""


# --workers at most, per CPU the process may run on.
WORKERS_PER_CPU = 4


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _is_address_or_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value)
    except ValueError:
        return False
    return True


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Settings:
    """Everything a hub node can be told."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8765, metadata={"help": "port to listen on (0 picks a free one)"})
    redis_url: str = field(
        default="",
        metadata={
            "help": "redis:// URL of the cluster's broker (redis+cluster:// for Redis "
            "Cluster); empty runs single-node in-process"
        },
    )
    node_id: str = field(
        default_factory=_default_node_id,
        metadata={
            "help": "this node's name in presence and logs; one per running node: a node "
            "started with the id of one that is running waits, serving nothing, with an "
            "ERROR line each 10 s, until that one is gone (a restart of the same node is "
            "not held: its earlier process, dead, is no longer subscribed to the id's "
            "channel; one cut off by a partition is, until Redis drops its connection)"
        },
    )
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})
    log_format: str = field(default="text", metadata={"help": "text, or json for log shippers"})
    admin_token: str = field(
        default="",
        metadata={
            "help": "bearer token of the operator API (/console's data, /agents, /api/tap, "
            "/api/send); empty leaves it off"
        },
    )
    presence_ttl: float = field(
        default=10.0,
        metadata={
            "help": "seconds a node's heartbeat lives (it beats every third of it); its "
            "agents leave presence this long (plus one beat) after it dies"
        },
    )
    peer_grace: float = field(
        default=5.0,
        metadata={
            "help": (
                "seconds a lost peer may take to come back before on_peer_lost=close acts; "
                "a peer with a session has --resume-window (its session lasts that long)"
            )
        },
    )
    takeover_timeout: float = field(
        default=2.0,
        metadata={
            "help": "seconds a new connection waits for the older holder of its name to close"
        },
    )
    max_message_bytes: int = field(
        default=1 << 20, metadata={"help": "largest frame relayed; larger ones are dropped"}
    )
    bytes_per_container: int = field(
        default=DEFAULT_BYTES_PER_CONTAINER,
        metadata={
            "help": f"a frame may hold {BASE_CONTAINERS} maps and lists plus one per this "
            "many bytes; more are dropped (too_complex)"
        },
    )
    queue_bytes: int = field(
        default=8 << 20,
        metadata={"help": "outbound bytes queued per connection before it is closed as too slow"},
    )
    publish_buffer: int = field(
        default=10_000,
        metadata={
            "help": "publishes held while the broker is unreachable before dropping the "
            "oldest; and at most 256 MiB of them, whatever their count"
        },
    )
    keepalive: float = field(
        default=30.0,
        metadata={
            "help": "seconds between keepalive checks: a socket silent for one is pinged, "
            "one silent for another after that ping is closed with 4009 (0 = off)"
        },
    )
    drain_timeout: float = field(
        default=10.0, metadata={"help": "seconds SIGTERM waits for queues to flush before exiting"}
    )
    resume_window: float = field(
        default=120.0,
        metadata={
            "help": "seconds a reconnecting proxy's session is kept while it is away: what is "
            "addressed to it meanwhile is replayed when it comes back (0 = sessions off)"
        },
    )
    resume_messages: int = field(
        default=10_000,
        metadata={"help": "messages kept per session at most; past it the oldest go (a gap)"},
    )
    resume_bytes: int = field(
        default=16 << 20,
        metadata={"help": "bytes kept per session at most; past it the oldest go (a gap)"},
    )
    resume_forget_every: float = field(
        default=300.0,
        metadata={
            "help": "seconds between passes that forget, for agents written to meanwhile, "
            "the sending sessions that are gone from what the relay remembers to relay a "
            "resend once (0 = never)"
        },
    )
    transient_frames: bool = field(
        default=False,
        metadata={
            "help": "deliver bridged frames (BusFrameMessage) to sessions at most once "
            "instead of keeping them for a resume (less Redis memory for audio)"
        },
    )
    jwt_secret: str = field(
        default="", metadata={"help": "HS256 secret; setting it (or a public key) turns auth on"}
    )
    jwt_public_keys: str = field(
        default="",
        metadata={"help": "comma-separated PEM files of RS256/ES256 public keys (rotation)"},
    )
    jwt_leeway: float = field(
        default=5.0, metadata={"help": "seconds of clock skew allowed on token exp/nbf"}
    )
    jwt_audience: str = field(
        default="", metadata={"help": "required token aud claim; empty ignores aud"}
    )
    insecure: bool = field(
        default=False,
        metadata={"help": "allow listening on a non-loopback address with auth off"},
    )
    allow_types: str = field(
        default="",
        metadata={"help": "comma-separated extra top-level __type__ names to relay"},
    )
    allow_type_prefixes: str = field(
        default="",
        metadata={"help": "comma-separated extra module prefixes allowed for nested __type__"},
    )
    rate_messages: float = field(
        default=2000.0,
        metadata={
            "help": "messages/s one socket may send (burst: one second's worth); 0 = no limit"
        },
    )
    rate_bytes: float = field(
        default=8 << 20,
        metadata={"help": "bytes/s one socket may send (burst: one second's worth); 0 = no limit"},
    )
    max_connections: int = field(
        default=20_000, metadata={"help": "sockets one node accepts before refusing (HTTP 503)"}
    )
    accept_rate: float = field(
        default=2000.0,
        metadata={
            "help": "WebSocket handshakes per second one node takes (burst: one second's "
            "worth); past it HTTP 503 with Retry-After, and clients back off; 0 = no limit"
        },
    )
    backlog: int = field(
        default=65_535,
        metadata={
            "help": "connections the kernel queues until the node accepts them (the kernel "
            "caps it at net.core.somaxconn); a full queue drops new connections' SYNs, "
            "which clients retry only after 1, 3, 7... s"
        },
    )
    allowed_origins: str = field(
        default="",
        metadata={
            "help": "comma-separated origins (scheme://host[:port]) browsers may open "
            "sockets from, * for any; empty: any with auth on, none with auth off (a page "
            "in a browser on the node's machine could otherwise take an agent's name)"
        },
    )
    forwarded_allow_ips: str = field(
        default="127.0.0.1",
        metadata={
            "help": "comma-separated addresses or networks (CIDR) of the proxies in front "
            "whose X-Forwarded-For and X-Forwarded-Proto are believed for a client's "
            "address (logs, refusals); * alone for any (only where nothing else reaches "
            "the node: a client could name any address); empty for none"
        },
    )
    handshake_timeout: float = field(
        default=10.0,
        metadata={
            "help": "seconds from accept to a complete HTTP request or WebSocket upgrade "
            "before the connection is closed"
        },
    )
    max_header_bytes: int = field(
        default=16384,
        metadata={"help": "bytes of request line and headers read before refusing with 431"},
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "processes sharing the port (SO_REUSEPORT), each a node of its own; "
            "auto = one per CPU; at most 4 per CPU; more than 1 needs --redis-url",
            "words": {"auto": cpu_count},
        },
    )
    worker_timeout: float = field(
        default=30.0,
        metadata={
            "help": "with --workers: seconds a worker may answer nothing (hung, stopped) "
            "before it is killed and started again (0 = never)"
        },
    )

    def __post_init__(self) -> None:
        # A token read from a file (a Kubernetes secret, `$(cat token)` in a unit
        # file) often ends with a newline the client never sends: compared as given,
        # it would refuse every request, the console's included, and say nothing.
        stripped = self.admin_token.strip()
        if self.admin_token and not stripped:
            raise SettingsError("admin-token: only whitespace (leave it unset to keep the API off)")
        object.__setattr__(self, "admin_token", stripped)
        # Not stripped (a token is signed with the secret as given), but a secret of
        # blanks alone is one anybody guesses.
        if self.jwt_secret and not self.jwt_secret.strip():
            raise SettingsError("jwt-secret: only whitespace (openssl rand -hex 32 makes one)")

    @property
    def auth_enabled(self) -> bool:
        """True when tokens are required."""
        return bool(self.jwt_secret or self.jwt_public_keys)

    @staticmethod
    def split(value: str) -> tuple[str, ...]:
        """A comma-separated setting as a tuple, blanks dropped."""
        return tuple(part.strip() for part in value.split(",") if part.strip())

    def type_policy(self) -> TypePolicy:
        """The type policy every message is checked against, socket or HTTP."""
        return TypePolicy(self.split(self.allow_types), self.split(self.allow_type_prefixes))

    @property
    def presence_refresh(self) -> float:
        """How often records are refreshed and peers re-checked: a third of the TTL."""
        return self.presence_ttl / 3

    def validate(self) -> "Settings":
        """Check values that parse but cannot run.

        Raises:
            SettingsError: naming the first bad option.
        """
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port: {self.port} is not a TCP port")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float):
                seconds = f.name not in _RATES
                if problem := settingchecks.number_problem(value, seconds=seconds):
                    raise SettingsError(f"{f.name.replace('_', '-')}: {problem}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"log-level: {self.log_level!r} is not debug/info/warning/error")
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"log-format: {self.log_format!r} is not text or json")
        if self.redis_url and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://", CLUSTER_SCHEME)
        ):
            raise SettingsError(
                f"redis-url: must start with redis://, rediss://, unix:// or {CLUSTER_SCHEME}"
            )
        if self.redis_url and (
            problem := settingchecks.redis_url_problem(self.redis_url, CLUSTER_SCHEME)
        ):
            raise SettingsError(f"redis-url: {problem}")
        for name in (
            "presence_ttl",
            "peer_grace",
            "takeover_timeout",
            "drain_timeout",
            "handshake_timeout",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.replace('_', '-')}: must be > 0")
        if self.worker_timeout < 0:
            raise SettingsError("worker-timeout: must be >= 0")
        for name in ("max_message_bytes", "bytes_per_container", "queue_bytes", "publish_buffer"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.replace('_', '-')}: must be >= 1")
        if self.queue_bytes < self.max_message_bytes:
            raise SettingsError("queue-bytes: must be >= max-message-bytes")
        if not self.node_id or any(ch.isspace() for ch in self.node_id):
            raise SettingsError("node-id: must be non-empty with no whitespace")
        for name in ("resume_messages", "resume_bytes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.replace('_', '-')}: must be >= 1")
        for name in (
            "rate_messages",
            "rate_bytes",
            "jwt_leeway",
            "keepalive",
            "accept_rate",
            "resume_window",
            "resume_forget_every",
        ):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name.replace('_', '-')}: must be >= 0")
        if self.max_connections < 1:
            raise SettingsError("max-connections: must be >= 1")
        if not 1 <= self.backlog <= MAX_BACKLOG:
            raise SettingsError(f"backlog: must be within 1..{MAX_BACKLOG}")
        if self.max_header_bytes < 1024:
            raise SettingsError("max-header-bytes: must be >= 1024")
        if any(not ch.isprintable() or ch.isspace() for ch in self.admin_token):
            raise SettingsError(
                "admin-token: holds whitespace or control characters, which no "
                "Authorization header carries"
            )
        if not self.admin_token.isascii():
            # Headers are read as Latin-1: a client's UTF-8 would never match it.
            raise SettingsError("admin-token: holds characters outside ASCII, which clients mangle")
        for value in self.split(self.allowed_origins):
            if problem := origin_problem(value):
                raise SettingsError(f"allowed-origins: {problem}")
        proxies = self.split(self.forwarded_allow_ips)
        for value in proxies:
            # As uvicorn reads them: a network with host bits set (10.0.0.5/8) would be
            # taken for a name and match nobody, a * beside others for itself.
            if value == "*" and len(proxies) > 1:
                raise SettingsError("forwarded-allow-ips: * stands alone (it means any)")
            if value != "*" and not _is_address_or_network(value):
                raise SettingsError(
                    f"forwarded-allow-ips: {value!r} is no address or network (CIDR, no "
                    "host bits set)"
                )
        for path in self.split(self.jwt_public_keys):
            if not os.path.isfile(path):
                raise SettingsError(f"jwt-public-keys: {path} is not a readable file")
            if problem := settingchecks.public_key_problem(path):
                raise SettingsError(f"jwt-public-keys: {problem}")
        if self.workers < 1:
            raise SettingsError("workers: must be >= 1, or auto")
        if self.workers > WORKERS_PER_CPU * cpu_count():
            # A typo (200 for 20) started that many interpreters of ~70 MB each.
            raise SettingsError(
                f"workers: {self.workers} is more than {WORKERS_PER_CPU} per CPU "
                f"({cpu_count()} here): more serve nothing faster"
            )
        if self.workers > 1 and not self.redis_url:
            # Each worker is a node of its own; without a shared broker they could not
            # see each other's agents, and an agent's messages would reach only the
            # worker its socket happened to land on.
            raise SettingsError(
                f"workers: {self.workers} workers need a shared broker: set --redis-url "
                "(or BUSHUB_REDIS_URL), or run one worker"
            )
        if not self.auth_enabled and not self.insecure and not _is_loopback(self.host):
            raise SettingsError(
                f"host: refusing to listen on {self.host} with auth off; "
                "set --jwt-secret/--jwt-public-keys, or --insecure"
            )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_name(name: str) -> str:
    return f"BUSHUB_{name.upper()}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting, each naming its environment variable."""
    for f in fields(Settings):
        shown = "generated" if callable(f.default_factory) else repr(f.default)
        if f.type in (bool, "bool"):
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                dest=f.name,
                action="store_const",
                const="true",
                default=None,
                help=f"{f.metadata['help']} (env {_env_name(f.name)}=1)",
            )
            continue
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            default=None,
            help=f"{f.metadata['help']} (env {_env_name(f.name)}; default {shown})",
        )


def _convert(name: str, kind: Any, raw: str, words: Mapping[str, Any]) -> Any:
    if raw.lower() in words:  # a named value, such as --workers auto
        return words[raw.lower()]()
    if kind in (bool, "bool"):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{name.replace('_', '-')}: {raw!r} is not true or false")
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
    except ValueError:
        whole = kind in (int, "int")
        what = "a whole number" if whole else "a number"
        raise SettingsError(f"{name.replace('_', '-')}: {raw!r} is not {what}") from None
    return raw


def load_settings(
    args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build settings from parsed flags and the environment, then validate them."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is None:
            raw = env.get(_env_name(f.name))
        if raw is not None:
            values[f.name] = _convert(f.name, f.type, str(raw), f.metadata.get("words", {}))
    return Settings(**values).validate()


def settings_table() -> Sequence[tuple[str, str, str, str]]:
    """(flag, variable, default, meaning) per setting, for the README."""
    rows = []
    for f in fields(Settings):
        default = "generated" if callable(f.default_factory) else repr(f.default)
        rows.append(
            (f"--{f.name.replace('_', '-')}", _env_name(f.name), default, f.metadata["help"])
        )
    return rows
