"""What an operator sees: the public-address guard, ``/agents``, ``bushub token``, logs.

Nothing here binds a non-loopback address: the guard is checked on a process that must
exit at validation, and the accepted cases only through ``load_settings``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from websockets.asyncio.client import connect

from bushub.settings import SettingsError, add_arguments, load_settings
from tests.integration.procs import ROOT, TIMEOUT, free_port
from tests.security.conftest import Keys
from tests.security.helpers import (
    ADMIN_TOKEN,
    SECRET,
    Peer,
    SecureHub,
    assert_accepted,
    assert_refused,
    cli_token,
    refusal,
    token,
)

pytestmark = pytest.mark.integration


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--host", "0.0.0.0"], {}),
        (["--host", "::"], {}),
        ([], {"BUSHUB_HOST": "0.0.0.0"}),
    ],
    ids=["flag", "ipv6-any", "env"],
)
def test_serve_on_a_public_address_without_auth_exits_naming_insecure(
    argv: list[str], env: dict[str, str]
) -> None:
    cmd = [sys.executable, "-m", "bushub", "serve", "--port", str(free_port()), *argv]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BUSHUB_")}
    done = subprocess.run(
        cmd, cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode != 0
    assert "--insecure" in done.stderr
    assert "Uvicorn running" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--host", "0.0.0.0", "--insecure"],
        ["--host", "0.0.0.0", "--jwt-secret", SECRET],
        ["--host", "10.1.2.3", "--jwt-public-keys", "<a public key file>"],
        ["--host", "localhost"],
        ["--host", "127.0.0.2"],
        ["--host", "::1"],
    ],
)
def test_public_address_is_allowed_with_auth_or_insecure_and_loopback_always(
    argv: list[str], keys_and_paths: tuple[Keys, list[Path]]
) -> None:
    key_file = str(keys_and_paths[1][0])
    argv = [key_file if arg == "<a public key file>" else arg for arg in argv]
    # Validation only: with --insecure the process would really listen publicly.
    assert load_settings(_serve_args(*argv), env={}).host == argv[1]


@pytest.mark.parametrize("host", ["0.0.0.0", "", "example.com", "192.168.1.10", "::"])
def test_guard_refuses_non_loopback_hosts(host: str) -> None:
    with pytest.raises(SettingsError, match="--insecure"):
        load_settings(_serve_args("--host", host), env={})


# ---- /agents ------------------------------------------------------------------


def test_agents_is_off_without_an_admin_token(ops_hub: SecureHub) -> None:
    assert ops_hub.get("/agents")[0] == 403
    assert ops_hub.get("/agents", {"Authorization": "Bearer "})[0] == 403
    assert ops_hub.get("/agents", {"Authorization": f"Bearer {ADMIN_TOKEN}"})[0] == 403


async def test_agents_needs_the_admin_token(auth_hub: SecureHub) -> None:
    assert auth_hub.get("/agents")[0] == 401
    for wrong in (
        "Bearer nope",
        f"Bearer {ADMIN_TOKEN}x",
        f"Bearer {ADMIN_TOKEN[:-1]}",
        "Bearer ",
        f"Basic {ADMIN_TOKEN}",
        ADMIN_TOKEN,  # no scheme: not a bearer token
        f"Bearer {token('admin')}",  # an agent token is not the admin token
    ):
        status, body = auth_hub.get("/agents", {"Authorization": wrong})
        assert status == 401, wrong
        assert b"ad-alice" not in body

    alice = await Peer.connect(
        auth_hub, "ad-alice", token=token("ad-alice", ["ad-bob"]), peer="ad-bob"
    )
    try:
        for scheme in ("bearer", "BEARER"):  # its case does not matter (RFC 9110)
            status, _ = auth_hub.get("/agents", {"Authorization": f"{scheme} {ADMIN_TOKEN}"})
            assert status == 200, scheme
        status, body = auth_hub.get("/agents", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert status == 200
        rows = {row["agent"]: row for row in json.loads(body)["agents"]}
        assert rows["ad-alice"]["peer"] == "ad-bob"
        assert rows["ad-alice"]["node"] == auth_hub.node_id
    finally:
        await alice.close()


# ---- bushub token ---------------------------------------------------------------


async def test_token_command_prints_a_token_the_hub_accepts(auth_hub: SecureHub) -> None:
    printed = cli_token(
        *("--secret", SECRET, "--agent", "cli-*", "--targets", "cli-peer"),
        *("--targets", "cli-other", "--ttl", "60"),
    )
    claims = jwt.decode(printed, SECRET, algorithms=["HS256"])
    assert claims["agents"] == ["cli-*"]
    assert claims["targets"] == ["cli-peer", "cli-other"]
    assert abs(claims["exp"] - (time.time() + 60)) < 10
    # Under a second: it expired as it was issued (exp == iat), alive only by the leeway.
    brief = jwt.decode(
        cli_token("--secret", SECRET, "--agent", "cli-1", "--ttl", "0.1"),
        SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False},  # it may have lapsed by now
    )
    assert brief["exp"] > brief["iat"]

    await assert_accepted(auth_hub, "cli-1", token=printed, peer="cli-peer")
    await assert_refused(auth_hub, "other", 403, "agent_not_allowed", token=printed)
    await assert_refused(auth_hub, "cli-1", 403, "peer_not_allowed", token=printed, peer="x")
    # Signed with another secret: worthless here.
    foreign = cli_token("--secret", "x" * 40, "--agent", "cli-1")
    assert (await refusal(auth_hub, "cli-1", token=foreign))[0] == 401


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--secret", ""], "argument --secret: must not be empty"),
        (["--secret", SECRET, "--ttl", "0"], "argument --ttl: 0 s: a token must live a while"),
        (["--secret", SECRET, "--ttl", "-5"], "argument --ttl: -5 s"),
        (["--secret", SECRET, "--ttl", "nan"], "argument --ttl: nan s"),
        (["--secret", SECRET, "--ttl", "soon"], "argument --ttl: 'soon' is not a number"),
        (["--secret", SECRET, "--agent", ""], "argument --agent: must not be empty"),
        (["--secret", SECRET, "--targets", ""], "argument --targets: must not be empty"),
    ],
)
def test_token_command_refuses_what_makes_no_usable_token(argv: list[str], said: str) -> None:
    """An empty secret ended in PyJWT's traceback; a lifetime of 0 s or less printed a
    token expired already."""
    done = subprocess.run(
        [sys.executable, "-m", "bushub", "token", "--agent", "a", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert said in done.stderr.strip().splitlines()[-1], done.stderr
    assert "Traceback" not in done.stderr


# ---- logs -------------------------------------------------------------------------


async def test_query_tokens_never_appear_in_the_log(auth_hub: SecureHub) -> None:
    # The hub runs at --log-level debug, where uvicorn logs every request line.
    accepted = token("log-a", ["log-b"], nonce="accepted-q")
    refused = token("log-a", nonce="refused-q", key="a-different-secret-of-at-least-32-bytes")
    peer = await Peer.connect(auth_hub, "log-a", token=accepted, via="query", peer="log-b")
    await peer.close()
    assert (await refusal(auth_hub, "log-a", token=refused, via="query"))[0] == 401
    assert (await refusal(auth_hub, "log-x", token=accepted, via="query"))[0] == 403

    log = auth_hub.log_text()
    assert "token=REDACTED" in log  # the request lines are there, redacted
    for secret in (accepted, refused):
        payload, signature = secret.split(".")[1:]
        assert payload not in log and signature not in log


async def test_tokens_under_percent_encoded_names_never_appear_in_the_log(
    auth_hub: SecureHub,
) -> None:
    # ``?%74oken=`` is read as ``?token=``; uvicorn's request line was logged unredacted.
    accepted = token("log-e", nonce="encoded-q")
    async with connect(f"{auth_hub.url}/ws/log-e?%74oken={accepted}", proxy=None) as socket:
        await socket.close()
    payload, signature = accepted.split(".")[1:]
    log = auth_hub.log_text()
    assert "%74oken=REDACTED" in log
    assert payload not in log and signature not in log


async def test_a_refused_handshake_is_logged_once_a_long_name_shortened(
    auth_hub: SecureHub,
) -> None:
    """Before, a malformed name was logged twice in full (a 5,000-character name, twice)."""
    name = "x" * 5000
    await assert_refused(auth_hub, name, 403, "bad_parameters", token=token(name))
    lines = [line for line in auth_hub.log_text().splitlines() if "refused xxxx" in line]
    assert len(lines) == 1, lines
    assert "... (5000 characters): bad_parameters (agent name" in lines[0]
    assert len(lines[0]) < 1000


async def test_bearer_tokens_never_appear_in_the_log(auth_hub: SecureHub) -> None:
    accepted = token("log-c", nonce="accepted-h")
    refused = token("log-c", nonce="refused-h", key="a-different-secret-of-at-least-32-bytes")
    peer = await Peer.connect(auth_hub, "log-c", token=accepted)
    await peer.close()
    assert (await refusal(auth_hub, "log-c", token=refused))[0] == 401

    log = auth_hub.log_text()
    assert "GET /ws/log-c" in log  # the handshakes were logged
    leaked = [line for line in log.splitlines() if accepted in line or refused in line]
    assert not leaked, f"bearer token written to the log: {leaked[:2]}"
