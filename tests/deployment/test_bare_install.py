"""The package as the image installs it: ``pip install .``, no extras.

The test suite's venv holds the test extras, which hid that the node could not start
without them: the key check at start-up imports PyJWT's RSA and EC algorithms, which
need ``cryptography``, then only a test extra. The Docker image (``pip install .``),
and so compose and Kubernetes, crash-looped at import. Here a fresh venv gets the
package alone, and a node from it starts and serves, as does ``bushub token``.
"""

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.procs import ROOT, TIMEOUT
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def test_a_plain_install_serves(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=TIMEOUT * 6)
    install = subprocess.run(
        [str(venv / "bin/pip"), "install", "--quiet", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 30,
    )
    assert install.returncode == 0, install.stderr
    bushub = str(venv / "bin/bushub")

    token = subprocess.run(
        [bushub, "token", "--secret", "s" * 32, "--agent", "a"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert token.returncode == 0, token.stderr
    assert token.stdout.strip().count(".") == 2

    port = free_port()
    log = tmp_path / "node.log"
    with log.open("w") as out:
        node = subprocess.Popen(
            [bushub, "serve", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert node.poll() is None, f"the node exited {node.returncode}:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
    finally:
        node.terminate()
        node.wait(TIMEOUT)
