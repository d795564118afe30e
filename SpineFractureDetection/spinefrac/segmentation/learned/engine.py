"""Learned vertebra segmentation on MONAI: model packages, GPU/CPU sliding-window inference.

Network: MONAI SegResNet. It is the network of MONAI's own CT work (Auto3DSeg's default for CT,
the wholeBody_ct_segmentation bundle), memory-frugal for large 3-D patches, and has few
hyperparameters to get wrong; a package may name another MONAI network class and its arguments.

Inference, in order:
  1. resample the canonical CT to the model's spacing (linear; labels come back nearest);
  2. crop to the spine region: the dense-bone columns near the body's midline, plus a margin,
     so most of the body never runs through the network;
  3. clip/scale intensities as the manifest says
     (steps 1 and 3, and the way back in step 6, are preprocessing.py, shared with training);
  4. sliding-window inference with overlap and Gaussian blending, on CUDA with mixed precision
     when available, otherwise the CPU with all its threads;
  5. argmax, channel -> VerSe id through the manifest's label map; largest connected component
     per level; a cranio-caudal order check (labels must run in anatomical order, without gaps)
     whose violations are reported as notes;
  6. back onto the CT's canonical grid (nearest neighbour), as a VertebraSegmentation.

A model package is a folder with ``manifest.json`` and the weights file it names (sha256 in the
manifest, verified at every load). MONAI bundles (``configs/`` + ``models/model.pt``) are read
through an adapter that maps their channels to VerSe ids (see model_registry.py).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from spinefrac.errors import InputError
from spinefrac.io.filenames import MODEL_MANIFEST_FILE, MODEL_WEIGHTS_FILE
from spinefrac.io.images import CtVolume
from spinefrac.io.model_packages import require_torch, sha256_of
from spinefrac.levels import LEVEL_BY_ID, SACRUM, sort_craniocaudal
from spinefrac.progress import Progress, silent
from spinefrac.segmentation.base import LABEL_PIXEL_TYPE, LabelConvention, SegmentationEngine, VertebraSegmentation
from spinefrac.segmentation.learned.preprocessing import resample_labels, resample_to_model_spacing, scale_intensity

SEG_PACKAGE_FORMAT = "spinefrac-segmentation-model"
SEG_PACKAGE_FORMAT_VERSION = 1
ROI_BONE_HU = 200.0
ROI_MARGIN_MM = 25.0
ROI_HALF_WIDTH_MM = 90.0  # left-right and antero-posterior reach around the spine's column
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])  # MONAI's world (RAS) -> ITK's (LPS)


@dataclass
class SegmentationManifest:
    name: str
    version: str
    network: str  # a class in monai.networks.nets
    network_parameters: dict
    spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]  # sliding-window size, voxels (x, y, z)
    label_map: dict[str, int]  # output channel (as text) -> VerSe id
    intensity: dict = field(default_factory=lambda: {"hu_min": -1000.0, "hu_max": 2000.0})
    weights_file: str = MODEL_WEIGHTS_FILE
    # How the network sees a volume: "zyx-lps" (our canonical [k, j, i] arrays, what train-seg
    # produces) or "xyz-ras" (MONAI's LoadImage + Orientation("RAS"), what bundles expect).
    array_layout: str = "zyx-lps"
    weights_sha256: str = ""
    licence: str = ""
    training: dict = field(default_factory=dict)
    format: str = SEG_PACKAGE_FORMAT
    format_version: int = SEG_PACKAGE_FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, path: Path) -> "SegmentationManifest":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            manifest = cls(**data)
        except (OSError, ValueError, TypeError) as error:
            raise InputError(f"segmentation model manifest {path} is not valid ({error})") from None
        if manifest.format != SEG_PACKAGE_FORMAT or manifest.format_version != SEG_PACKAGE_FORMAT_VERSION:
            raise InputError(f"{path} is not a {SEG_PACKAGE_FORMAT} v{SEG_PACKAGE_FORMAT_VERSION} manifest")
        manifest.validate_labels(path)
        return manifest

    def validate_labels(self, where: Path | str) -> None:
        """Every output channel must map to a VerSe level: a model whose labels we cannot place
        would write wrong levels, so it is refused."""
        unknown = {channel: verse_id for channel, verse_id in self.label_map.items()
                   if int(verse_id) not in LEVEL_BY_ID or not str(channel).isdigit() or int(channel) == 0}
        if unknown or not self.label_map:
            raise InputError(
                f"segmentation model {where}: label map does not map to VerSe levels "
                f"({unknown or 'empty'}); channels 1..N must map to ids 1-26 or 28"
            )


def build_segmentation_network(manifest: SegmentationManifest):
    require_torch()
    import monai.networks.nets as nets

    network_class = getattr(nets, manifest.network, None)
    if network_class is None:
        raise InputError(f"segmentation model {manifest.name}: unknown MONAI network '{manifest.network}'")
    return network_class(**manifest.network_parameters)


class LearnedEngine(SegmentationEngine):
    """Vertebra labels from a verified model package, on CUDA when present, else the CPU."""

    def __init__(self, package: Path | str, device: str = "cpu", sw_batch_size: int = 2, overlap: float = 0.5):
        self.package = Path(package)
        manifest_path = self.package / MODEL_MANIFEST_FILE
        if not manifest_path.is_file():
            raise InputError(f"segmentation model package {self.package} lacks {MODEL_MANIFEST_FILE}")
        self.manifest = SegmentationManifest.read(manifest_path)
        weights = self.package / self.manifest.weights_file
        if not weights.is_file():
            raise InputError(f"segmentation model package {self.package} lacks {self.manifest.weights_file}")
        actual = sha256_of(weights)
        if actual != self.manifest.weights_sha256:
            raise InputError(f"segmentation weights {weights} do not match the manifest's checksum "
                             f"(sha256 {actual[:12]}... vs {self.manifest.weights_sha256[:12] or 'none'}...)")
        require_torch()
        import torch

        self.network = build_segmentation_network(self.manifest)
        try:
            self.network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except Exception as error:  # corrupt, truncated or foreign file: several torch error types
            raise InputError(f"segmentation weights {weights} cannot be loaded ({type(error).__name__})") from None
        self.device = device
        self.network = self.network.to(device).eval()
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.name = f"learned ({self.manifest.name} v{self.manifest.version})"
        self.timings_s: dict[str, float] = {}

    def segment(self, ct: CtVolume, progress: Progress = silent) -> VertebraSegmentation:
        started = time.perf_counter()
        progress(0.0, "resampling to the model's spacing")
        resampled = resample_to_model_spacing(ct.image, self.manifest.spacing_mm)
        self._tick("resample", started)
        hu = sitk.GetArrayViewFromImage(resampled)
        box = spine_box(hu, resampled.GetSpacing())
        progress(0.2, f"spine region {tuple(s.stop - s.start for s in box)[::-1]} voxels")
        crop = scale_intensity(hu[box], self.manifest.intensity)
        self._tick("roi", started)
        channels = self._infer(crop)
        self._tick("network", started)
        progress(0.8, "post-processing")
        labels_crop = np.argmax(channels, axis=0).astype(np.uint8)
        table = np.zeros(max(int(c) for c in self.manifest.label_map) + 1, dtype=np.uint8)
        for channel, verse_id in self.manifest.label_map.items():
            table[int(channel)] = int(verse_id)
        labels_crop = table[np.minimum(labels_crop, table.size - 1)]
        labels_crop, notes = keep_largest_components(labels_crop)
        full = np.zeros(hu.shape, dtype=np.uint8)
        full[box] = labels_crop
        label_image = sitk.GetImageFromArray(full)
        label_image.CopyInformation(resampled)
        back = resample_labels(label_image, ct.image)
        notes += order_violations(back)
        self._tick("postprocess", started)
        progress(1.0, f"{len(np.unique(full)) - 1} levels")
        return VertebraSegmentation(back, self.name, str(self.package), LabelConvention.VERSE, notes=notes)

    def _tick(self, stage: str, started: float) -> None:
        self.timings_s[stage] = time.perf_counter() - started - sum(self.timings_s.values())

    def _infer(self, crop: np.ndarray) -> np.ndarray:
        import torch
        from monai.inferers import sliding_window_inference

        ras = self.manifest.array_layout == "xyz-ras"
        # [z, y, x] LPS -> [x, y, z] RAS: transpose, then flip x (L->R) and y (P->A).
        array = np.ascontiguousarray(crop.transpose(2, 1, 0)[::-1, ::-1]) if ras else crop
        patch = self.manifest.patch_size if ras else self.manifest.patch_size[::-1]  # manifest patch: x, y, z
        volume = torch.from_numpy(array)[None, None].to(self.device)
        with torch.no_grad(), torch.autocast(device_type="cuda", enabled=self.device == "cuda"):
            logits = sliding_window_inference(volume, roi_size=tuple(int(p) for p in patch),
                                              sw_batch_size=self.sw_batch_size, predictor=self.network,
                                              overlap=self.overlap, mode="gaussian")
        channels = logits[0].float().cpu().numpy()
        return np.ascontiguousarray(channels[:, ::-1, ::-1].transpose(0, 3, 2, 1)) if ras else channels


def spine_box(hu: np.ndarray, spacing_xyz) -> tuple[slice, slice, slice]:
    """[k, j, i] box around the spine: the column of dense bone nearest the midline, whole height."""
    spacing_zyx = np.asarray(spacing_xyz, dtype=float)[::-1]
    bone = hu > ROI_BONE_HU
    if not bone.any():
        raise InputError("no bone above 200 HU in the CT: no spine to segment")
    column = bone.sum(axis=0)  # [j, i] bone voxels per column
    j_centre, i_centre = ndimage.center_of_mass(column >= np.percentile(column[column > 0], 90))
    reach = np.round(ROI_HALF_WIDTH_MM / spacing_zyx[1:]).astype(int)
    margin = int(round(ROI_MARGIN_MM / spacing_zyx[0]))
    k = np.nonzero(bone.any(axis=(1, 2)))[0]
    shape = hu.shape
    return (slice(max(int(k.min()) - margin, 0), min(int(k.max()) + margin + 1, shape[0])),
            slice(max(int(j_centre) - reach[0], 0), min(int(j_centre) + reach[0] + 1, shape[1])),
            slice(max(int(i_centre) - reach[1], 0), min(int(i_centre) + reach[1] + 1, shape[2])))


def predict_from_file(ct: CtVolume, predict, prefix: str) -> np.ndarray:
    """Run ``predict(path)`` on the CT written as NIfTI: MONAI's loaders read files, so bundles and
    Auto3DSeg models get the CT on its own grid (in a temporary folder, removed afterwards)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=prefix) as work:
        image_path = Path(work) / "ct.nii"  # uncompressed: gzip would cost ~20 s each way on a 512 x 512 x 500 CT
        sitk.WriteImage(ct.image, str(image_path))
        return predict(image_path)


def label_values(values: np.ndarray) -> np.ndarray:
    """Predicted label values in the smallest integer type that holds them (uint8 for up to 255
    classes): a full-resolution int64 copy of a 512 x 512 x 500 CT alone is 1 GiB."""
    return values.astype(np.uint8 if values.max(initial=0) < 256 else np.int32, copy=False)


def verse_lookup(verse_id_of: dict[int, int]) -> np.ndarray:
    """Label value -> VerSe id as a uint8 table (values it does not name are background)."""
    lookup = np.zeros(max(verse_id_of, default=0) + 1, dtype=np.uint8)
    lookup[list(verse_id_of)] = list(verse_id_of.values())
    return lookup


def to_verse_ids(values: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """Label values -> VerSe ids by table (uint8; values beyond the table are background)."""
    if values.max(initial=0) < lookup.size:
        return lookup[values]
    return np.where(values < lookup.size, lookup[np.minimum(values, lookup.size - 1)], 0).astype(np.uint8)


def verse_labels_on_ct_grid(values_xyz: np.ndarray, verse_id_of: dict[int, int], ct: CtVolume,
                            model: str) -> tuple[sitk.Image, list[str]]:
    """Predicted label values on the CT's grid as MONAI loads it ([x, y, z]) -> VerSe ids on the CT's
    grid (values missing from ``verse_id_of`` are background), each level's largest piece kept (notes
    on what was dropped); an empty result is refused."""
    verse_ids = to_verse_ids(values_xyz, verse_lookup(verse_id_of)).transpose(2, 1, 0)  # [x, y, z] -> [z, y, x]
    verse_ids, dropped = keep_largest_components(np.ascontiguousarray(verse_ids))
    image = sitk.GetImageFromArray(verse_ids)
    image.CopyInformation(ct.image)
    return refuse_empty(image, model), dropped


def refuse_empty(labels: sitk.Image, model: str) -> sitk.Image:
    """``labels`` as the label pixel type; a map without one vertebra voxel is refused."""
    if not sitk.GetArrayViewFromImage(labels).any():
        raise InputError(f"no spine found in the CT by {model}: no voxel of a vertebra label")
    return sitk.Cast(labels, LABEL_PIXEL_TYPE)


def keep_largest_components(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each level keeps its largest 26-connected piece; stray islands are dropped and counted."""
    pieces, level_of_piece = level_pieces(labels)
    cleaned, dropped = keep_largest_pieces(pieces, level_of_piece)
    return cleaned, dropped_note(dropped)


def dropped_note(dropped_voxels: int) -> list[str]:
    if not dropped_voxels:
        return []
    return [f"{dropped_voxels} voxels in islands apart from their level's main piece were dropped"]


def level_pieces(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 26-connected pieces of every level, numbered across levels (int32, 0 = background), in
    raster order within a level; and the level of each piece number (index 0: background)."""
    pieces = np.zeros(labels.shape, dtype=np.int32)
    level_of_piece = [0]
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == value
        components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        np.add(components, len(level_of_piece) - 1, out=components, where=mask)
        np.copyto(pieces[box], components, where=mask)
        level_of_piece += [value] * count
    return pieces, np.asarray(level_of_piece, dtype=labels.dtype)


def keep_largest_pieces(pieces: np.ndarray, level_of_piece: np.ndarray) -> tuple[np.ndarray, int]:
    """Level ids where a piece is its level's largest (by voxels of ``pieces``; the first in number
    order on a tie), background elsewhere; and the number of voxels dropped."""
    sizes = np.bincount(pieces.ravel(), minlength=level_of_piece.size)
    sizes[0] = 0
    kept = np.zeros(level_of_piece.size, dtype=level_of_piece.dtype)
    for level in np.unique(level_of_piece[1:]):
        numbers = np.flatnonzero(level_of_piece == level)
        largest = numbers[np.argmax(sizes[numbers])]
        kept[largest] = level if sizes[largest] else 0
    return kept[pieces], int(sizes.sum() - sizes[kept > 0].sum())


def image_from_monai(array_xyz: np.ndarray, affine_ras) -> sitk.Image:
    """A MONAI array ([x, y, z]; its affine maps voxels to RAS millimetres, as MONAI's loaders give it)
    as a SimpleITK image (ITK's world is LPS: the first two world axes flip)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    affine_lps = RAS_TO_LPS @ np.asarray(affine_ras, dtype=float)[:3]
    spacing_mm = np.linalg.norm(affine_lps[:, :3], axis=0)
    image.SetOrigin(affine_lps[:, 3].tolist())
    image.SetSpacing(spacing_mm.tolist())
    image.SetDirection((affine_lps[:, :3] / spacing_mm).ravel().tolist())
    return image


def box_on_grid(reference: sitk.Image, affine_ras, shape_xyz) -> tuple[slice, slice, slice]:
    """The [z, y, x] box of ``reference`` covered by a grid whose voxels are some of its own (a crop of
    it, axes maybe flipped or swapped, as MONAI's Orientation and CropForeground leave it)."""
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape_xyz])), dtype=float)
    affine_lps = RAS_TO_LPS @ np.asarray(affine_ras, dtype=float)[:3]
    points = corners @ affine_lps[:, :3].T + affine_lps[:, 3]
    indices = np.array([reference.TransformPhysicalPointToIndex(point.tolist()) for point in points])
    low = np.maximum(indices.min(axis=0), 0)
    high = np.minimum(indices.max(axis=0) + 1, reference.GetSize())
    return tuple(slice(int(start), int(stop)) for start, stop in zip(low[::-1], high[::-1]))


def largest_pieces_on_grid(verse_ids_xyz: np.ndarray, affine_ras, reference: sitk.Image,
                           box: tuple[slice, slice, slice]) -> tuple[sitk.Image, list[str]]:
    """VerSe ids predicted on a model's grid (MONAI layout) -> on ``reference``'s grid inside ``box``
    (the region the model's input came from; background outside), each level's largest piece kept.

    The pieces are found on the model's grid (a 3 mm grid has 27 times fewer voxels than a 1 mm CT),
    laid out in ``reference``'s axis order so that pieces are numbered in its raster order (ties
    go the same way), and carried by nearest neighbour, extended past the model grid's last voxel
    centres as MONAI's inverse resampling does (border padding); their sizes are counted on
    ``reference``'s grid. Where that grid is as fine as the model's or finer, a piece stays one piece,
    so the result is what cleaning up on ``reference``'s grid after resampling the labels gives. (A
    voxel exactly halfway between two model voxel centres may go to either: MONAI's Invertd decides
    such ties by float32 rounding, ITK rounds half up.)"""
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(reference.GetDirection())
    aligned = sitk.DICOMOrient(image_from_monai(verse_ids_xyz, affine_ras), orientation)
    pieces, level_of_piece = level_pieces(sitk.GetArrayFromImage(aligned))
    pieces_image = sitk.GetImageFromArray(pieces)
    pieces_image.CopyInformation(aligned)
    resampler = sitk.ResampleImageFilter()  # onto the box only: fewer voxels to compute and hold
    resampler.SetOutputOrigin(reference.TransformIndexToPhysicalPoint([part.start for part in box[::-1]]))
    resampler.SetSize([part.stop - part.start for part in box[::-1]])
    resampler.SetOutputSpacing(reference.GetSpacing())
    resampler.SetOutputDirection(reference.GetDirection())
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    resampler.SetUseNearestNeighborExtrapolator(True)
    resampler.SetOutputPixelType(sitk.sitkInt32)
    resampled = resampler.Execute(pieces_image)
    labels = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    labels[box], dropped = keep_largest_pieces(sitk.GetArrayViewFromImage(resampled), level_of_piece)
    del resampled
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference)
    return image, dropped_note(dropped)


def order_violations(labels: sitk.Image) -> list[str]:
    """Levels must run cranio-caudally in label order without gaps; say where they do not."""
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.SetComputePerimeter(False)  # only centroids are needed: the perimeter is most of the time
    shape.Execute(labels)
    present = sort_craniocaudal(LEVEL_BY_ID[v] for v in shape.GetLabels() if v in LEVEL_BY_ID)
    notes = []
    heights = {level.name: shape.GetCentroid(level.verse_id)[2] for level in present}  # LPS z: superior
    for upper, lower in zip(present, present[1:]):
        if heights[upper.name] <= heights[lower.name]:
            notes.append(f"level order violated: {upper.name} lies below {lower.name}")
        gap = lower.craniocaudal_rank - upper.craniocaudal_rank
        transitional = upper.is_transitional or lower.is_transitional or lower is SACRUM
        if gap > 1 and not (transitional and gap == 2):
            notes.append(f"level gap: nothing labelled between {upper.name} and {lower.name}")
    return notes
