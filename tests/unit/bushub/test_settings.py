"""Settings (docs/protocol.md, Operating): every option is a ``bushub serve`` flag and a
``BUSHUB_*`` variable; a flag wins over the variable, and a bad value is refused
with a message naming the option."""

import argparse
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from bushub.settings import (
    WORKERS_PER_CPU,
    Settings,
    SettingsError,
    add_arguments,
    cpu_count,
    load_settings,
)
from tests.unit.bushub.helpers import TIMEOUT

SUBPROCESS_TIMEOUT = 10 * TIMEOUT


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_var(name: str) -> str:
    return "BUSHUB_" + name.upper()


def clean_env() -> dict[str, str]:
    """This process's environment without any BUSHUB_* variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BUSHUB_")}


def test_flags_and_environment_with_flag_winning() -> None:
    args = parse("--port", "9000", "--peer-grace", "1.5", "--redis-url", "redis://flag:1/0")
    env = {
        "BUSHUB_PORT": "7000",
        "BUSHUB_PRESENCE_TTL": "3",
        "BUSHUB_NODE_ID": "n7",
        "BUSHUB_REDIS_URL": "redis://env:1/0",
        "BUSHUB_QUEUE_BYTES": "2097152",
    }
    settings = load_settings(args, env)
    assert settings.port == 9000  # flag over variable
    assert settings.redis_url == "redis://flag:1/0"
    assert settings.peer_grace == 1.5  # flag only
    assert settings.presence_ttl == 3.0  # variable only
    assert settings.node_id == "n7"
    assert settings.queue_bytes == 2 << 20
    assert isinstance(settings.port, int)
    assert isinstance(settings.presence_ttl, float)
    defaults = Settings()
    assert settings.takeover_timeout == defaults.takeover_timeout
    assert settings.max_message_bytes == defaults.max_message_bytes


def test_environment_alone_and_defaults() -> None:
    settings = load_settings(None, {"BUSHUB_DRAIN_TIMEOUT": "2.5"})
    assert settings.drain_timeout == 2.5
    assert settings.redis_url == ""  # single node on the in-process broker
    assert load_settings(None, {}).port == Settings().port


@pytest.mark.parametrize(
    ("variable", "value", "option"),
    [
        ("BUSHUB_PORT", "eighty", "port"),
        ("BUSHUB_PORT", "70000", "port"),
        ("BUSHUB_PRESENCE_TTL", "0", "presence-ttl"),
        ("BUSHUB_PEER_GRACE", "-1", "peer-grace"),
        ("BUSHUB_TAKEOVER_TIMEOUT", "soon", "takeover-timeout"),
        ("BUSHUB_DRAIN_TIMEOUT", "0", "drain-timeout"),
        ("BUSHUB_MAX_MESSAGE_BYTES", "0", "max-message-bytes"),
        ("BUSHUB_QUEUE_BYTES", "1024", "queue-bytes"),  # below max-message-bytes
        ("BUSHUB_PUBLISH_BUFFER", "0", "publish-buffer"),
        ("BUSHUB_BYTES_PER_CONTAINER", "0", "bytes-per-container"),
        ("BUSHUB_REDIS_URL", "http://localhost:6379", "redis-url"),
        ("BUSHUB_LOG_LEVEL", "loud", "log-level"),
        ("BUSHUB_NODE_ID", "two words", "node-id"),
        ("BUSHUB_HANDSHAKE_TIMEOUT", "0", "handshake-timeout"),
        ("BUSHUB_MAX_HEADER_BYTES", "512", "max-header-bytes"),  # below one real request
        ("BUSHUB_WORKERS", "0", "workers"),
        ("BUSHUB_WORKERS", "many", "workers"),
        ("BUSHUB_WORKERS", "2", "workers"),  # no --redis-url: the workers could not meet
        ("BUSHUB_ALLOWED_ORIGINS", "app.example.com", "allowed-origins"),  # no scheme
        ("BUSHUB_ALLOWED_ORIGINS", "https://a.example/app", "allowed-origins"),  # a path
        ("BUSHUB_ALLOWED_ORIGINS", "https://a.example:99999", "allowed-origins"),
        ("BUSHUB_ADMIN_TOKEN", "two words", "admin-token"),
        ("BUSHUB_ADMIN_TOKEN", "tab\there", "admin-token"),
        ("BUSHUB_ADMIN_TOKEN", "   ", "admin-token"),  # the API silently off before
        ("BUSHUB_ADMIN_TOKEN", "p\u00e4ssw\u00f6rd-0123456789", "admin-token"),  # never matched
        ("BUSHUB_JWT_SECRET", "   ", "jwt-secret"),  # tokens signed with blanks let in before
        ("BUSHUB_ALLOWED_ORIGINS", "null", "allowed-origins"),
        ("BUSHUB_FORWARDED_ALLOW_IPS", "nginx", "forwarded-allow-ips"),  # a name
        ("BUSHUB_FORWARDED_ALLOW_IPS", "10.0.0.0/33", "forwarded-allow-ips"),
        # uvicorn would read these as names, trusting nobody (or less than asked).
        ("BUSHUB_FORWARDED_ALLOW_IPS", "10.0.0.5/8", "forwarded-allow-ips"),
        ("BUSHUB_FORWARDED_ALLOW_IPS", "*,10.0.0.1", "forwarded-allow-ips"),
    ],
)
def test_bad_value_is_refused_naming_the_option(variable: str, value: str, option: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(None, {variable: value})
    assert str(refused.value).startswith(f"{option}:")


def test_an_admin_token_read_from_a_file_loses_its_newline() -> None:
    # A secret mounted from a file ends with one; clients never send it.
    assert load_settings(None, {"BUSHUB_ADMIN_TOKEN": "s3cret-token\n"}).admin_token == (
        "s3cret-token"
    )
    assert Settings(admin_token="  s3cret-token\r\n").admin_token == "s3cret-token"


def test_workers_auto_is_the_cpu_count() -> None:
    url = {"BUSHUB_REDIS_URL": "redis://127.0.0.1:1/0"}
    assert load_settings(parse("--workers", "auto"), url).workers == cpu_count()
    assert load_settings(None, {**url, "BUSHUB_WORKERS": "AUTO"}).workers == cpu_count()
    assert load_settings(None, {}).workers == 1  # one process, as before workers existed


def test_workers_past_four_per_cpu_are_refused() -> None:
    url = {"BUSHUB_REDIS_URL": "redis://127.0.0.1:1/0"}
    most = WORKERS_PER_CPU * cpu_count()
    assert load_settings(parse("--workers", str(most)), url).workers == most
    with pytest.raises(SettingsError, match=r"^workers: .* more than 4 per CPU"):
        load_settings(parse("--workers", str(most + 1)), url)


def test_bad_flag_is_refused_naming_the_option() -> None:
    with pytest.raises(SettingsError, match=r"^presence-ttl:"):
        load_settings(parse("--presence-ttl", "0"), {"BUSHUB_PRESENCE_TTL": "5"})


def test_a_count_that_is_not_whole_is_refused_as_such() -> None:
    # "'1.5' is not a number" said of a number.
    with pytest.raises(SettingsError, match=r"^workers: '1.5' is not a whole number$"):
        load_settings(parse("--workers", "1.5"), {"BUSHUB_REDIS_URL": "redis://127.0.0.1:1/0"})
    with pytest.raises(SettingsError, match=r"^presence-ttl: 'soon' is not a number$"):
        load_settings(parse("--presence-ttl", "soon"), {})


def test_serve_with_a_bad_value_exits_naming_the_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bushub", "serve", "--peer-grace", "0"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert "peer-grace" in result.stderr


def test_serve_help_lists_every_setting_with_its_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bushub", "serve", "--help"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=SUBPROCESS_TIMEOUT,
        check=True,
    )
    missing = [
        f.name
        for f in fields(Settings)
        if flag(f.name) not in result.stdout or env_var(f.name) not in result.stdout
    ]
    assert not missing, f"not in `bushub serve --help`: {missing}\n{result.stdout}"


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_a_private_key_given_as_a_public_one_is_refused(kind: str, tmp_path: Path) -> None:
    """PyJWT loads it, and then every RS256/ES256 token's check failed with an error
    that is not a token's: each such handshake (valid or not) answered 500. Its
    public half is taken."""
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    key_file, public_file = tmp_path / "key.pem", tmp_path / "public.pem"
    key_file.write_bytes(private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public_file.write_bytes(
        private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SettingsError, match=r"jwt-public-keys: .* holds a private key"):
        load_settings(None, {"BUSHUB_JWT_PUBLIC_KEYS": str(key_file)})
    assert load_settings(None, {"BUSHUB_JWT_PUBLIC_KEYS": str(public_file)}).jwt_public_keys
