"""Packaging of the Slicer extension: CMake lists every file, metadata agrees everywhere,
the core stays free of Slicer/Qt, and the widget's UI names exist."""

import ast
import json
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "SpineFractureDetection"


def _cmake_list(text: str, variable: str) -> set[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, variable
    return {item.replace("${MODULE_NAME}", "SpineFractureDetection") for item in match.group(1).split()}


def _cmake_vars(text: str) -> dict[str, str]:
    return {name: value for name, value in re.findall(r'set\((EXTENSION_\w+)\s+"(.*?)"\)', text, re.S)}


def _s4ext() -> dict[str, str]:
    entries = {}
    for line in (REPO / "SpineFractureDetection.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            entries[key] = value.strip()
    return entries


def test_every_python_file_and_resource_is_listed_in_the_module_cmake():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = _cmake_list(cmake, "MODULE_PYTHON_SCRIPTS")
    resources = _cmake_list(cmake, "MODULE_PYTHON_RESOURCES")
    on_disk_py = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
                  if "__pycache__" not in p.parts and ".egg-info" not in str(p)}
    on_disk_resources = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*")
                         if p.is_file()}
    on_disk_resources |= {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "spinefrac").rglob("*")
                          if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts}
    assert scripts == on_disk_py
    assert resources == on_disk_resources


def test_s4ext_index_json_and_cmake_metadata_agree():
    cmake = _cmake_vars((REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    s4ext = _s4ext()
    index = json.loads((REPO / "SpineFractureDetection.json").read_text(encoding="utf-8"))
    assert cmake["EXTENSION_CATEGORY"] == s4ext["category"] == index["category"]
    assert cmake["EXTENSION_DEPENDS"].split() == s4ext["depends"].split() == index["build_dependencies"]
    assert "PyTorch" in index["build_dependencies"]
    assert cmake["EXTENSION_HOMEPAGE"] == s4ext["homepage"]
    assert cmake["EXTENSION_ICONURL"] == s4ext["iconurl"]
    assert cmake["EXTENSION_SCREENSHOTURLS"] == s4ext["screenshoturls"]
    assert cmake["EXTENSION_DESCRIPTION"] == s4ext["description"]
    assert index["scm_url"] == s4ext["scmurl"]
    assert index["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/")
    assert set(index) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled",
                          "scm_revision", "scm_type", "scm_url", "tier"}  # the schema forbids others
    # Icon and screenshot named in the URLs are in the repository.
    for url in (cmake["EXTENSION_ICONURL"], cmake["EXTENSION_SCREENSHOTURLS"]):
        assert (REPO / url.split("/main/", 1)[1]).is_file()


def _imported_top_level_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((MODULE_DIR / "spinefrac").rglob("*.py")),
                         ids=lambda p: p.relative_to(MODULE_DIR / "spinefrac").as_posix())
def test_the_core_never_imports_slicer_or_qt(path):
    assert not _imported_top_level_modules(path) & {"slicer", "qt", "ctk", "vtk", "PythonQt"}


def test_the_mrml_logic_imports_no_qt_and_no_scripted_module_base():
    path = MODULE_DIR / "SpineFractureDetectionLib" / "mrml_logic.py"
    assert not _imported_top_level_modules(path) & {"qt", "ctk", "PythonQt"}
    full_names = {node.module for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(node, ast.ImportFrom)}
    assert not any("ScriptedLoadableModule" in name for name in full_names if name)


def test_module_file_has_module_widget_logic_and_test_classes():
    tree = ast.parse((MODULE_DIR / "SpineFractureDetection.py").read_text(encoding="utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for suffix in ("", "Widget", "Logic", "Test"):
        assert f"SpineFractureDetection{suffix}" in classes
    test_methods = [n for n in classes["SpineFractureDetectionTest"].body if isinstance(n, ast.FunctionDef)]
    asserting = [m for m in test_methods if "self.assert" in ast.unparse(m)]
    assert asserting, "the self-test must assert"


def test_widget_names_and_parameters_exist_in_the_ui_file():
    source = (MODULE_DIR / "SpineFractureDetection.py").read_text(encoding="utf-8")
    ui = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "SpineFractureDetection.ui")
    widget_names = {w.get("name") for w in ui.iter("widget")}
    for used in set(re.findall(r"self\.ui\.(\w+)", source)):
        assert used in widget_names, used
    parameter_names = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    tree = ast.parse(source)
    parameter_class = next(node for node in tree.body
                           if isinstance(node, ast.ClassDef) and node.name == "SpineFractureDetectionParameterNode")
    declared = {field.target.id for field in parameter_class.body if isinstance(field, ast.AnnAssign)}
    assert parameter_names == declared


def test_sample_data_registered_with_the_checksums_of_the_shipped_files():
    import hashlib

    source = (MODULE_DIR / "SpineFractureDetection.py").read_text(encoding="utf-8")
    for name in ("ts-example-ct.nii.gz",):
        digest = hashlib.sha256((MODULE_DIR / "Resources" / "SampleData" / name).read_bytes()).hexdigest()
        assert f'("{name}",' in source and f"SHA256:{digest}" in source
