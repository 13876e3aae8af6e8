"""The benchmark report, rendered from fixed outputs, against golden files.

The golden files were written by the report code as it stood before it was split into
sections; any change to them is a change to what the report says. After an intended
change, rewrite them with ``python -m tests.unit.busbench.test_report`` and read the diff.
"""

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from busbench import report

from tests.unit.busbench.bench_outputs import SCENARIOS

GOLDEN = Path(__file__).parent / "golden"


def rendered(name: str) -> tuple[str, str]:
    """(Markdown report, summary JSON) as ``bushub-bench --json`` produces them."""
    out: dict[str, Any] = SCENARIOS[name]()
    out["summary"] = report.summarise(out)
    return report.markdown(out), json.dumps(out["summary"], indent=1, default=str) + "\n"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_markdown_matches_golden(name: str) -> None:
    text, _ = rendered(name)
    assert text == (GOLDEN / f"{name}.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_summary_matches_golden(name: str) -> None:
    _, summary = rendered(name)
    assert summary == (GOLDEN / f"{name}.summary.json").read_text(encoding="utf-8")


def test_a_storm_on_a_node_of_several_workers_says_all_of_them_were_killed() -> None:
    out: dict[str, Any] = SCENARIOS["storm_only"]()
    out["storm"][0]["doomed_workers"] = 2
    out["summary"] = report.summarise(out)
    assert "Node 1 (2 worker processes: `--workers 2`) then gets SIGKILL, its supervisor" in (
        report.markdown(out)
    )


def write_golden() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for name in sorted(SCENARIOS):
        text, summary = rendered(name)
        (GOLDEN / f"{name}.md").write_text(text, encoding="utf-8")
        (GOLDEN / f"{name}.summary.json").write_text(summary, encoding="utf-8")
        print(f"wrote {name}", file=sys.stderr)


if __name__ == "__main__":
    write_golden()
