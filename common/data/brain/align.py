"""ITK affine pre-alignment of a brain volume (T1 image or FreeSurfer label map) to the template.

ITK's v4 registration framework does the optimisation (Mattes mutual information, regular-step gradient
descent, physical-shift parameter scales, three-level pyramid). Two things are added around it:

* a moments initialisation computed here from brain masks (centres of mass + an isotropic scale from the
  volume ratio), because ITK's ``CenteredTransformInitializer`` sets no scale and costs seconds to load;
* label maps are registered through a deterministic pseudo-T1 image (each label painted with its T1 prior
  mean, extra-cerebral tissue removed, lightly blurred), so one code path serves images and label maps.

Resampling uses :func:`common.geometry.resample_array` (linear for images, nearest for labels)
with the 4x4 world matrix equivalent to the ITK transform.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from common.data.brain.labels import EXTRA_CEREBRAL_CODES, T1_PRIOR_CLASS, T1_PRIOR_MEANS
from common.data.brain.template import TEMPLATE_GRID_1MM, Grid
from common.geometry import resample_array
from common.io.convert import spacing_from_affine
from common.io.nifti import ImageReadError, read_nifti

__all__ = ["AlignResult", "affine_align", "label_pseudo_image", "itk_to_world_matrix", "load_volume"]

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class AlignResult:
    """Result of :func:`affine_align`.

    Attributes:
        transform: ``itk.AffineTransform[itk.D, 3]`` mapping template (fixed) points to moving points, LPS mm.
        world: the same map as a 4x4 matrix in RAS mm (nibabel world), template point -> moving point.
        grid: grid the outputs were resampled onto.
        image: moving image resampled onto ``grid`` (linear), or None.
        labels: moving label map resampled onto ``grid`` (nearest), or None.
        metric: final metric value (Mattes MI or mean squares; lower is better).
        seconds: wall time of the registration alone.
    """

    transform: Any
    world: np.ndarray
    grid: Grid
    image: np.ndarray | None
    labels: np.ndarray | None
    metric: float
    seconds: float


def load_volume(volume: Any, name: str, labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` from a path, a nibabel image or an ``(array, affine)`` tuple; 3D only.

    Raises:
        ImageReadError: unreadable file or wrong dimensionality (message names the file).
        TypeError: unsupported input type.
    """
    dtype = None if labels else np.float32
    if isinstance(volume, (str, os.PathLike)):
        return read_nifti(volume, ndim=3, dtype=dtype)
    if isinstance(volume, nib.spatialimages.SpatialImage):
        arr, aff = np.asanyarray(volume.dataobj), np.asarray(volume.affine, dtype=np.float64)
    elif isinstance(volume, tuple) and len(volume) == 2:
        arr, aff = np.asarray(volume[0]), np.asarray(volume[1], dtype=np.float64)
    else:
        raise TypeError(f"affine_align: `{name}` must be a path, nibabel image or (array, affine), got {type(volume)}.")
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if arr.ndim != 3 or aff.shape != (4, 4):
        raise ImageReadError(f"affine_align: `{name}` must be 3D with a 4x4 affine, got {arr.shape}, {aff.shape}.")
    return (arr if labels else arr.astype(np.float32)), aff


def label_pseudo_image(labels: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Deterministic T1-like image of a FreeSurfer label map: prior mean per label, extra-cerebral -> 0.

    Args:
        labels: integer FreeSurfer codes.
        sigma: Gaussian blur in voxels applied afterwards (softens label staircases).
    """
    codes = np.asarray(labels).astype(np.int64)
    lut = np.zeros(max(int(codes.max()), 1023) + 1, dtype=np.float32)
    for code, cls in T1_PRIOR_CLASS.items():
        lut[code] = T1_PRIOR_MEANS[0, cls] / 255.0
    lut[list(EXTRA_CEREBRAL_CODES)] = 0.0
    lut[0] = 0.0
    img = lut[codes]
    return ndimage.gaussian_filter(img, sigma) if sigma > 0 else img


def _to_itk(array: np.ndarray, affine: np.ndarray):
    import itk

    spacing = np.asarray(spacing_from_affine(affine, 3))
    direction = (_LPS[:3, :3] @ affine[:3, :3]) / spacing
    img = itk.image_from_array(np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in _LPS[:3, :3] @ affine[:3, 3]])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
    return img


def itk_to_world_matrix(transform: Any) -> np.ndarray:
    """4x4 RAS matrix of an ITK affine transform (which maps LPS points)."""
    m = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = m
    lps[:3, 3] = np.asarray(transform.GetOffset(), dtype=np.float64)
    return _LPS @ lps @ _LPS


def _block_downsample(array: np.ndarray, affine: np.ndarray, target_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Block-mean downsampling by the integer factor that brings the finest axis closest to ``target_mm``."""
    spacing = np.asarray(spacing_from_affine(affine, 3))
    f = int(max(1, np.floor(target_mm / float(spacing.max()) + 1e-6)))
    if f == 1:
        return array, affine
    d, h, w = (n // f for n in array.shape)
    a = np.asarray(array, dtype=np.float32)[: d * f, : h * f, : w * f]
    a = a.reshape(d, f, h, f, w, f).mean(axis=(1, 3, 5))
    return a, affine @ np.array([[f, 0, 0, (f - 1) / 2], [0, f, 0, (f - 1) / 2], [0, 0, f, (f - 1) / 2], [0, 0, 0, 1]])


def _mask_moments(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, float]:
    idx = np.argwhere(mask)
    centre_vox = idx.mean(axis=0)
    centre = (affine[:3, :3] @ centre_vox + affine[:3, 3]) * np.diag(_LPS)[:3]
    volume = float(len(idx)) * abs(np.linalg.det(affine[:3, :3]))
    return centre, volume


def affine_align(
    moving: Any,
    template: Any,
    *,
    moving_labels: Any = None,
    template_labels: Any = None,
    mode: str = "image",
    metric: str = "mattes",
    grid: Grid | None = None,
    levels: tuple[int, ...] = (2, 1),
    iterations: tuple[int, ...] = (300, 100),
    sampling: float = 0.2,
    seed: int = 0,
    mask_threshold: float = 0.05,
) -> AlignResult:
    """Affinely align a brain volume to ``template`` and resample it onto ``grid``.

    Args:
        moving: T1 image (``mode="image"``) or FreeSurfer label map (``mode="labels"``): a NIfTI path, a
            nibabel image or ``(array, affine)``.
        template: skull-stripped T1 template, same input types (e.g. ``build_template().image_2mm``: the
            default pyramid then runs at 4 and 2 mm, which is as accurate for an affine as 1 mm and ~5x faster).
        moving_labels: optional label map on the moving image's grid, resampled with the same transform
            (``mode="image"`` only; in ``mode="labels"`` the moving volume itself is the label map).
        template_labels: FreeSurfer-coded template atlas (``mode="labels"`` only). When given, the fixed image
            is the atlas's :func:`label_pseudo_image`, so both sides share one intensity coding (label-to-label
            registration); measured on the 20 SynthSeg maps this raises the mean 32-structure Dice with the
            atlas, most for atrophied brains.
        mode: ``"image"`` (metric on the intensities) or ``"labels"`` (metric on :func:`label_pseudo_image`;
            brain mask = labels neither background, CSF nor extra-cerebral).
        metric: ``"mattes"`` (Mattes mutual information, 32 bins) or ``"meansquares"`` (same-coding inputs only).
        grid: output grid (default the 1 mm template grid).
        levels: pyramid shrink factors relative to the template grid (smoothing sigma = factor / 2 voxels).
        iterations: gradient-descent iterations per level.
        sampling: fraction of fixed voxels sampled by the metric per iteration.
        seed: sampling seed (the result is deterministic for a given seed and thread count).
        mask_threshold: intensity above which a (0..max-normalised) image voxel counts as brain for the
            moments initialisation.

    Returns:
        :class:`AlignResult`.

    Raises:
        ValueError: bad ``mode``/``levels``/``iterations``, empty brain mask, or label/image geometry mismatch.
        ImageReadError: unreadable inputs (the message names the file).
    """
    if mode not in ("image", "labels"):
        raise ValueError(f"affine_align: mode must be 'image' or 'labels', got {mode!r}.")
    if metric not in ("mattes", "meansquares"):
        raise ValueError(f"affine_align: metric must be 'mattes' or 'meansquares', got {metric!r}.")
    if template_labels is not None and mode != "labels":
        raise ValueError("affine_align: `template_labels` is only used with mode='labels'.")
    if len(levels) != len(iterations) or not levels:
        raise ValueError(f"affine_align: `levels` {levels} and `iterations` {iterations} need the same length >= 1.")
    grid = grid or TEMPLATE_GRID_1MM
    v = _inputs(moving, template, moving_labels, template_labels, mode, mask_threshold)

    import itk  # noqa: F401  (loaded before the clock starts: `seconds` is the registration alone)

    t0 = time.perf_counter()
    fixed_spacing = max(spacing_from_affine(v.fixed_aff, 3))
    reg_img, reg_aff = _block_downsample(v.mov_img, v.mov_aff, fixed_spacing)  # the finest level needs no more
    fixed_itk, moving_itk = _to_itk(v.fixed, v.fixed_aff), _to_itk(reg_img, reg_aff)
    transform = _moments_transform(v.fix_mask, v.fixed_aff, v.mov_mask, v.mov_aff)
    reg, optimizer = _registration(fixed_itk, moving_itk, transform, metric, levels, iterations, sampling, seed)
    reg.Update()
    seconds = time.perf_counter() - t0

    world = itk_to_world_matrix(transform)
    image_out = resample_array(v.mov_raw, v.mov_aff, grid, order=1, world=world) if mode == "image" else None
    labels_out = None if v.mov_labels is None else resample_array(v.mov_labels, v.mov_aff, grid, order=0, world=world)
    return AlignResult(transform, world, grid, image_out, labels_out, float(optimizer.GetValue()), seconds)


@dataclass
class _Inputs:
    """The two volumes as :func:`affine_align` registers them: normalised intensities, brain masks, labels."""

    fixed: np.ndarray
    fixed_aff: np.ndarray
    fix_mask: np.ndarray
    mov_img: np.ndarray
    mov_aff: np.ndarray
    mov_mask: np.ndarray
    mov_raw: np.ndarray | None
    mov_labels: np.ndarray | None


def _inputs(moving: Any, template: Any, moving_labels: Any, template_labels: Any, mode: str,
            mask_threshold: float) -> _Inputs:  # fmt: skip
    """Load both sides; label maps become pseudo-T1 images; masks for the moments initialisation."""
    fixed, fixed_aff = load_volume(template, "template")
    name = str(moving) if isinstance(moving, (str, os.PathLike)) else "moving"
    mov_raw = None
    if mode == "labels":
        lab, mov_aff = load_volume(moving, "moving", labels=True)
        lab = np.rint(lab).astype(np.int32)
        mov_mask = (lab > 0) & ~np.isin(lab, (24, *EXTRA_CEREBRAL_CODES))
        mov_img, mov_labels = label_pseudo_image(lab), lab
    else:
        mov_raw, mov_aff = load_volume(moving, "moving")
        mov_img = mov_raw / max(float(np.percentile(mov_raw, 99.5)), 1e-6)
        mov_mask = mov_img > mask_threshold
        mov_labels = None
        if moving_labels is not None:
            mov_labels, lab_aff = load_volume(moving_labels, "moving_labels", labels=True)
            if mov_labels.shape != mov_img.shape or not np.allclose(lab_aff, mov_aff, atol=1e-3):
                raise ValueError(
                    f"affine_align: `moving_labels` geometry {mov_labels.shape} does not match the image "
                    f"{mov_img.shape} ({name}); labels must share the image grid and affine."
                )
    if template_labels is not None:
        atlas, atlas_aff = load_volume(template_labels, "template_labels", labels=True)
        atlas = np.rint(atlas).astype(np.int32)
        fixed, fixed_aff = label_pseudo_image(atlas), atlas_aff
        fix_mask = (atlas > 0) & ~np.isin(atlas, (24, *EXTRA_CEREBRAL_CODES))
    fixed = fixed / max(float(np.percentile(fixed, 99.5)), 1e-6)
    if template_labels is None:
        fix_mask = fixed > mask_threshold
    for m, what in ((mov_mask, name), (fix_mask, "template")):
        if not m.any():
            raise ValueError(f"affine_align: {what}: brain mask is empty (all voxels background / below threshold).")
    return _Inputs(fixed, fixed_aff, fix_mask, mov_img, mov_aff, mov_mask, mov_raw, mov_labels)


def _moments_transform(fix_mask: np.ndarray, fixed_aff: np.ndarray, mov_mask: np.ndarray, mov_aff: np.ndarray) -> Any:
    """ITK affine initialised from the masks: centres of mass and an isotropic scale from the volume ratio."""
    import itk

    c_fix, v_fix = _mask_moments(fix_mask, fixed_aff)
    c_mov, v_mov = _mask_moments(mov_mask, mov_aff)
    transform = itk.AffineTransform[itk.D, 3].New()
    transform.SetCenter([float(v) for v in c_fix])
    scale = (v_mov / v_fix) ** (1.0 / 3.0)
    transform.SetMatrix(itk.matrix_from_array(np.eye(3) * scale))
    transform.SetTranslation([float(v) for v in c_mov - c_fix])
    return transform


def _registration(fixed_itk: Any, moving_itk: Any, transform: Any, metric: str, levels: tuple[int, ...],
                  iterations: tuple[int, ...], sampling: float, seed: int) -> tuple[Any, Any]:  # fmt: skip
    """ITK's v4 registration method (metric, regular-step gradient descent, pyramid), ready to ``Update()``."""
    import itk

    image_type = type(fixed_itk)
    if metric == "mattes":
        metric_obj = itk.MattesMutualInformationImageToImageMetricv4[image_type, image_type].New()
        metric_obj.SetNumberOfHistogramBins(32)
    else:
        metric_obj = itk.MeanSquaresImageToImageMetricv4[image_type, image_type].New()
    optimizer = itk.RegularStepGradientDescentOptimizerv4[itk.D].New()
    optimizer.SetLearningRate(1.0)
    optimizer.SetMinimumStepLength(1e-3)
    optimizer.SetRelaxationFactor(0.7)
    optimizer.SetGradientMagnitudeTolerance(1e-8)
    optimizer.SetNumberOfIterations(int(iterations[0]))
    scales = itk.RegistrationParameterScalesFromPhysicalShift[type(metric_obj)].New()
    scales.SetMetric(metric_obj)
    optimizer.SetScalesEstimator(scales)
    reg = itk.ImageRegistrationMethodv4[image_type, image_type].New()
    reg.SetFixedImage(fixed_itk)
    reg.SetMovingImage(moving_itk)
    reg.SetMetric(metric_obj)
    reg.SetOptimizer(optimizer)
    reg.SetInitialTransform(transform)
    reg.InPlaceOn()
    reg.SetNumberOfLevels(len(levels))
    reg.SetShrinkFactorsPerLevel([int(f) for f in levels])
    reg.SetSmoothingSigmasPerLevel([f / 2.0 for f in levels])
    reg.SetMetricSamplingStrategy(itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_REGULAR)
    reg.SetMetricSamplingPercentage(float(sampling))
    reg.MetricSamplingReinitializeSeed(int(seed))

    def _set_level_iterations() -> None:  # fired when a pyramid level starts
        optimizer.SetNumberOfIterations(int(iterations[min(int(reg.GetCurrentLevel()), len(iterations) - 1)]))

    reg.AddObserver(itk.MultiResolutionIterationEvent(), _set_level_iterations)
    # the observer closes over `reg` and `optimizer`: keep them alive together
    return reg, optimizer
