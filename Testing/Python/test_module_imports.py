"""The Slicer module's files compile, and every name they import from the module's own code
(``SpineFractureDetectionLib``, ``spinefrac``) exists there. The widget, the Qt timer and the
self-test run only inside 3D Slicer: this is what a machine without Slicer can check of them."""

import ast
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "SpineFractureDetection"
SLICER_FILES = [MODULE_DIR / "SpineFractureDetection.py", *sorted((MODULE_DIR / "SpineFractureDetectionLib").glob("*.py"))]
OWN_PACKAGES = ("SpineFractureDetectionLib", "spinefrac")


def _module_path(dotted: str) -> Path | None:
    base = MODULE_DIR.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


@pytest.mark.parametrize("path", SLICER_FILES, ids=lambda path: path.name)
def test_slicer_module_file_compiles_and_its_own_imports_resolve(path):
    source = path.read_text(encoding="utf-8")
    compile(source, str(path), "exec")
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(OWN_PACKAGES)):
            continue
        target = _module_path(node.module)
        assert target is not None, f"{path.name}: no module {node.module}"
        for alias in node.names:
            submodule = _module_path(f"{node.module}.{alias.name}")
            assert alias.name in _top_level_names(target) or submodule is not None, (
                f"{path.name}: {node.module} has no {alias.name}")
