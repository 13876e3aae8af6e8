"""Settings: bad values stop ``bushub serve`` with a message naming the option;
``BUSHUB_*`` variables take effect; a flag beats its variable."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.integration.procs import ROOT, TIMEOUT
from tests.operations.conftest import OpsCluster
from tests.operations.ops import ws_connect
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``bushub serve`` expecting it to stop by itself (bad settings)."""
    return subprocess.run(
        [sys.executable, "-m", "bushub", "serve", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "option"),
    [
        (["--port", "-1"], {}, "port"),
        (["--presence-ttl", "0"], {}, "presence-ttl"),
        (["--log-format", "xml"], {}, "log-format"),
        ([], {"BUSHUB_PEER_GRACE": "-2"}, "peer-grace"),
        ([], {"BUSHUB_DRAIN_TIMEOUT": "soon"}, "drain-timeout"),
        (["--backlog", "0"], {}, "backlog"),
        (["--backlog", "4294967296"], {}, "backlog"),
        # NaN passes every bound (it compares false): the node hung at start-up at
        # full CPU, deaf to SIGTERM. An infinity or a time of 1e300 s overflow later.
        (["--presence-ttl", "nan"], {}, "presence-ttl: nan is not a finite number"),
        ([], {"BUSHUB_KEEPALIVE": "inf"}, "keepalive: inf is not a finite number"),
        (["--rate-messages", "nan"], {}, "rate-messages: nan is not a finite number"),
        (["--drain-timeout", "1e300"], {}, "drain-timeout: 1e+300 s is over"),
        # redis-py raised a traceback (exit 1) for the first two, and ran the last two
        # on localhost:6379 and on database 0.
        (["--redis-url", "redis://127.0.0.1:99999/0"], {}, "redis-url: port"),
        (["--redis-url", "redis://127.0.0.1:abc/0"], {}, "redis-url: port"),
        (["--redis-url", "redis://:@/0"], {}, "redis-url: no host"),
        (["--redis-url", "redis://127.0.0.1:6390/abc"], {}, "redis-url: database 'abc'"),
        (["--redis-url", "redis+cluster://127.0.0.1:7000,127.0.0.1:x"], {}, "redis-url: port"),
        # A query parameter redis-py cannot read or does not take ended the start in a
        # traceback (exit 1, or 3 for one the connection refused), and a TLS file that
        # is not there left the node waiting for ever, "No such file or directory"
        # read as Redis out of reach.
        (["--redis-url", "redis://127.0.0.1:6390/0?db=x"], {}, "redis-url: Invalid value for 'db'"),
        (["--redis-url", "unix:///tmp/r.sock?socket_timeout=abc"], {}, "redis-url: Invalid"),
        (["--redis-url", "redis://127.0.0.1:6390/0?ssl_cert_reqs=none"], {}, "'ssl_cert_reqs'"),
        (
            ["--redis-url", "rediss://127.0.0.1:6390/0?ssl_cert_reqs=bogus"],
            {},
            "redis-url: Invalid",
        ),
        (["--redis-url", "rediss://127.0.0.1:6390/0?ssl_ca_certs=/no/ca.pem"], {}, "ssl_ca_certs"),
        (["--redis-url", "redis+cluster://127.0.0.1:7000/?socket_timeout=x"], {}, "redis-url: In"),
        # Started, then refused every token.
        (["--jwt-public-keys", __file__], {}, "holds no RSA or EC public key"),
    ],
)
def test_bad_value_stops_the_node_naming_the_option(
    args: list[str], env: dict[str, str], option: str
) -> None:
    result = serve("--port", "0", *args, env=env)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert option in last, result.stderr
    assert last.startswith("bushub serve: error: "), result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr


async def test_environment_variables_take_effect_and_flags_win(ops: OpsCluster) -> None:
    env = {
        "BUSHUB_NODE_ID": "from-env",
        "BUSHUB_ADMIN_TOKEN": "env-token",
        "BUSHUB_LOG_FORMAT": "json",
        "BUSHUB_MAX_MESSAGE_BYTES": "2048",
    }
    # Node 1: settings from the environment only (no --node-id, --admin-token flags).
    from_env = ops.node(None, redis=False, env=env, flags={"--admin-token": None}, label="env")
    # Node 2: the same environment, overridden by flags.
    flags = {"--node-id": "from-flag", "--admin-token": "flag-token", "--log-format": "text"}
    from_flags = ops.node(None, redis=False, env=env, flags=flags, label="flags")
    from_env.wait_ready()
    from_flags.wait_ready()

    assert from_env.get_json("/healthz")["node"] == "from-env"
    assert from_flags.get_json("/healthz")["node"] == "from-flag"
    assert from_env.get("/agents", "env-token")[0] == 200
    assert from_env.get("/agents", "flag-token")[0] == 401
    assert from_flags.get("/agents", "flag-token")[0] == 200
    assert from_flags.get("/agents", "env-token")[0] == 401

    # BUSHUB_MAX_MESSAGE_BYTES took effect: a 3 kB frame is dropped as oversize.
    ws = await ws_connect(from_env.ws_url("a", peer="b", format="json"))
    await ws.send(b'{"__type__":"pipecat_subagents.bus.messages.BusDataMessage",' + b" " * 3000)
    await ws.close()
    assert wait_until(
        lambda: from_env.metrics().value("bushub_messages_dropped_total", reason="oversize") == 1
    )

    # BUSHUB_LOG_FORMAT=json: every line the node wrote is one JSON object; the flag
    # --log-format text beat it on the other node.
    assert wait_until(lambda: "close agent=a" in from_env.log_text())
    lines = [ln for ln in from_env.log_text().splitlines() if ln and not ln.startswith("=====")]
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) and {"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any(r["msg"].startswith("open agent=a peer=b") for r in records)
    assert any(r["level"] == "warning" and "in-process broker" in r["msg"] for r in records)
    text_lines = [ln for ln in from_flags.log_text().splitlines() if " INFO " in ln]
    assert text_lines and not text_lines[0].startswith("{")


def test_a_node_says_it_serves_only_once_its_port_is_bound(ops: OpsCluster) -> None:
    # The broker's start came first, then uvicorn's bind: a port in use failed a node
    # whose log had already said "serving on".
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve("--port", str(port), "--node-id", "late")
    assert result.returncode != 0
    assert "address already in use" in result.stderr, result.stderr
    assert "serving on" not in result.stderr, result.stderr

    node = ops.node("bound", redis=False)
    node.wait_ready()
    text = node.log_text()
    assert wait_until(lambda: "node bound serving on in-process" in node.log_text()), text
    text = node.log_text()
    assert text.index("Uvicorn running on") < text.index("node bound serving on"), text
