"""The hub works on the oldest uvicorn its pyproject.toml admits.

The direct data path (``bushub.wsprotocol``) subclasses uvicorn's sans-I/O WebSocket
protocol and uses parts of it that are not public API, so the declared lower bound is
a claim that only a run on that release can back. ``make test`` installs that release
beside the venv (``.venv/uvicorn-floor``); this test reruns, with it first on the path,
the hub's unit tests that serve real sockets through that protocol and are about the
socket itself (framing, flow control, closing, the fallback path, bad input): the ones
about presence, takeover or the operator API go through the same protocol code and
would only repeat it at a minute of the suite's time.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOOR_DIR = ROOT / ".venv" / "uvicorn-floor"
HUB_UNIT_TESTS = ROOT / "tests" / "unit" / "bushub"
SOCKET_TESTS = (
    "test_wsprotocol.py",
    "test_fallback_path.py",
    "test_backpressure.py",
    "test_read_backpressure.py",
    "test_close_accounting.py",
    "test_bad_input.py",
    "test_routing.py",
    "test_formats.py",
    "test_params.py",
    "test_paths.py",
    "test_complexity.py",
    "test_metrics.py",
)


def declared_floor() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'"uvicorn\[standard\]>=([0-9.]+)"', text)
    assert match, "pyproject.toml no longer declares a uvicorn lower bound"
    return match.group(1)


def _run(code: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FLOOR_DIR), str(ROOT)])}
    return subprocess.run(
        [sys.executable, *code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_hub_unit_tests_pass_on_the_declared_uvicorn_floor() -> None:
    floor = declared_floor()
    assert FLOOR_DIR.is_dir(), "run `make test`: it installs the uvicorn floor"
    seen = _run(["-c", "import uvicorn; print(uvicorn.__version__)"], 60)
    assert seen.stdout.strip() == floor, seen.stdout + seen.stderr
    tests = [str(HUB_UNIT_TESTS / name) for name in SOCKET_TESTS]
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], 600)
    tail = "\n".join(result.stdout.splitlines()[-30:])
    assert result.returncode == 0, f"hub unit tests on uvicorn {floor}:\n{tail}{result.stderr}"
    assert re.search(r"\d+ passed", tail), tail
