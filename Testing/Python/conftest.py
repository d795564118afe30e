"""Shared fixtures: real data (bundled sample, ../shared when present) and phantoms."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "SpineFractureDetection"))  # the core, also when not pip-installed
sys.path.insert(0, str(Path(__file__).resolve().parent))  # spine_test_utils

from spinefrac.synthetic.phantom import Fracture, PhantomSpec, make_phantom  # noqa: E402

SAMPLE_DIR = REPO / "SpineFractureDetection" / "Resources" / "SampleData"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def sample_ct() -> Path:
    """The bundled real CT (TotalSegmentator example, 3 mm, T11-sacrum)."""
    return SAMPLE_DIR / "ts-example-ct.nii.gz"


@pytest.fixture(scope="session")
def sample_labels() -> Path:
    return SAMPLE_DIR / "ts-example-vertebrae.nii.gz"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout (only CI and developer machines have it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lumbar_phantom():
    """Small lumbar phantom, 2 mm voxels, one wedge fracture: shared by fast tests."""
    return make_phantom(PhantomSpec(
        levels=("T12", "L1", "L2", "L3", "L4", "L5", "sacrum"), spacing_mm=(2.0, 2.0, 2.0),
        fractures={"L2": Fracture("wedge", 0.3)}, ribs=True, seed=1,
    ))
