"""House rule: the breaker package never imports the CSMS (csms/) or its HTTP API (api/)."""

from __future__ import annotations

import ast
from pathlib import Path

import breaker

FORBIDDEN = ("csms", "api")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path`` (relative imports resolved to ``breaker``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            found.append((node.lineno, f"breaker.{module}" if node.level else module))
    return found


def test_breaker_does_not_import_csms_or_api() -> None:
    package = Path(breaker.__file__).parent
    files = sorted(package.rglob("*.py"))
    assert len(files) >= 8
    offending = [
        f"{path.relative_to(package.parent)}:{line}: {module}"
        for path in files
        for line, module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN
    ]
    assert offending == []


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import csms.app\nfrom api import x\nfrom . import y\n")
    assert imported_modules(sample) == [(1, "csms.app"), (2, "api"), (3, "breaker.")]
