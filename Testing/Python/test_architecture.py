"""The core's layout: stage subpackages whose dependencies point one way, no private names used
across modules, small files, and a README layout section that matches the tree.

Ranks (a module may import its own subpackage, lower ranks and the conventions at rank 0; the
conventions may import each other, and so may the application modules):
  0 conventions  levels, coordinates, hounsfield, errors, progress, device
  1 io
  2 segmentation (its offline and learned engines do not import each other)
  3 assessment
  4 reporting, synthetic
  5 evaluation, training
  6 the application: pipeline, cli, batch, batch_dask, __main__
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "SpineFractureDetection"
CORE = MODULE_DIR / "spinefrac"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60

CONVENTIONS = {"levels", "coordinates", "hounsfield", "errors", "progress", "device", "__init__"}
APPLICATION = {"pipeline", "cli", "batch", "batch_dask", "__main__"}
STAGE_RANKS = {"io": 1, "segmentation": 2, "assessment": 3, "reporting": 4, "synthetic": 4, "evaluation": 5,
               "training": 5}
INDEPENDENT_ENGINES = {"spinefrac.segmentation.offline", "spinefrac.segmentation.learned"}


def _python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts and ".egg-info" not in str(p))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(MODULE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def rank(module: str) -> int:
    """The stage rank of a ``spinefrac...`` module name."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the package itself (__version__)
    if parts[1] in STAGE_RANKS:
        return STAGE_RANKS[parts[1]]
    if parts[1] in CONVENTIONS:
        return 0
    if parts[1] in APPLICATION:
        return 6
    raise AssertionError(f"{module}: not in a stage subpackage, the conventions or the application")


def _stage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def imported_modules(tree: ast.AST, importer: str) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every spinefrac import, relative ones resolved, function-level ones too."""
    found = []
    package = importer if importer.count(".") == 0 else importer.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names if alias.name.split(".")[0] == "spinefrac"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            if module.split(".")[0] == "spinefrac":
                found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def direction_violations(source: str, importer: str) -> list[str]:
    """Imports of ``importer`` (a spinefrac module name) that point against the stage direction."""
    problems = []
    own_rank, own_stage = rank(importer), _stage(importer)
    for line, module, _ in imported_modules(ast.parse(source), importer):
        target_rank = rank(module)
        same_stage = _stage(module) == own_stage
        if target_rank > own_rank or (target_rank == own_rank and not same_stage and own_rank not in (0, 6)):
            problems.append(f"{importer}:{line} imports {module} (rank {target_rank} into rank {own_rank})")
        for engine in INDEPENDENT_ENGINES:
            other = INDEPENDENT_ENGINES - {engine}
            if importer.startswith(engine) and any(module.startswith(o) for o in other):
                problems.append(f"{importer}:{line} imports {module}: the two engines are independent")
    return problems


def private_name_uses(source: str, importer: str) -> list[str]:
    """Private (underscore) names of another spinefrac module: imported by name, or read as
    ``module._name`` through an imported module."""
    tree = ast.parse(source)
    problems, module_aliases = [], set()
    for line, module, names in imported_modules(tree, importer):
        if module == importer:
            continue
        for name in names:
            if name.startswith("_") and not name.startswith("__"):
                problems.append(f"{importer}:{line} imports the private {module}.{name}")
            elif (CORE.parent / Path(*f"{module}.{name}".split("."))).with_suffix(".py").is_file():
                module_aliases.add(name)
    for node in ast.walk(tree):
        if isinstance(node, ast.alias) and node.asname and node.name.startswith("spinefrac."):
            module_aliases.add(node.asname)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            problems.append(f"{importer}:{node.lineno} uses the private {node.value.id}.{node.attr}")
    return problems


CORE_FILES = _python_files(CORE)
SLICER_FILES = [MODULE_DIR / "SpineFractureDetection.py", *_python_files(MODULE_DIR / "SpineFractureDetectionLib")]
ALL_PROJECT_FILES = CORE_FILES + SLICER_FILES + _python_files(REPO / "Testing") + _python_files(REPO / "benchmarks")


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.relative_to(CORE).as_posix())
def test_core_imports_follow_the_stage_direction(path):
    assert direction_violations(path.read_text(encoding="utf-8"), _module_name(path)) == []


@pytest.mark.parametrize("path", CORE_FILES + SLICER_FILES, ids=lambda p: p.relative_to(MODULE_DIR).as_posix())
def test_no_private_name_of_another_module_is_used(path):
    importer = _module_name(path) if path.is_relative_to(CORE) else "slicer_module"
    assert private_name_uses(path.read_text(encoding="utf-8"), importer) == []


def test_the_checks_catch_what_they_are_for():
    # A stage importing a later stage, two rank-4 stages importing each other, the engines mixing,
    # and private names imported or read through a module: each must be reported.
    assert direction_violations("from spinefrac.reporting.report import SpineReport", "spinefrac.assessment.x")
    assert direction_violations("def f():\n    from ..pipeline import run_pipeline", "spinefrac.io.images")
    assert direction_violations("from spinefrac.synthetic.phantom import make_phantom", "spinefrac.reporting.x")
    assert direction_violations("from spinefrac.segmentation.learned.engine import LearnedEngine",
                                "spinefrac.segmentation.offline.engine")
    assert not direction_violations("from spinefrac.io.images import CtVolume\nfrom spinefrac.levels import LEVELS",
                                    "spinefrac.assessment.x")
    assert private_name_uses("from spinefrac.io.images import _helper", "spinefrac.assessment.x")
    assert private_name_uses("from spinefrac.segmentation.offline import engine\nengine._private()",
                             "spinefrac.pipeline")
    assert not private_name_uses("from spinefrac import __version__", "spinefrac.cli")


@pytest.mark.parametrize("path", ALL_PROJECT_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_file_over_600_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_FILE_LINES


@pytest.mark.parametrize("path", CORE_FILES + SLICER_FILES, ids=lambda p: p.relative_to(MODULE_DIR).as_posix())
def test_no_function_over_60_lines(path):
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def _readme_layout() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"## Repository layout\n\n```\n(.*?)```", text, re.S)
    assert match, "README has a 'Repository layout' section with the tree in a code block"
    return match.group(1)


def test_readme_layout_names_every_core_module_and_nothing_else():
    layout = _readme_layout()
    listed = set(re.findall(r"\b([a-z0-9_]+\.py)\b", layout)) | set(re.findall(r"\b([a-z0-9_]+)/", layout))
    on_disk = {p.name for p in CORE_FILES if p.name != "__init__.py"}
    folders = {p.name for p in CORE.rglob("*") if p.is_dir() and "__pycache__" not in p.parts}
    assert on_disk - listed == set(), "modules missing from README's layout"
    assert folders - listed == set(), "subpackages missing from README's layout"
    named_modules = set(re.findall(r"\b([a-z0-9_]+\.py)\b", layout)) - {"SpineFractureDetection.py"}
    every_file = {p.name for p in _python_files(REPO) if ".venv" not in p.parts}
    assert named_modules - every_file == set(), "README's layout names files that do not exist"
