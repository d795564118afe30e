"""slicer-core fixtures shared by the scene tests: a lumbar phantom (2 mm, no ribs), an empty MRML scene with the
segmentation converters registered, and the phantom's CT as a scalar volume node in it. Import them into a test
module that has already skipped without slicer-core (pytest.importorskip("slicer"))."""

import pytest
import slicer

from spinefrac.synthetic.phantom import PhantomSpec, make_phantom
from SpineFractureDetectionLib import mrml_logic


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomSpec(spacing_mm=(2.0, 2.0, 2.0), ribs=False, seed=4))


@pytest.fixture
def scene():
    mrml_logic.ensure_segmentation_converters()
    return slicer.vtkMRMLScene()


@pytest.fixture
def volume(scene, phantom):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Phantom CT")
    mrml_logic.update_volume_from_sitk(node, phantom.ct)
    return node
