"""Atlas-based segmentation with a registration bundle (what the MONAI Label app serves to 3D Slicer).

The shipped atlas (template T1 + 32-structure labels, see :func:`common.data.brain.build_template`) is
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
from pathlib import Path
from typing import Any

import numpy as np

from common.io.convert import spacing_from_affine
from common.io.nifti import ImageReadError, atomic_path, read_nifti, write_nifti

__all__ = ["atlas_segment", "default_atlas"]


def default_atlas(resolution: int = 1) -> tuple[Path, Path]:
    """``(template T1, template labels)`` of the project atlas (built once from the PyPI wheel, then cached)."""
    from common.data.brain.template import build_template

    paths = build_template()
    return paths.image(resolution), paths.labels(resolution)


def _pyramid(spacing: tuple[float, ...]) -> tuple[int, int]:
    """Shrink factors so the affine runs at about 4 mm then 2 mm whatever the image spacing."""
    f = max(1, int(round(2.0 / max(min(spacing), 1e-3))))
    return (2 * f, f)


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
    """Segment a skull-stripped brain T1 by registering the atlas to it with ``bundle``.

    Args:
        image: the user's 3D T1 (NIfTI), any orientation and spacing.
        bundle: bundle folder (``bundles/<name>``) with a 3D ``inference.json`` and trained weights.
        out_dir: output folder (created; refused if it holds outputs unless ``overwrite``).
        atlas_image / atlas_labels: atlas T1 and labels (default :func:`default_atlas`).
        device: ``cpu`` or ``cuda``.
        overwrite: replace earlier outputs in ``out_dir``.
        overrides: extra bundle config overrides (e.g. instance-optimisation iterations of a bundle that has them).

    Returns:
        dict with the written paths (``labels``, ``displacement``, ``affine``, ``record``) and timings.

    Raises:
        ImageReadError: unreadable or non-3D image (the message names the file).
        FileExistsError: outputs exist and ``overwrite`` is False.
    """
    from common.data.brain.align import affine_align
    from common.data.brain.template import Grid
    from common.engines.bundle import run_bundle
    from common.geometry import world_map_ddf
    from common.io.convert import physical_affine_to_centred
    from common.io.itk_affine import write_itk_affine
    from common.io.itk_field import itk_field_to_ddf, write_itk_displacement

    t0 = time.perf_counter()
    image = Path(image)
    out = Path(out_dir)
    names = {"labels": "labels.nii.gz", "displacement": "displacement_itk.nii.gz", "affine": "affine.tfm",
             "record": "atlas.json"}  # fmt: skip
    existing = [n for n in names.values() if (out / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"atlas_segment: {out} already holds {existing}; pass overwrite=True to replace them.")
    arr, aff = read_nifti(image, ndim=3)
    if not np.isfinite(arr).all():
        raise ImageReadError(f"atlas_segment: {image}: the image holds NaN/Inf voxels.")
    if float(arr.max() - arr.min()) <= 0:
        raise ImageReadError(f"atlas_segment: {image}: the image is constant; there is nothing to register.")
    if atlas_image is None or atlas_labels is None:
        atlas_image, atlas_labels = default_atlas(1)
    atlas_arr, atlas_aff = read_nifti(atlas_image, ndim=3)
    grid = Grid(tuple(int(s) for s in arr.shape), aff)
    spacing = spacing_from_affine(aff, 3)
    levels = _pyramid(spacing)
    # affine: the image is the fixed side, so the atlas is resampled onto the image's own grid
    aligned = affine_align(str(atlas_image), str(image), moving_labels=str(atlas_labels), grid=grid,
                           levels=levels, iterations=(300, 100))  # fmt: skip
    t_affine = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="atlas_") as tmp_dir:
        tmp = Path(tmp_dir)
        moving = write_nifti(aligned.image.astype(np.float32), aff, tmp / "atlas_t1.nii.gz")
        moving_label = write_nifti(aligned.labels.astype(np.int16), aff, tmp / "atlas_labels.nii.gz")
        t1 = time.perf_counter()
        run_bundle(Path(bundle), "inference", "infer", moving=str(moving), fixed=str(image),
                   moving_label=str(moving_label), output_dir=str(tmp / "out"), device=device, overwrite=True,
                   **overrides)  # fmt: skip
        t_bundle = time.perf_counter() - t1
        pair_dirs = [p for p in (tmp / "out").iterdir() if p.is_dir()]
        if len(pair_dirs) != 1:
            raise RuntimeError(f"atlas_segment: bundle {bundle} wrote {len(pair_dirs)} pair folders, expected 1.")
        pair = pair_dirs[0]
        labels, lab_aff = read_nifti(pair / "warped_label.nii.gz", ndim=3)
        import itk

        ddf, field_aff = itk_field_to_ddf(itk.imread(str(pair / "displacement_itk.nii.gz")))
        if labels.shape != arr.shape or not np.allclose(lab_aff, aff, atol=1e-4) or ddf.shape[2:] != arr.shape:
            raise RuntimeError(f"atlas_segment: bundle {bundle} outputs are not on the image grid of {image}.")
        # total map: image voxel i -> i + u(i) (image grid) -> world -> atlas world (affine) -> atlas voxel
        total = world_map_ddf(aligned.world, aff, arr.shape, target_affine=atlas_aff, pre_ddf=ddf[0].numpy())[None]
        out.mkdir(parents=True, exist_ok=True)
        written = {
            "labels": write_nifti(np.rint(labels).astype(np.int16), aff, out / names["labels"]),
            "displacement": write_itk_displacement(total, aff, out / names["displacement"], moving_affine=atlas_aff),
            "affine": write_itk_affine(
                physical_affine_to_centred(aligned.world, arr.shape, aff, atlas_aff, lps=False)[0],
                aff, atlas_aff, out / names["affine"], shape=arr.shape,
            ),
        }  # fmt: skip
    present = sorted(int(v) for v in np.unique(labels) if v > 0)
    record = {
        "image": str(image),
        "bundle": Path(bundle).name,
        "atlas_image": str(atlas_image),
        "atlas_labels": str(atlas_labels),
        "affine_seconds": round(t_affine, 2),
        "bundle_seconds": round(t_bundle, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
        "labels_present": present,
        "outputs": {k: str(v) for k, v in written.items()},
    }
    with atomic_path(out / names["record"]) as tmp_path:
        tmp_path.write_text(json.dumps(record, indent=1))
    written["record"] = out / names["record"]
    return {**{k: str(v) for k, v in written.items()}, **{k: record[k] for k in record if k.endswith("seconds")}}
