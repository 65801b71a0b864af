"""The layering of PLATFORM.md: the platform never imports the reference services,
and interceptors depend on neither server nor clients."""

from __future__ import annotations

import ast

import pytest

from tests.support.net import ROOT


def imported_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("server", ("services",)),
        ("clients", ("services", "server")),
        ("interceptors", ("services", "server", "clients")),
        ("durable", ("services", "server", "clients")),
        ("codegen", ("services", "server", "clients", "interceptors")),
        ("gen", ("services", "server")),
    ],
)
def test_no_forbidden_imports(package: str, forbidden: tuple[str, ...]) -> None:
    offenders = {
        path: sorted(n for n in names if n.split(".")[0] in forbidden)
        for path, names in imported_modules(package).items()
    }
    assert {p: n for p, n in offenders.items() if n} == {}


def test_every_platform_module_has_a_docstring() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for package in (
            "server",
            "clients",
            "interceptors",
            "durable",
            "codegen",
            "services",
            "tools",
        )
        for path in (ROOT / package).rglob("*.py")
        if path.stat().st_size and ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert missing == []
