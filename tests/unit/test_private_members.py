"""No module reaches into another's private members.

A name with a leading underscore belongs to the module that defines it: other
modules use a part through its public face, so that a part can change inside
without breaking its neighbours (and a benchmark measures what production runs).
The check reads the source: ``x._name`` is allowed on ``self``, ``cls`` and
``super()`` (a class and its bases share their protected members), and elsewhere
only where the same module defines ``_name`` itself (a method, a class attribute,
an assignment such as ``self._name = ...``, or an override calling its base's
version by name).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("services", "libs", "bench")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_here(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return names


def _own_object(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


def reaches_into_others(source: str) -> list[tuple[int, str]]:
    """``(line, expression)`` for each private member used but not defined here."""
    tree = ast.parse(source)
    own = _defined_here(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        if node.attr not in own and not _own_object(node.value):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_check_sees_a_reach_and_allows_what_a_module_owns() -> None:
    source = (
        "class A:\n"
        "    def __init__(self, other):\n"
        "        self._mine = 1\n"
        "        other._theirs()\n"
        "        print(other._mine, self.__dict__, self._base, super()._base())\n"
    )
    assert reaches_into_others(source) == [(4, "other._theirs")]


def test_no_module_reaches_into_anothers_private_members() -> None:
    reaches = []
    for top in CHECKED:
        for path in sorted((ROOT / top).rglob("*.py")):
            for line, expression in reaches_into_others(path.read_text()):
                reaches.append(f"{path.relative_to(ROOT)}:{line}: {expression}")
    assert reaches == []
