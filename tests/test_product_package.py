"""The product package holds product code only: no fault-injection hooks (tests inject from the outside, see
tests/faults), and no module that only tests use (those live in tests/support)."""

from __future__ import annotations

import ast
from pathlib import Path

import sftforge

PACKAGE = Path(sftforge.__file__).parent
ENTRY_POINTS = ("sftforge.cli", "sftforge.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def reexports(package: str) -> dict[str, str]:
    """name → the module it comes from, for the names a package's __init__ imports (`from a.b import name`)."""
    path = FILES.get(package)
    if path is None or path.name != "__init__.py":
        return {}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {a.asname or a.name: n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module
            for a in n.names}  # fmt: skip


def defining_module(package: str, name: str) -> str:
    """Where `from package import name` really comes from: a submodule, a re-export followed to its source, or
    the module itself."""
    if f"{package}.{name}" in FILES:
        return f"{package}.{name}"
    source = reexports(package).get(name)
    return defining_module(source, name) if source in FILES else package


def uses(path: Path) -> set[str]:
    """The sftforge modules a file takes something from (imports at any depth: most are local to a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module in FILES:
            found |= {defining_module(node.module, a.name) for a in node.names}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]:
                while name and name not in FILES:  # a.b.c → a.b: the module part of a dotted name
                    name = name.rpartition(".")[0]
                found |= {name} if name else set()
    return found


def used_from(entry_points: tuple[str, ...]) -> set[str]:
    """Modules whose code the entry points use, transitively. A package's __init__ only re-exports: its own imports
    are not followed (a module it re-exports but nothing takes from counts as unused)."""
    reached, todo = set(), list(entry_points)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            if FILES[name].name != "__init__.py":
                todo += uses(FILES[name]) - reached
    return reached


def test_no_fault_injection_hooks_in_the_product():
    hooks = ("SFTFORGE_FAULT", "sftforge_faults", "fault_env")
    found = [
        f"{path.relative_to(PACKAGE)}: {hook}"
        for path in PACKAGE.rglob("*.py")
        for hook in hooks
        if hook in path.read_text(encoding="utf-8")
    ]
    assert found == []


def test_every_module_under_sftforge_testing_serves_a_command():
    """sftforge.testing builds tiny models and tokenizers for `init-model`, `train-tokenizer` and the demo. A
    module there that no command uses is test-only code and belongs under tests/support."""
    testing = {name for name in FILES if name.startswith("sftforge.testing.")}
    assert sorted(testing - used_from(ENTRY_POINTS)) == []


def test_the_reachability_walk_sees_through_a_package_reexport():
    """What the check above rests on: `from sftforge.testing import build_tiny_model` (the demo) reaches the module
    that defines it, not everything the package's __init__ imports."""
    assert defining_module("sftforge.testing", "build_tiny_model") == "sftforge.testing.tiny"
    assert "sftforge.testing.tiny" in uses(FILES["sftforge.demo"])
