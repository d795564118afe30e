"""Finding the cases of a spine CT data set on disk, for evaluation and training alike.

Layouts recognised (image files: .nii.gz, .nii, .nrrd, .mha):

VerSe (2019/2020, BIDS-like)
    rawdata/sub-X/[ses-*/]sub-X[_entities]_ct.nii.gz
    derivatives/sub-X/[ses-*/]sub-X[_entities]_seg-vert_msk.nii.gz
    derivatives/sub-X/[ses-*/]sub-X[_entities]_seg-subreg_ctd.json   (centroids, optional)
    Files are paired by their name up to the suffix (all BIDS entities, e.g. ``sub-gl003_dir-ax``)
    wherever they lie below the root, so flat copies of VerSe files are read too.
Pairs in one folder
    NAME_ct.nii.gz + NAME_seg.nii.gz   (optional NAME_ctd.json)
Image and label subfolders
    images/NAME.nii.gz + labels/NAME.nii.gz, or nnU-Net's imagesTr/NAME_0000.nii.gz +
    labelsTr/NAME.nii.gz (the _0000 channel suffix is dropped); optional labels/NAME_ctd.json

Every CT must have a label map. A label map without a CT is an error unless the data set is
read with ``require_ct=False`` (masks-only releases, evaluation of segmentations alone).

VerSe centroid files (``*_ctd.json``) are a JSON list: an optional first entry
``{"direction": ["P", "I", "R"]}`` (the patient direction each voxel axis X, Y, Z points to),
then ``{"label": VerSe id, "X": .., "Y": .., "Z": ..}`` in voxel units of the label map
re-oriented to that direction. Without a direction entry the label map's own axes are used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.images import IMAGE_SUFFIX_PATTERN, ImageGrid
from spinefrac.levels import LEVEL_BY_ID

_VERSE_CT = re.compile(rf"^(?P<key>.+)_ct{IMAGE_SUFFIX_PATTERN}$", re.IGNORECASE)
_VERSE_MASK = re.compile(rf"^(?P<key>.+)_seg-vert_msk{IMAGE_SUFFIX_PATTERN}$", re.IGNORECASE)
_VERSE_CENTROIDS = re.compile(r"^(?P<key>.+?)(?:_seg-[a-z]+)?_ctd\.json$", re.IGNORECASE)
_PAIR_CT = _VERSE_CT
_PAIR_LABELS = re.compile(rf"^(?P<key>.+)_seg{IMAGE_SUFFIX_PATTERN}$", re.IGNORECASE)
_IMAGE_FILE = re.compile(rf"^(?P<key>.+?){IMAGE_SUFFIX_PATTERN}$", re.IGNORECASE)
_NNUNET_CHANNEL = re.compile(r"_0000$")

IMAGE_FOLDERS = ("images", "imagesTr")
LABEL_FOLDERS = ("labels", "labelsTr")

_OPPOSITE_DIRECTION = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_NAMES_IN_MESSAGES = 5  # a one-line error names this many cases, then counts the rest


@dataclass(frozen=True)
class SpineCase:
    """One case of a data set: its CT, its vertebra label map and, when given, its centroids."""

    name: str
    ct_path: Path | None  # None only for masks-only data read with require_ct=False
    label_path: Path
    centroids_path: Path | None = None


@dataclass(frozen=True)
class VerseCentroids:
    """The content of a VerSe centroid file, still in voxel units."""

    axis_codes: str | None  # e.g. "PIR": the patient direction of X, Y, Z; None: the image's own axes
    voxel_xyz: dict[int, tuple[float, float, float]]  # VerSe id -> (X, Y, Z)

    def physical_lps_mm(self, grid: ImageGrid) -> dict[int, tuple[float, float, float]]:
        """Centroids in patient coordinates (LPS mm) on the grid of the case's label map."""
        if not self.voxel_xyz:
            return {}
        axis_of_code, flipped = _axis_mapping(self.axis_codes or grid.orientation, grid.orientation)
        labels = list(self.voxel_xyz)
        xyz = np.array([self.voxel_xyz[label] for label in labels], dtype=float)
        index = np.empty_like(xyz)
        size = np.asarray(grid.size, dtype=float)
        for code_axis, image_axis in enumerate(axis_of_code):
            values = xyz[:, code_axis]
            # DICOMOrient flips an axis about its extent: index n-1-x on the original grid.
            index[:, image_axis] = size[image_axis] - 1 - values if flipped[code_axis] else values
        direction = np.asarray(grid.direction).reshape(3, 3)
        points = np.asarray(grid.origin_mm) + (index * np.asarray(grid.spacing_mm)) @ direction.T
        return {label: tuple(map(float, point)) for label, point in zip(labels, points)}


def _axis_mapping(codes: str, image_codes: str) -> tuple[list[int], list[bool]]:
    """For each centroid axis: the image axis it runs along, and whether it runs the other way."""
    axes, flipped = [], []
    for code in codes:
        if code in image_codes:
            axes.append(image_codes.index(code))
            flipped.append(False)
        elif _OPPOSITE_DIRECTION.get(code, "?") in image_codes:
            axes.append(image_codes.index(_OPPOSITE_DIRECTION[code]))
            flipped.append(True)
        else:
            raise InputError(f"centroid axis code '{code}' is not one of L, R, A, P, S, I")
    if sorted(axes) != [0, 1, 2]:
        raise InputError(f"centroid direction {codes} does not name three different axes")
    return axes, flipped


def read_verse_centroids(path: Path | str) -> VerseCentroids:
    """Parse a VerSe ``*_ctd.json`` file (see the module docstring for the format)."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(f"centroid file {path} cannot be read ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise InputError(f"centroid file {path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(entries, list):
        raise InputError(f"centroid file {path} is not a JSON list of centroids")
    axis_codes = None
    voxel_xyz: dict[int, tuple[float, float, float]] = {}
    for number, entry in enumerate(entries, start=1):
        if isinstance(entry, dict) and "direction" in entry:
            axis_codes = "".join(str(code).upper() for code in entry["direction"])
            if len(axis_codes) != 3:
                raise InputError(f"centroid file {path}: direction {entry['direction']} does not have three axes")
            continue
        label, xyz = _centroid_entry(entry, path, number)
        if label in voxel_xyz:
            raise InputError(f"centroid file {path} lists label {label} twice")
        voxel_xyz[label] = xyz
    return VerseCentroids(axis_codes, voxel_xyz)


def _centroid_entry(entry, path: Path, number: int) -> tuple[int, tuple[float, float, float]]:
    try:
        label = int(entry["label"])
        xyz = (float(entry["X"]), float(entry["Y"]), float(entry["Z"]))
    except (TypeError, KeyError, ValueError):
        raise InputError(f"centroid file {path}, entry {number}: expected label, X, Y, Z") from None
    if label not in LEVEL_BY_ID:
        raise InputError(f"centroid file {path}, entry {number}: {label} is not a VerSe vertebra label id")
    return label, xyz


def image_grid(path: Path | str) -> ImageGrid:
    """The grid of an image file from its header alone (the voxels are not read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"image {path} is not a readable image") from None
    if reader.GetDimension() != 3:
        raise InputError(f"image {path} is {reader.GetDimension()}-D; a 3-D volume is needed")
    return ImageGrid(
        tuple(int(s) for s in reader.GetSize()),
        tuple(float(s) for s in reader.GetSpacing()),
        tuple(float(o) for o in reader.GetOrigin()),
        tuple(float(d) for d in reader.GetDirection()),
    )


def case_centroids_lps_mm(case: SpineCase) -> dict[int, tuple[float, float, float]]:
    """The case's centroid file in patient coordinates (LPS mm); empty when it has none."""
    if case.centroids_path is None:
        return {}
    return read_verse_centroids(case.centroids_path).physical_lps_mm(image_grid(case.label_path))


# -- layouts ------------------------------------------------------------------------------


def read_dataset(root: Path | str, require_ct: bool = True) -> list[SpineCase]:
    """The cases of a data set in any of the layouts of the module docstring, sorted by name."""
    root = _existing_folder(root)
    if _subfolder(root, IMAGE_FOLDERS) or _subfolder(root, LABEL_FOLDERS):
        return read_image_label_folders(root, require_ct)
    if any(_VERSE_MASK.match(path.name) for path in _files_below(root)):
        return read_verse_layout(root, require_ct)
    if any(_PAIR_LABELS.match(path.name) for path in root.iterdir() if path.is_file()):
        return read_paired_folder(root, require_ct)
    raise InputError(
        f"no data set layout recognised in {root}: expected VerSe files (*_seg-vert_msk.nii.gz), "
        "images/ + labels/ folders, or NAME_ct.nii.gz + NAME_seg.nii.gz pairs"
    )


def read_verse_layout(root: Path | str, require_ct: bool = True) -> list[SpineCase]:
    """VerSe: CTs, masks and centroid files anywhere below ``root``, paired by name."""
    root = _existing_folder(root)
    files = _files_below(root)
    cts = _keyed(files, _VERSE_CT, root)
    masks = _keyed(files, _VERSE_MASK, root)
    centroids = _keyed(files, _VERSE_CENTROIDS, root)
    return _pair(root, cts, masks, centroids, require_ct)


def read_paired_folder(root: Path | str, require_ct: bool = True) -> list[SpineCase]:
    """One folder of NAME_ct + NAME_seg images (and optional NAME_ctd.json)."""
    root = _existing_folder(root)
    files = [path for path in root.iterdir() if path.is_file() and not path.name.startswith(".")]
    return _pair(root, _keyed(files, _PAIR_CT, root), _keyed(files, _PAIR_LABELS, root),
                 _keyed(files, _VERSE_CENTROIDS, root), require_ct)


def read_image_label_folders(root: Path | str, require_ct: bool = True) -> list[SpineCase]:
    """images/ (or imagesTr/) and labels/ (or labelsTr/) holding files of equal names."""
    root = _existing_folder(root)
    label_folder = _subfolder(root, LABEL_FOLDERS)
    if label_folder is None:
        raise InputError(f"data set {root} has an images folder but no labels folder ({' or '.join(LABEL_FOLDERS)})")
    image_folder = _subfolder(root, IMAGE_FOLDERS)
    image_files = _plain_files(image_folder) if image_folder else []
    label_files = _plain_files(label_folder)
    cts = {_NNUNET_CHANNEL.sub("", key): path for key, path in _keyed(image_files, _IMAGE_FILE, root).items()}
    return _pair(root, cts, _keyed(label_files, _IMAGE_FILE, root),
                 _keyed(label_files, _VERSE_CENTROIDS, root), require_ct)


# -- helpers ------------------------------------------------------------------------------


def _existing_folder(root: Path | str) -> Path:
    root = Path(root)
    if root.is_file():
        raise InputError(f"data set {root} is a file, not a folder (VerSe layout or CT + label map pairs)")
    if not root.is_dir():
        raise InputError(f"data set folder not found: {root}")
    return root


def _subfolder(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / name for name in names if (root / name).is_dir()), None)


def _plain_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))


def _files_below(root: Path) -> list[Path]:
    """Every file below root, hidden files and folders (.git, partial outputs) excluded."""
    return sorted(
        path for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def _keyed(files: list[Path], pattern: re.Pattern, root: Path) -> dict[str, Path]:
    """Case name -> file for the files whose name matches ``pattern``; a name twice is an error."""
    found: dict[str, Path] = {}
    for path in files:
        match = pattern.match(path.name)
        if not match:
            continue
        key = match.group("key")
        if key in found:
            raise InputError(f"data set {root} has two files for case {key}: {found[key]} and {path}")
        found[key] = path
    return found


def _pair(root: Path, cts: dict[str, Path], labels: dict[str, Path], centroids: dict[str, Path],
          require_ct: bool) -> list[SpineCase]:
    """Cases from files keyed by case name; unpaired files are reported, never dropped silently."""
    without_labels = sorted(cts.keys() - labels.keys())
    if without_labels:
        raise InputError(f"data set {root}: {_count_and_names(without_labels, 'CT')} without a label map")
    without_ct = sorted(labels.keys() - cts.keys())
    if without_ct and require_ct:
        raise InputError(
            f"data set {root}: {_count_and_names(without_ct, 'label map')} without a CT "
            "(read masks-only data with require_ct=False)"
        )
    stray_centroids = sorted(centroids.keys() - labels.keys())
    if stray_centroids:
        raise InputError(f"data set {root}: {_count_and_names(stray_centroids, 'centroid file')} without a label map")
    cases = [SpineCase(name, cts.get(name), labels[name], centroids.get(name)) for name in sorted(labels)]
    if not cases:
        raise InputError(f"data set {root} holds no label maps")
    return cases


def _count_and_names(names: list[str], what: str) -> str:
    shown = ", ".join(names[:_NAMES_IN_MESSAGES])
    more = f" and {len(names) - _NAMES_IN_MESSAGES} more" if len(names) > _NAMES_IN_MESSAGES else ""
    plural = "s" if len(names) > 1 else ""
    return f"{len(names)} {what}{plural} ({shown}{more})"
