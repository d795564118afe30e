"""Python packages installed into a running 3D Slicer without swapping one under Slicer's loaded modules
(no Qt; tested on plain Python).

pip replaces a package on disk while the old version stays imported: Slicer 5.10 imports its bundled
pydicom 2.4.4 at start-up (its DICOM plugins), and installing highdicom 0.28.2 (which needs
pydicom >= 3.0.1) upgraded pydicom under it: ``import highdicom`` then failed until a restart, after which
Slicer's own DICOM code ran on a pydicom it was not shipped with. So every install here pins the packages
Slicer has loaded to their loaded versions (pip then installs beside them or refuses), and DICOM export
is offered only where highdicom can run with the pydicom this Slicer ships (5.12 bundles highdicom).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

HIGHDICOM_REQUIREMENT = "highdicom==0.28.2"
PYDICOM_NEEDED = (3, 0, 1)  # highdicom 0.28.2's metadata: pydicom>=3.0.1
# Packages Slicer bundles and its own modules import: an install may add beside them, never replace them.
KEPT_AS_LOADED = {"numpy": "numpy", "scipy": "scipy", "pydicom": "pydicom", "PIL": "pillow", "SimpleITK": "SimpleITK"}


@dataclass(frozen=True)
class InstallPlan:
    """``ready``: the package imports now. Otherwise ``install`` holds the pip arguments that may be
    installed safely (empty when none may), and ``message`` says why or what the install does."""

    ready: bool
    install: list[str] = field(default_factory=list)
    message: str = ""


def version_tuple(version: str) -> tuple[int, ...]:
    numbers = []
    for part in version.split(".")[:3]:
        digits = "".join(character for character in part if character.isdigit())
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers)


def pins_for_loaded(modules=None, version_of: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """``name==version`` for each package of KEPT_AS_LOADED that is imported now, so that pip never
    replaces it (it installs around it, or fails with the conflict)."""
    modules = sys.modules if modules is None else modules
    pins = []
    for module, distribution in KEPT_AS_LOADED.items():
        if module in modules:
            try:
                pins.append(f"{distribution}=={version_of(distribution)}")
            except importlib.metadata.PackageNotFoundError:
                continue  # bundled without package metadata: nothing pip would replace
    return pins


def _import_highdicom() -> None:
    importlib.import_module("highdicom")


def highdicom_plan(import_highdicom: Callable[[], None] = _import_highdicom,
                   version_of: Callable[[str], str] = importlib.metadata.version, modules=None) -> InstallPlan:
    """Whether DICOM export can run in this Slicer, and what (if anything) may be installed for it."""
    try:
        import_highdicom()
        return InstallPlan(True)
    except ImportError as error:
        failure = error
    pydicom = _version_or_none("pydicom", version_of)
    highdicom = _version_or_none("highdicom", version_of)
    if highdicom is not None:  # on disk but not loading: a pydicom changed under the running Slicer
        return InstallPlan(False, message=(
            f"highdicom {highdicom} is installed but does not load with the pydicom {pydicom} this Slicer runs "
            f"({failure}). Restart Slicer; nothing is installed over the packages Slicer has loaded"))
    if pydicom is not None and version_tuple(pydicom) < PYDICOM_NEEDED:
        return InstallPlan(False, message=(
            f"DICOM export needs {HIGHDICOM_REQUIREMENT}, which needs pydicom "
            f"{'.'.join(map(str, PYDICOM_NEEDED))} or later; this Slicer ships pydicom {pydicom} for its own DICOM "
            "module, which replacing it would break. Use 3D Slicer 5.12 or later (it bundles highdicom), or write "
            "the SEG and SR with 'spinefrac run CT --dicom-series FOLDER' from the command line"))
    return InstallPlan(False, [HIGHDICOM_REQUIREMENT, *pins_for_loaded(modules, version_of)], message=(
        f"DICOM export needs the Python package {HIGHDICOM_REQUIREMENT}; it is installed beside the packages "
        "Slicer has loaded, which stay at their versions"))


def _version_or_none(distribution: str, version_of: Callable[[str], str]) -> str | None:
    try:
        return version_of(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def after_install(plan_now: InstallPlan) -> None:
    """After pip: the package must load in this session; if it does not, the way out is a restart."""
    if not plan_now.ready:
        raise RuntimeError(f"the installed packages do not load in this session: restart Slicer and export again "
                           f"({plan_now.message})")
