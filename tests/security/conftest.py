"""Hub processes for the security suite, started once per session with the flags each
group of tests needs, plus the signing keys of the RS256/ES256 hub.

The processes are those of ``tests/integration``; a failing test's report carries the
tail of every hub log (the hook of ``tests/conftest.py``).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.procs import RedisServer
from tests.security.helpers import ADMIN_TOKEN, SECRET, SecureHub
from tests.support.reports import register_log

_RUNNING: list[SecureHub] = []
# The test being set up, so that a hub started for it lands in its report too.
_CURRENT: list[pytest.FixtureRequest] = []

# The operator settings the "ops" hub runs with.
RATE_MESSAGES = 10
RATE_BYTES = 6000
MAX_MESSAGE_BYTES = 3000
ALLOWED_ORIGINS = ("https://app.example.com", "https://admin.example.com")
CUSTOM_TYPE = "myapp.bus.CustomMessage"
CUSTOM_PREFIX = "myapp.types."
MAX_CONNECTIONS = 2
ACCEPT_RATE = 5


def _track(hub: SecureHub) -> None:
    _RUNNING.append(hub)
    if _CURRENT:
        register_log(_CURRENT[-1], f"{hub.name} log", hub.log_path)


def _start(factory: pytest.TempPathFactory, name: str, *flags: str) -> SecureHub:
    hub = SecureHub(name, factory.mktemp(name) / f"hub-{name}.log", *flags)
    hub.start()
    _track(hub)
    return hub


def _stop(hub: SecureHub) -> None:
    hub.stop()
    _RUNNING.remove(hub)


@pytest.fixture(autouse=True)
def _hub_logs_in_reports(request: pytest.FixtureRequest) -> Iterator[None]:
    for hub in _RUNNING:
        register_log(request, f"{hub.name} log", hub.log_path)
    _CURRENT.append(request)
    yield
    _CURRENT.remove(request)


@pytest.fixture(scope="session")
def auth_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureHub]:
    """HS256 auth, an admin token, and debug logging (the most a log can show)."""
    hub = _start(
        tmp_path_factory,
        "auth",
        *("--jwt-secret", SECRET, "--jwt-leeway", "5"),
        *("--admin-token", ADMIN_TOKEN, "--log-level", "debug"),
    )
    yield hub
    _stop(hub)


@dataclass(frozen=True)
class Keys:
    """PEM private keys for signing; the hub lists ``rsa`` and ``ec`` only."""

    rsa: bytes
    ec: bytes
    unlisted: bytes
    rsa_public: bytes


def _pem_pair(private: Any) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization as s

    priv = private.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    pub = private.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)
    return priv, pub


@pytest.fixture(scope="session")
def keys_and_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Keys, list[Path]]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    rsa_priv, rsa_pub = _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ec_priv, ec_pub = _pem_pair(ec.generate_private_key(ec.SECP256R1()))
    unlisted_priv, _ = _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    folder = tmp_path_factory.mktemp("keys")
    paths = [folder / "a.pem", folder / "b.pem"]
    paths[0].write_bytes(rsa_pub)
    paths[1].write_bytes(ec_pub)
    return Keys(rsa_priv, ec_priv, unlisted_priv, rsa_pub), paths


@pytest.fixture(scope="session")
def keys(keys_and_paths: tuple[Keys, list[Path]]) -> Keys:
    return keys_and_paths[0]


@pytest.fixture(scope="session")
def keys_hub(
    tmp_path_factory: pytest.TempPathFactory, keys_and_paths: tuple[Keys, list[Path]]
) -> Iterator[SecureHub]:
    """RS256/ES256 auth with two public keys listed, as during a rotation."""
    _, paths = keys_and_paths
    hub = _start(tmp_path_factory, "keys", "--jwt-public-keys", ",".join(str(p) for p in paths))
    yield hub
    _stop(hub)


@pytest.fixture(scope="session")
def ops_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureHub]:
    """Auth off (loopback), small limits, an Origin allowlist and one custom type."""
    hub = _start(
        tmp_path_factory,
        "ops",
        *("--rate-messages", str(RATE_MESSAGES), "--rate-bytes", str(RATE_BYTES)),
        *("--max-message-bytes", str(MAX_MESSAGE_BYTES)),
        *("--allowed-origins", ",".join(ALLOWED_ORIGINS)),
        *("--allow-types", CUSTOM_TYPE, "--allow-type-prefixes", CUSTOM_PREFIX),
    )
    yield hub
    _stop(hub)


@pytest.fixture(scope="session")
def cap_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureHub]:
    """A node that takes at most ``MAX_CONNECTIONS`` sockets."""
    hub = _start(tmp_path_factory, "cap", "--max-connections", str(MAX_CONNECTIONS))
    yield hub
    _stop(hub)


@pytest.fixture
def rate_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureHub]:
    """A node that takes at most ``ACCEPT_RATE`` handshakes per second."""
    hub = _start(tmp_path_factory, "rate", "--accept-rate", str(ACCEPT_RATE))
    yield hub
    _stop(hub)


@pytest.fixture(scope="session")
def auth_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SecureHub]]:
    """Two HS256 nodes sharing one Redis, as deployed behind a load balancer."""
    folder = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(folder / "redis.log")
    redis.start()
    hubs = [
        SecureHub(f"c{i}", folder / f"hub-c{i}.log", "--jwt-secret", SECRET, redis_url=redis.url)
        for i in (1, 2)
    ]
    try:
        for hub in hubs:
            hub.spawn()
        for hub in hubs:
            hub.wait_ready()
            _track(hub)
        yield hubs
    finally:
        for hub in hubs:
            hub.stop()
            if hub in _RUNNING:
                _RUNNING.remove(hub)
        redis.stop()
