"""billing/ knows nothing of the OCPP side or HTTP: no module imports csms or api."""

from __future__ import annotations

import ast
from pathlib import Path

import billing

FORBIDDEN = ("csms", "api")


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_billing_imports_neither_csms_nor_api() -> None:
    root = Path(billing.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) >= 8
    offenders = [(f.name, name) for f in files for name in imported_modules(f)
                 if name.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_the_scan_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import csms.db\nfrom api import app\nfrom .local import y\n"
                      "def f():\n    import csms\n")
    assert imported_modules(sample) == ["csms.db", "api", "csms"]
