"""The files one registered pair gets: small writers, selectable by name, run in parallel threads.

:class:`common.engines.SaveRegistrationOutputsd` maps the field to the fixed image's grid, then calls
:func:`write_pair_outputs` with the outputs the run asked for (``outputs`` in ``inference.json``, ``--outputs``
on the CLI; default all). Each writer is a function of a :class:`PairContext` returning the files it wrote and the
metrics it computed; values several writers need (the warped image, the Jacobian determinant, the warped labels)
are computed once, on first use, under a lock. The writers run in a thread pool: NumPy, torch, zlib and file I/O
release the GIL, so on two cores the outputs take about half the time of writing them one after the other. Every
file is written into the pair's partial folder; the caller renames it only when all writers succeeded.

Compression: ``compression=None`` (default) stores the displacement fields (``disp.nii.gz``,
``displacement_itk.nii.gz``) with gzip level 0 - still valid ``.nii.gz`` files that every reader opens, about 10 %
larger, since gzip hardly shrinks float noise but costs ~2.4 s per 1 mm field - and images/labels at level 1
(nibabel's default). An integer 0-9 uses that level for every file (``1`` gives byte-identical files to earlier
releases' level-1 ones). The uncompressed content is the same either way (tested).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.geometry import (
    ddf_to_fixed_grid,
    resample_to_grid,
    warp_labels_to_fixed,
    warp_to_fixed,
)
from common.io.nifti import read_label_map, write_nifti
from common.metrics.similarity import global_ncc

__all__ = ["OUTPUTS", "PairContext", "parse_outputs", "write_pair_outputs"]

OUTPUTS: dict[str, str] = {
    "warped": "warped.nii.gz: the moving image in the fixed image's geometry",
    "labels": "warped_label.nii.gz: the moving label map in the fixed geometry (with --moving_label)",
    "l2r": "disp.nii.gz: Learn2Reg displacement file (fixed voxels, channels last)",
    "itk": "displacement_itk.nii.gz: ITK displacement field (ITK, ANTs, 3D Slicer)",
    "qc": "qc.png: quality-control figure",
    "metrics": "NCC before/after, SDlogJ, folding and, with both label maps, Dice in metrics.json and summary.csv",
    "inverse": "inverse field, warped fixed image and labels (bundles with an inverse transform)",
    "extras": "method-specific files (uncertainty map, affine.tfm)",
}


def parse_outputs(value: Any) -> tuple[str, ...]:
    """Output names from a config value: None or ``"all"`` (every output), a comma-separated string or a list.

    Raises:
        ValueError: an unknown name, or nothing selected (one line listing the valid names).
    """
    if value is None or value == "all" or (isinstance(value, (list, tuple)) and list(value) == ["all"]):
        return tuple(OUTPUTS)
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown or not names:
        what = f"unknown output(s) {', '.join(map(repr, unknown))}" if unknown else "no output selected"
        raise ValueError(f"outputs: {what}; choose from {', '.join(OUTPUTS)} (comma-separated) or all.")
    return tuple(n for n in OUTPUTS if n in names)


@dataclass
class PairContext:
    """Everything the writers of one pair read. Arrays are on the fixed grid unless named otherwise.

    ``ddf`` ``(1, D, *S_fixed)`` fixed voxels; ``ddf_net`` the field on the network grid; ``geo`` holds
    ``net_affine``, ``fixed_affine``, ``moving_affine``, ``fixed_shape`` (numpy); ``paths`` the input files.
    """

    out: Path
    title: str
    item: dict[str, Any]
    geo: dict[str, np.ndarray]
    paths: dict[str, str]
    ddf: torch.Tensor
    ddf_net: torch.Tensor
    moving: np.ndarray
    fixed: np.ndarray
    selected: tuple[str, ...]
    compression: int | None = None
    inverse_to_ddf: Any = None
    extra_outputs: Any = None
    extra_files: Any = None
    qc_extra: str | None = None
    _values: dict[str, Any] = field(default_factory=dict)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def once(self, name: str, make: Callable[[], Any]) -> Any:
        """``make()`` computed by the first writer that asks, shared with the others."""
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._values:
                self._values[name] = make()
            return self._values[name]

    def level(self, kind: str) -> int:
        """gzip level for a ``"field"`` or an ``"image"`` (see the module docstring)."""
        if self.compression is not None:
            return int(self.compression)
        return 0 if kind == "field" else 1

    @property
    def fixed_affine(self) -> np.ndarray:
        return _as4(self.geo["fixed_affine"])

    @property
    def dims(self) -> int:
        return int(self.ddf.shape[1])

    def warped(self) -> np.ndarray:
        return self.once("warped", lambda: _warp(self.moving, self.geo["moving_affine"], self.ddf, self.geo))

    def unwarped(self) -> np.ndarray:
        """The moving image resampled into the fixed geometry without displacement (itself on a shared grid)."""

        def make() -> np.ndarray:
            t = torch.as_tensor(self.moving)[None, None]
            return warp_to_fixed(
                t, self.geo["moving_affine"], None, self.geo["fixed_affine"], fixed_shape=self.fixed.shape
            )[0, 0].numpy()

        return self.once("unwarped", make)

    def det(self) -> np.ndarray:
        from common.metrics.jacobian import jacobian_determinant

        return self.once("det", lambda: jacobian_determinant(self.ddf[0].numpy()))

    def moving_labels(self) -> np.ndarray:
        return self.once("moving_labels", lambda: read_label_map(self.paths["moving_label"], ndim=self.dims)[0])

    def fixed_labels(self) -> np.ndarray:
        return self.once("fixed_labels", lambda: read_label_map(self.paths["fixed_label"], ndim=self.dims)[0])

    def warped_labels(self) -> np.ndarray:
        def make() -> np.ndarray:
            lab = warp_labels_to_fixed(
                self.moving_labels(), self.geo["moving_affine"], self.ddf, self.geo["fixed_affine"]
            )
            return lab.astype(np.int32)

        return self.once("warped_labels", make)

    def extra_maps(self) -> dict[str, np.ndarray]:
        """Method-specific maps (e.g. uncertainty) resampled to the fixed grid."""

        def make() -> dict[str, np.ndarray]:
            if self.extra_outputs is None:
                return {}
            shape = tuple(int(s) for s in self.geo["fixed_shape"])
            maps = {}
            for name, arr in self.extra_outputs(self.item, self.ddf_net).items():
                t = torch.as_tensor(arr)[None].float()
                maps[name] = resample_to_grid(t, self.geo["net_affine"], self.geo["fixed_affine"], shape)[0][0].numpy()
            return maps

        return self.once("extra_maps", make)


Result = tuple[dict[str, str], dict[str, Any]]  # files written (name -> path), metrics


def _warp(moving: np.ndarray, moving_affine: np.ndarray, ddf: torch.Tensor, geo: dict[str, np.ndarray]) -> np.ndarray:
    t = torch.as_tensor(moving)[None, None]
    return warp_to_fixed(t, moving_affine, ddf, geo["fixed_affine"])[0, 0].numpy()


def _as4(aff: np.ndarray) -> np.ndarray:
    """A 2D ``(3, 3)`` affine as the ``(4, 4)`` NIfTI affine; a 3D one unchanged."""
    aff = np.asarray(aff, dtype=np.float64)
    if aff.shape == (4, 4):
        return aff
    full = np.eye(4)
    full[:2, :2], full[:2, 3] = aff[:2, :2], aff[:2, 2]
    return full


def _mean_dice(pred: np.ndarray, ref: np.ndarray) -> float | None:
    """:func:`common.metrics.mean_dice`, None (JSON null) when no label could be scored."""
    from common.metrics import mean_dice

    value = mean_dice(pred, ref)
    return None if np.isnan(value) else value


def write_warped(ctx: PairContext) -> Result:
    path = write_nifti(ctx.warped(), ctx.fixed_affine, ctx.out / "warped.nii.gz", compresslevel=ctx.level("image"))
    return {"warped_image": str(path)}, {}


def image_metrics(ctx: PairContext) -> Result:
    from common.metrics import percent_folding, sdlogj

    det = ctx.det()
    u = ctx.ddf[0].numpy()
    metrics: dict[str, Any] = {
        "ncc_before": global_ncc(ctx.unwarped(), ctx.fixed),
        "ncc_after": global_ncc(ctx.warped(), ctx.fixed),
        "sdlogj": float(sdlogj(u, det=det)),
    }
    metrics["percent_folding"] = folding = float(percent_folding(u, det=det))
    metrics["folding_voxels"] = int(round(folding * ctx.ddf[0, 0].numel() / 100.0))
    return {}, metrics


def label_outputs(ctx: PairContext) -> Result:
    """The warped moving labels (file, with ``labels``) and Dice before/after (with ``metrics`` and both maps)."""

    files: dict[str, str] = {}
    metrics: dict[str, Any] = {}
    warped = ctx.warped_labels()
    if "labels" in ctx.selected:
        path = write_nifti(warped, ctx.fixed_affine, ctx.out / "warped_label.nii.gz", compresslevel=ctx.level("image"))
        files["warped_label"] = str(path)
    if "metrics" in ctx.selected and ctx.paths.get("fixed_label"):
        fixed_labels = ctx.fixed_labels()
        before = warp_labels_to_fixed(
            ctx.moving_labels(), ctx.geo["moving_affine"], None, ctx.geo["fixed_affine"], fixed_shape=fixed_labels.shape
        )
        metrics["dice_before"] = _mean_dice(before, fixed_labels)
        metrics["dice_after"] = _mean_dice(warped, fixed_labels)
    return files, metrics


def write_l2r(ctx: PairContext) -> Result:
    from common.io.l2r import write_l2r_displacement

    path = write_l2r_displacement(
        ctx.ddf, ctx.out / "disp.nii.gz", affine=ctx.fixed_affine, compresslevel=ctx.level("field")
    )
    return {"l2r_displacement": str(path)}, {}


def write_itk(ctx: PairContext) -> Result:
    """2D fields are 2D ITK vector images (ITK/SimpleITK read them; 3D Slicer wants 3D)."""
    from common.io.itk_field import write_itk_displacement

    path = write_itk_displacement(
        ctx.ddf, ctx.geo["fixed_affine"], ctx.out / "displacement_itk.nii.gz", compresslevel=ctx.level("field")
    )
    return {"itk_displacement": str(path)}, {}


def inverse_outputs(ctx: PairContext) -> Result:
    """The inverse transform's outputs, on the MOVING image's grid (see ``inverse_to_ddf`` of
    :class:`~common.engines.SaveRegistrationOutputsd`)."""
    from common.io.itk_field import write_itk_displacement
    from common.metrics import percent_folding, sdlogj

    geo, item = ctx.geo, ctx.item
    pred = item["pred"]
    pred = pred.as_tensor() if hasattr(pred, "as_tensor") else pred
    net_shape = tuple(item["fixed_image"].shape[1:])
    moving_aff = _as4(geo["moving_affine"])
    with torch.no_grad():
        inv_net = ctx.inverse_to_ddf(pred[None].float(), net_shape)
        inv = ddf_to_fixed_grid(inv_net, geo["net_affine"], geo["moving_affine"], ctx.moving.shape)
    warped_fixed = _warp(ctx.fixed, geo["fixed_affine"], inv, {"fixed_affine": geo["moving_affine"]})
    files = {
        "warped_fixed": str(
            write_nifti(warped_fixed, moving_aff, ctx.out / "warped_fixed.nii.gz", compresslevel=ctx.level("image"))
        ),
        "inverse_itk_displacement": str(
            write_itk_displacement(
                inv, geo["moving_affine"], ctx.out / "inverse_displacement_itk.nii.gz", compresslevel=ctx.level("field")
            )
        ),
    }
    metrics: dict[str, Any] = {}
    if "metrics" in ctx.selected:
        metrics["ncc_inverse_after"] = global_ncc(warped_fixed, ctx.moving)
        from common.metrics.jacobian import jacobian_determinant

        det = jacobian_determinant(inv[0].numpy())  # once for both metrics
        metrics["sdlogj_inverse"] = float(sdlogj(inv[0].numpy(), det=det))
        metrics["percent_folding_inverse"] = float(percent_folding(inv[0].numpy(), det=det))
    if ctx.paths.get("moving_label") and ctx.paths.get("fixed_label"):
        labels = warp_labels_to_fixed(ctx.fixed_labels(), geo["fixed_affine"], inv, geo["moving_affine"])
        labels = labels.astype(np.int32)
        files["warped_fixed_label"] = str(
            write_nifti(labels, moving_aff, ctx.out / "warped_fixed_label.nii.gz", compresslevel=ctx.level("image"))
        )
        if "metrics" in ctx.selected:
            metrics["dice_inverse_after"] = _mean_dice(labels, ctx.moving_labels())
    return files, metrics


def extras(ctx: PairContext) -> Result:
    files = {}
    for name, arr in ctx.extra_maps().items():
        files[name] = str(
            write_nifti(arr, ctx.geo["fixed_affine"], ctx.out / f"{name}.nii.gz", compresslevel=ctx.level("image"))
        )
    if ctx.extra_files is not None:
        files.update({k: str(v) for k, v in ctx.extra_files(ctx.item, ctx.out, ctx.geo).items()})
    return files, {}


def qc_figure(ctx: PairContext, metrics: dict[str, Any]) -> Result:
    from common.io.qc import save_qc_figure

    maps = ctx.extra_maps() if "extras" in ctx.selected or ctx.qc_extra else {}
    same_shape = ctx.moving.shape == ctx.fixed.shape
    path = save_qc_figure(
        ctx.fixed,
        ctx.moving if same_shape else ctx.unwarped(),
        ctx.warped(),
        ctx.ddf,
        ctx.out / "qc.png",
        title=ctx.title,
        extra=maps.get(ctx.qc_extra) if ctx.qc_extra else None,
        extra_label=ctx.qc_extra or "extra",
        metrics={k: v for k, v in metrics.items() if isinstance(v, float) and not k.startswith("seconds")},
        det=ctx.det(),
    )
    return {"qc": str(path)}, {}


def _timed(fn: Callable[..., Result], *args: Any) -> tuple[Result, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def write_pair_outputs(ctx: PairContext, threads: int = 2) -> tuple[dict[str, str], dict[str, Any], dict[str, float]]:
    """Run the writers ``ctx.selected`` asks for; returns ``(files, metrics, seconds per writer)``.

    Files and metrics come back in a fixed order whatever order the threads finish in. The first writer error is
    raised after every writer has stopped (so the caller can remove the partial folder).
    """
    sel = ctx.selected
    tasks: list[tuple[str, Callable[[PairContext], Result]]] = []
    if "warped" in sel:
        tasks.append(("warped", write_warped))
    if "metrics" in sel:
        tasks.append(("metrics", image_metrics))
    if ctx.paths.get("moving_label") and ("labels" in sel or ("metrics" in sel and ctx.paths.get("fixed_label"))):
        tasks.append(("labels", label_outputs))
    if "l2r" in sel:
        tasks.append(("l2r", write_l2r))
    if "itk" in sel:
        tasks.append(("itk", write_itk))
    if "inverse" in sel and ctx.inverse_to_ddf is not None:
        tasks.append(("inverse", inverse_outputs))
    if "extras" in sel and (ctx.extra_outputs is not None or ctx.extra_files is not None):
        tasks.append(("extras", extras))
    futures: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=max(1, int(threads)), thread_name_prefix="outputs") as pool:
        for name, fn in tasks:
            futures[name] = pool.submit(_timed, fn, ctx)
        if "qc" in sel:
            # after the metrics it shows in its title; submitted last, so what it waits for is already running
            futures["qc"] = pool.submit(
                _timed, _qc_after, ctx, *(futures.get(n) for n in ("metrics", "labels", "inverse"))
            )
        done = {}
        error: BaseException | None = None
        for name, fut in futures.items():
            try:
                done[name] = fut.result()
            except BaseException as exc:  # keep waiting for the others; raise the first error afterwards
                error = error or exc
    if error is not None:
        raise error
    files: dict[str, str] = {}
    metrics: dict[str, Any] = {}
    for name in ("warped", "labels", "l2r", "itk", "inverse", "extras", "qc"):
        if name in done:
            files.update(done[name][0][0])
    for name in ("metrics", "labels", "inverse"):
        if name in done:
            metrics.update(done[name][0][1])
    return files, metrics, {name: round(res[1], 3) for name, res in done.items()}


def _qc_after(ctx: PairContext, *deps: Future | None) -> Result:
    metrics: dict[str, Any] = {}
    for dep in deps:
        if dep is not None:
            metrics.update(dep.result()[0][1])
    return qc_figure(ctx, metrics)
