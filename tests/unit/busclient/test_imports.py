"""Each busclient serializer imports only its own library.

Run in fresh interpreters: ``sys.modules`` of the test process already holds both
libraries.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

# Prints, as JSON, the modules an import statement adds on top of a baseline import.
_PROBE = """
import json, sys, warnings
warnings.simplefilter("ignore")
{blocker}
{baseline}
before = set(sys.modules)
{statement}
print(json.dumps(sorted(set(sys.modules) - before)))
"""

# Makes a package unimportable, as if it were not installed.
_BLOCK = """
import importlib, importlib.abc

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {name!r} or name.startswith({name!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Block())
try:
    importlib.import_module({name!r})
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the blocker let {name} through")
"""


def added_modules(statement: str, baseline: str = "", blocked: str | None = None) -> list[str]:
    """Modules that ``statement`` imports beyond ``baseline``, in a fresh interpreter."""
    code = _PROBE.format(
        blocker=textwrap.dedent(_BLOCK.format(name=blocked)) if blocked else "",
        baseline=baseline,
        statement=statement,
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    added: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return added


def test_subagents_serializer_adds_nothing_pipecat_subagents_does_not_import() -> None:
    added = added_modules(
        "import busclient.subagents",
        baseline="import pipecat_subagents.bus.serializers",
    )
    assert added, "the probe saw no import at all"
    extra = [m for m in added if not m.startswith(("busclient", "msgpack"))]
    assert extra == []
    assert "busclient.pipecat_core" not in added


def test_subagents_serializer_needs_no_pipecat_bus() -> None:
    """pipecat_subagents does not use pipecat.bus, so neither may busclient.subagents."""
    added = added_modules(
        """
from busclient.subagents import MsgPackMessageSerializer
from pipecat_subagents.bus.messages import BusTaskRequestMessage
m = BusTaskRequestMessage(source="a", target="b", task_id="t", payload={"x": b"1"})
s = MsgPackMessageSerializer()
assert s.deserialize(s.serialize(m)).payload == {"x": b"1"}
""",
        blocked="pipecat.bus",
    )
    assert not any(m == "pipecat.bus" or m.startswith("pipecat.bus.") for m in added)


def test_pipecat_core_serializer_does_not_import_pipecat_subagents() -> None:
    added = added_modules("import busclient.pipecat_core")
    assert "busclient.pipecat_core" in added
    assert [m for m in added if m.startswith("pipecat_subagents")] == []
    assert "busclient.subagents" not in added


def test_pipecat_core_serializer_works_without_pipecat_subagents_installed() -> None:
    added = added_modules(
        """
from busclient.pipecat_core import MsgPackMessageSerializer
from pipecat.bus.messages import BusJobRequestMessage
m = BusJobRequestMessage(source="a", target="b", job_id="j", payload={"x": b"1"})
s = MsgPackMessageSerializer()
assert s.deserialize(s.serialize(m)).payload == {"x": b"1"}
""",
        blocked="pipecat_subagents",
    )
    assert "busclient.pipecat_core" in added
