"""Every reason the code can count a dropped frame under is exported from the start.

``bushub_messages_dropped_total{reason}`` is pre-registered at zero for each reason in
``DROP_REASONS`` so that dashboards and alerts see a reason before its first drop. The
reasons are counted in many places (``DecodeError`` raised across buswire, literal
labels in the hub, the publisher's callback), so the source is read here: any reason
a call site names must be a ``DropReason`` and be in ``DROP_REASONS``.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bushub.metrics import DROP_REASONS, Metrics
from buswire import DropReason

ROOT = Path(__file__).resolve().parents[3]
SOURCES = [
    *sorted((ROOT / "libs" / "buswire").glob("*.py")),
    *sorted((ROOT / "services" / "bushub").rglob("*.py")),
]
# Calls whose first argument is a drop reason.
_CALLEES = {"DecodeError", "labels", "_on_dropped", "_received_and_dropped"}


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _named_reasons(path: Path) -> Iterator[tuple[str, int, str]]:
    """(reason, line, how) for every reason named literally at a call site."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or _callee(node) not in _CALLEES or not node.args:
            continue
        if _callee(node) == "labels":
            owner = node.func.value if isinstance(node.func, ast.Attribute) else None
            if not (isinstance(owner, ast.Attribute) and owner.attr == "messages_dropped"):
                continue  # another counter's labels
        reason = node.args[-1] if _callee(node) == "_received_and_dropped" else node.args[0]
        if isinstance(reason, ast.Constant) and isinstance(reason.value, str):
            yield reason.value, node.lineno, "literal"
        elif (
            isinstance(reason, ast.Attribute)
            and isinstance(reason.value, ast.Name)
            and reason.value.id == "DropReason"
        ):
            member = DropReason.__members__.get(reason.attr)
            yield (member.value if member else f"DropReason.{reason.attr}"), node.lineno, "enum"


def test_the_scan_sees_the_call_sites() -> None:
    # A scan that finds nothing would pass anything: it must see the known ones.
    found = {reason for path in SOURCES for reason, _, _ in _named_reasons(path)}
    for reason in ("malformed", "bad_relay_frame", "bad_presence", "slow_consumer", "shutdown"):
        assert reason in found, reason


def test_every_reason_named_in_the_code_is_pre_registered() -> None:
    missing = [
        f"{path.relative_to(ROOT)}:{line}: {reason}"
        for path in SOURCES
        for reason, line, _ in _named_reasons(path)
        if reason not in DROP_REASONS or reason not in DropReason.__members__.values()
    ]
    assert missing == [], "add these to DropReason and metrics.DROP_REASONS"


def test_drop_reasons_and_the_enum_are_the_same_set() -> None:
    assert len(set(DROP_REASONS)) == len(DROP_REASONS), "a reason listed twice"
    assert set(DROP_REASONS) == {r.value for r in DropReason}


def test_metrics_export_every_reason_at_zero() -> None:
    text = Metrics().render().decode()
    exported = {
        sample.labels["reason"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "bushub_messages_dropped_total"
    }
    assert exported == {r.value for r in DropReason}
