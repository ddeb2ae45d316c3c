"""Baseline and peer registrations of one labelled pair, in the project's convention.

Every function takes a pair dict (``moving_image``, ``fixed_image``, ``moving_label``, ``fixed_label`` NIfTI
paths) and returns :class:`BaselineResult`: the displacement in voxels of the fixed grid (pull-back, array order,
the moving image's voxel grid as the target when it differs), the moving labels warped onto the fixed grid, and
the registration's own wall time (loading and writing excluded). Used by ``scripts/evaluate_bundle.py`` and
``scripts/benchmark.py``.

Peers are optional (``pip install -e .[peers]``): :func:`ants_syn` needs ``antspyx``, :func:`elastix_bspline`
needs ``itk-elastix``; :class:`PeerMissing` says which package is absent.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.io.nifti import read_nifti

__all__ = [
    "BaselineResult",
    "PeerMissing",
    "ANTS_PRESETS",
    "zero_baseline",
    "itk_affine",
    "classic_bspline",
    "ants_syn",
    "ants_affine",
    "elastix_bspline",
    "peer_available",
]


class PeerMissing(RuntimeError):
    """An optional peer package is not installed."""


@dataclass
class BaselineResult:
    ddf: np.ndarray  # (D, *S) voxels of the fixed grid
    warped_labels: np.ndarray  # S, int32 codes
    seconds: float
    moving_affine: np.ndarray | None = None  # the target grid of ``ddf`` when it is not the fixed grid


def peer_available(name: str) -> bool:
    """Whether the peer ``ants`` (antspyx), ``elastix`` (itk-elastix) or ``convexadam`` can be imported."""
    try:
        if name == "ants":
            import ants  # noqa: F401
        elif name == "elastix":
            import itk

            itk.ElastixRegistrationMethod  # noqa: B018 (lazy attribute: raises if itk-elastix is absent)
        elif name == "convexadam":
            from convexAdam.convex_adam_MIND import convex_adam_pt  # noqa: F401
        else:
            raise ValueError(f"peer_available: unknown peer {name!r}")
    except (ImportError, AttributeError):
        return False
    return True


def _labels_on_grid(pair: dict[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    fixed, f_aff = read_nifti(pair["fixed_label"], dtype=np.int32)
    moving, m_aff = read_nifti(pair["moving_label"], dtype=np.int32)
    return fixed, f_aff, moving, m_aff


def zero_baseline(pair: dict[str, str]) -> BaselineResult:
    """No registration (the moving and fixed labels must share one grid)."""
    fixed, f_aff, moving, m_aff = _labels_on_grid(pair)
    if moving.shape != fixed.shape or not np.allclose(m_aff, f_aff, atol=1e-4):
        raise ValueError(f"zero_baseline: {pair['moving_label']} and {pair['fixed_label']} are on different grids.")
    return BaselineResult(np.zeros((fixed.ndim, *fixed.shape), np.float32), moving, 0.0)


def itk_affine(pair: dict[str, str]) -> BaselineResult:
    """ITK affine (Mattes MI, two-level pyramid; :func:`common.data.brain.align.affine_align`), 3D."""
    from common.data.brain.align import affine_align
    from common.data.brain.template import Grid
    from common.geometry import world_map_ddf

    fixed, f_aff, _, _ = _labels_on_grid(pair)
    res = affine_align(pair["moving_image"], pair["fixed_image"], moving_labels=pair["moving_label"],
                       grid=Grid(tuple(fixed.shape), f_aff))  # fmt: skip
    ddf = world_map_ddf(res.world, f_aff, fixed.shape)
    return BaselineResult(ddf, res.labels.astype(np.int32), float(res.seconds))


def classic_bspline(pair: dict[str, str], iterations: int = 200, stride: int = 4, alpha: float = 0.1) -> BaselineResult:
    """Classic iterative NGF + alpha * curvature over cubic B-spline control points (Adam), 2D or 3D."""
    import torch

    from common.blocks import warp_labels
    from common.engines.instance_optimisation import InstanceOptimiser
    from common.engines.pair_loading import normalise_intensity
    from common.losses import CurvatureRegulariser, NGFLoss

    fixed, f_aff = read_nifti(pair["fixed_image"])
    moving, _ = read_nifti(pair["moving_image"])
    dims = fixed.ndim
    spacing = np.sqrt((f_aff[:dims, :dims] ** 2).sum(0)).tolist()
    f = torch.as_tensor(normalise_intensity(fixed))[None, None]
    m = torch.as_tensor(normalise_intensity(moving))[None, None]
    opt = InstanceOptimiser(NGFLoss(0.1, spacing=spacing), CurvatureRegulariser(), reg_weight=alpha,
                            iterations=iterations, lr=0.1, bspline_stride=stride, progress=False)  # fmt: skip
    ddf = opt(m, f)
    labels, _ = read_nifti(pair["moving_label"], dtype=np.int64)
    codes = np.unique(labels)
    idx = torch.as_tensor(np.searchsorted(codes, labels))[None, None]
    warped = codes[warp_labels(idx, ddf, num_classes=len(codes))[0, 0].numpy()]
    return BaselineResult(ddf[0].numpy(), warped.astype(np.int32), float(opt.seconds))


# antsRegistration settings (all SyN only: the pairs are pre-aligned).
# "lumir": the Learn2Reg LUMIR organisers' baseline, SyN with the CC metric (radius 2) and 200x200x200 iterations;
#   antspyx ignores `reg_iterations`/`syn_metric` for its "antsRegistrationSyN[so]" recipe, so it is spelled out.
# "script": antspyx's recreation of antsRegistrationSyN.sh -t so (CC radius 2, 100x70x50x20).
# "fast": antsRegistrationSyNQuick.sh -t so (MI, 100x70x50x0), for large runs.
ANTS_PRESETS: dict[str, dict[str, Any]] = {
    "lumir": {"type_of_transform": "SyNOnly", "syn_metric": "CC", "syn_sampling": 2,
              "reg_iterations": (200, 200, 200)},
    "script": {"type_of_transform": "antsRegistrationSyN[so]"},
    "fast": {"type_of_transform": "antsRegistrationSyNQuick[so]"},
}  # fmt: skip


def _itk_field_to_ddf(path: str, fixed_affine: np.ndarray) -> np.ndarray:
    import itk

    from common.io.itk_field import itk_field_to_ddf

    ddf, field_aff = itk_field_to_ddf(itk.imread(str(path)))
    if not np.allclose(field_aff, fixed_affine, atol=1e-3):
        raise RuntimeError(f"{path}: the peer's displacement field is not on the fixed image grid.")
    return ddf[0].numpy()


def _ants_inputs(pair: dict[str, str], threads: int | None, caller: str):
    """``(ants, fixed labels, fixed affine, fixed, moving, moving labels)`` for the antspyx baselines."""
    try:
        import ants
    except ImportError as exc:
        raise PeerMissing(f"{caller}: antspyx is not installed (pip install -e .[peers]).") from exc
    if threads:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
    fixed_lab, f_aff, _, _ = _labels_on_grid(pair)
    images = (ants.image_read(str(pair[k])) for k in ("fixed_image", "moving_image", "moving_label"))
    return (ants, fixed_lab, f_aff, *images)


def ants_syn(pair: dict[str, str], preset: str = "lumir", threads: int | None = None) -> BaselineResult:
    """ANTs SyN through ``antspyx`` with :data:`ANTS_PRESETS` ``[preset]`` (pre-aligned pairs), 2D or 3D."""
    if preset not in ANTS_PRESETS:
        raise ValueError(f"ants_syn: preset must be one of {sorted(ANTS_PRESETS)}, got {preset!r}.")
    ants, fixed_lab, f_aff, fixed, moving, moving_lab = _ants_inputs(pair, threads, "ants_syn")
    with tempfile.TemporaryDirectory(prefix="ants_") as tmp:
        t0 = time.perf_counter()
        reg = ants.registration(fixed, moving, outprefix=str(Path(tmp) / "reg_"), random_seed=1,
                                **ANTS_PRESETS[preset])  # fmt: skip
        seconds = time.perf_counter() - t0
        fwd = [t for t in reg["fwdtransforms"] if t.endswith((".nii.gz", ".nii"))]
        for mat in (t for t in reg["fwdtransforms"] if t.endswith(".mat")):  # SyN-only: an identity affine
            params = np.asarray(ants.read_transform(mat).parameters, dtype=np.float64)
            eye = np.concatenate([np.eye(fixed.dimension).ravel(), np.zeros(fixed.dimension)])
            if params.shape != eye.shape or not np.allclose(params, eye, atol=1e-4):
                raise RuntimeError(f"ants_syn: the SyN-only run returned a non-identity affine {mat}.")
        if len(fwd) != 1:
            raise RuntimeError(f"ants_syn: expected one displacement field, got {reg['fwdtransforms']}.")
        ddf = _itk_field_to_ddf(fwd[0], f_aff)
        warped = ants.apply_transforms(fixed, moving_lab, reg["fwdtransforms"], interpolator="genericLabel")
    warped_arr = np.rint(warped.numpy()).astype(np.int32)
    if warped_arr.shape != fixed_lab.shape:
        raise RuntimeError(f"ants_syn: warped labels {warped_arr.shape} != fixed grid {fixed_lab.shape}.")
    return BaselineResult(ddf.astype(np.float32), warped_arr, seconds)


def convex_adam(pair: dict[str, str], threads: int | None = None) -> BaselineResult:
    """ConvexAdam (Siebert, Grossbroehmer, Hansen, Heinrich 2024) from PyPI ``convexadam==0.2.0`` with its default
    parameters (MIND-SSC r 1 d 2, convex search on a 6-voxel grid +-4, inverse consistency, 80 Adam steps with
    lambda 1.25 on a 2-voxel grid), CPU; moving and fixed images on one grid. Labels are warped like the bundles'
    (one-hot linear); ``seconds`` is the registration call alone. Its output is already this project's
    convention (voxels, array order, pull-back on the fixed grid)."""
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    from common.geometry import warp_labels_to_fixed

    fixed, f_aff = read_nifti(pair["fixed_image"])
    moving, m_aff = read_nifti(pair["moving_image"])
    if moving.shape != fixed.shape or not np.allclose(m_aff, f_aff, atol=1e-4):
        raise ValueError(f"convex_adam: {pair['moving_image']} and {pair['fixed_image']} must share one grid.")
    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    disp = convex_adam_pt(fixed, moving, device=torch.device("cpu"))
    seconds = time.perf_counter() - t0
    ddf = np.moveaxis(np.asarray(disp, dtype=np.float32), -1, 0)
    labels, _ = read_nifti(pair["moving_label"], dtype=None)
    warped = warp_labels_to_fixed(labels, m_aff, torch.as_tensor(ddf)[None], f_aff)
    return BaselineResult(ddf, warped.astype(np.int32), seconds)


def ants_affine(pair: dict[str, str], threads: int | None = None) -> BaselineResult:
    """ANTs affine registration through ``antspyx`` (``type_of_transform="Affine"``: Mattes MI, multi-resolution,
    12 parameters), 3D, moving and fixed images on one grid; ``seconds`` is the registration call alone."""
    from common.geometry import world_map_ddf

    ants, fixed_lab, f_aff, fixed, moving, moving_lab = _ants_inputs(pair, threads, "ants_affine")
    with tempfile.TemporaryDirectory(prefix="ants_") as tmp:
        t0 = time.perf_counter()
        reg = ants.registration(fixed, moving, type_of_transform="Affine", outprefix=str(Path(tmp) / "reg_"),
                                random_seed=1)  # fmt: skip
        seconds = time.perf_counter() - t0
        mats = [t for t in reg["fwdtransforms"] if t.endswith(".mat")]
        if len(mats) != 1:
            raise RuntimeError(f"ants_affine: expected one affine file, got {reg['fwdtransforms']}.")
        tr = ants.read_transform(mats[0])
        warped = ants.apply_transforms(fixed, moving_lab, reg["fwdtransforms"], interpolator="genericLabel")
    # ITK/ANTs affine (LPS mm, fixed point -> moving point): y = A (x - c) + c + t
    params = np.asarray(tr.parameters, dtype=np.float64)
    centre = np.asarray(tr.fixed_parameters, dtype=np.float64)
    a, t = params[:9].reshape(3, 3), params[9:12]
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = a, t + centre - a @ centre
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    ddf = world_map_ddf(flip @ lps @ flip, f_aff, fixed_lab.shape)
    warped_arr = np.rint(warped.numpy()).astype(np.int32)
    if warped_arr.shape != fixed_lab.shape:
        raise RuntimeError(f"ants_affine: warped labels {warped_arr.shape} != fixed grid {fixed_lab.shape}.")
    return BaselineResult(ddf.astype(np.float32), warped_arr, seconds)


def elastix_bspline(pair: dict[str, str], grid_spacing_mm: float = 8.0, resolutions: int = 3,
                    iterations: int = 500, threads: int | None = None,
                    parameters: dict[str, str] | None = None) -> BaselineResult:  # fmt: skip
    """elastix B-spline (``itk-elastix``; the default "bspline" parameter map, advanced Mattes MI) on
    pre-aligned pairs; ``parameters`` overrides entries of that map (e.g. ``{"Metric1Weight": 0.1}``). Threads go
    through ITK's global setting (the ``number_of_threads`` keyword segfaults)."""
    import itk

    if not peer_available("elastix"):
        raise PeerMissing("elastix_bspline: itk-elastix is not installed (pip install -e .[peers]).")
    if threads:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))
    fixed_lab, f_aff, _, _ = _labels_on_grid(pair)
    fixed = itk.imread(str(pair["fixed_image"]), itk.F)
    moving = itk.imread(str(pair["moving_image"]), itk.F)
    params = itk.ParameterObject.New()
    pmap = params.GetDefaultParameterMap("bspline", int(resolutions), float(grid_spacing_mm))
    pmap["MaximumNumberOfIterations"] = [str(int(iterations))]
    pmap["WriteResultImage"] = ["false"]
    for key, value in (parameters or {}).items():
        pmap[key] = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    params.AddParameterMap(pmap)
    t0 = time.perf_counter()
    _, tparams = itk.elastix_registration_method(fixed, moving, parameter_object=params, log_to_console=False)
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="elastix_") as tmp:
        field = itk.transformix_deformation_field(moving, tparams, output_directory=tmp)
        path = str(Path(tmp) / "field.nii.gz")
        itk.imwrite(field, path)
        ddf = _itk_field_to_ddf(path, f_aff)
    tparams.SetParameter("FinalBSplineInterpolationOrder", "0")
    tparams.SetParameter("ResultImagePixelType", "float")
    moving_lab = itk.imread(str(pair["moving_label"]), itk.F)
    warped = itk.transformix_filter(moving_lab, tparams)
    warped_arr = np.rint(np.asarray(itk.array_from_image(warped)).T).astype(np.int32)
    if warped_arr.shape != fixed_lab.shape:
        raise RuntimeError(f"elastix_bspline: warped labels {warped_arr.shape} != fixed grid {fixed_lab.shape}.")
    return BaselineResult(ddf.astype(np.float32), warped_arr, seconds)
