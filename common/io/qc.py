"""Quality-control figure for one registered pair: images, differences, deformation grid, Jacobian
determinant."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.conventions import check_ddf
from common.io.nifti import atomic_path
from common.metrics.jacobian import jacobian_determinant

__all__ = ["save_qc_figure"]

_CALLER = "save_qc_figure"


def _image(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if not np.issubdtype(a.dtype, np.number) and a.dtype != np.bool_:
        raise TypeError(f"{_CALLER}: `{name}` must be numeric, got dtype {a.dtype}.")
    shape = a.shape
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim not in (2, 3):
        raise ValueError(f"{_CALLER}: `{name}` must be 2D or 3D (optionally with leading (1, 1)), got shape {shape}.")
    a = a.astype(np.float32)  # display only: float32 halves the figure's memory on 1 mm volumes
    if not np.isfinite(a).all():
        raise ValueError(f"{_CALLER}: `{name}` contains NaN or Inf values (shape {shape}).")
    return a


def _field(ddf: torch.Tensor | np.ndarray, spatial: tuple[int, ...]) -> torch.Tensor:
    t = torch.as_tensor(ddf.detach().cpu() if isinstance(ddf, torch.Tensor) else np.asarray(ddf))
    if t.ndim == len(spatial) + 1 and t.shape[0] == len(spatial):
        t = t.unsqueeze(0)  # (D, *S) -> (1, D, *S)
    dims = check_ddf(t, caller=_CALLER)
    if dims != len(spatial):
        raise ValueError(
            f"{_CALLER}: `ddf` is a {dims}D field (shape {tuple(t.shape)}) but `fixed` is {len(spatial)}D "
            f"(shape {spatial})."
        )
    if tuple(t.shape[2:]) != spatial or t.shape[0] != 1:
        raise ValueError(f"{_CALLER}: `ddf` must have shape (1, {dims}, *{spatial}), got {tuple(t.shape)}.")
    if t.dtype in (torch.float32, torch.float64):
        return t  # no 1 mm-sized float64 copy of a float32 field
    return t.to(torch.float32 if t.is_floating_point() else torch.float64)  # bfloat16/float16 cannot go to NumPy


def _show(ax: Any, img: np.ndarray, sl: tuple, **kw: Any) -> Any:
    return ax.imshow(img[sl].T, origin="lower", interpolation="nearest", **kw)


def _views(dims: int, shape: tuple[int, ...]) -> list[tuple[str, tuple, tuple[int, int]]]:
    """(label, slicer, in-plane axes) per row: middle slice orthogonal to each axis in 3D, the image in 2D."""
    if dims == 2:
        return [("2D", (slice(None), slice(None)), (0, 1))]
    out = []
    for ax in range(3):
        sl = [slice(None)] * 3
        sl[ax] = shape[ax] // 2
        plane = tuple(a for a in range(3) if a != ax)
        out.append((f"axis {ax} = {shape[ax] // 2}", tuple(sl), plane))
    return out


def save_qc_figure(
    fixed: torch.Tensor | np.ndarray,
    moving: torch.Tensor | np.ndarray,
    warped: torch.Tensor | np.ndarray,
    ddf: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    title: str | None = None,
    extra: torch.Tensor | np.ndarray | None = None,
    metrics: Mapping[str, float] | None = None,
    extra_label: str = "extra",
    dpi: int = 100,
    det: np.ndarray | None = None,
) -> Path:
    """Save a PNG with one row per orthogonal view (3D: middle slices; 2D: one row).

    Columns: fixed, moving, warped, ``|fixed - moving|``, ``|fixed - warped|`` (shared colour scale), the
    deformed grid ``x + u(x)`` over the warped image (every few voxels), the Jacobian determinant of
    ``x -> x + u(x)`` (diverging colormap centred at 1; folding ``det <= 0`` outlined and filled in green, its
    percentage over the whole field in the panel title) and, optionally, an extra map (e.g. uncertainty).
    Slices are drawn with the first in-plane array axis horizontal and ``origin="lower"``. Written atomically
    with matplotlib's Agg canvas (no pyplot state).

    Args:
        fixed: ``(*S)`` image, optionally with leading ``(1, 1)``/``(1,)``; 2D or 3D.
        moving: same shape as ``fixed`` (before registration).
        warped: same shape as ``fixed`` (moving warped by ``ddf``).
        ddf: ``(1, D, *S)`` or ``(D, *S)`` displacement in voxels, array order, pull-back.
        path: output ``.png``.
        title: figure title.
        extra: optional ``(*S)`` map shown in an extra column.
        metrics: numbers appended to the title, e.g. ``{"NCC before": 0.61, "NCC after": 0.83}``.
        extra_label: column title for ``extra``.
        dpi: resolution.
        det: the field's Jacobian determinant (:func:`common.metrics.jacobian.jacobian_determinant`) when the
            caller has it already (computed here otherwise).

    Returns:
        The written path.

    Raises:
        ValueError: shapes that do not match, a field of the wrong dimension or channel count, NaN/Inf, not .png.
    """
    from matplotlib.figure import Figure

    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ValueError(f"{_CALLER}: `path` must end with .png, got {p}.")
    imgs, ext, u, jac, fold_pct = _qc_inputs(fixed, moving, warped, ddf, extra, det)
    lo, hi, diffs, dmax, jnorm = _display_scales(imgs, jac)
    cols = ["fixed", "moving", "warped", "|fixed - moving|", "|fixed - warped|", "grid on warped"]
    cols.append(f"det J (<=0: {fold_pct:.2f}%)")
    if ext is not None:
        cols.append(extra_label)
    views = _views(imgs["fixed"].ndim, imgs["fixed"].shape)
    fig = Figure(figsize=(2.3 * len(cols), 2.4 * len(views) + 0.6), dpi=dpi)
    axes = fig.subplots(len(views), len(cols), squeeze=False)
    for r, (label, sl, (a, b)) in enumerate(views):
        row = axes[r]
        for c, name in enumerate(("fixed", "moving", "warped")):
            _show(row[c], imgs[name], sl, cmap="gray", vmin=lo, vmax=hi)
        im_d = _show(row[3], diffs[0], sl, cmap="inferno", vmin=0.0, vmax=dmax)
        _show(row[4], diffs[1], sl, cmap="inferno", vmin=0.0, vmax=dmax)
        _show(row[5], imgs["warped"], sl, cmap="gray", vmin=lo, vmax=hi, alpha=0.6)
        _draw_grid(row[5], u[a][sl], u[b][sl])
        im_j = _draw_jacobian(row[6], jac[sl], jnorm)
        if ext is not None:
            fig.colorbar(_show(row[7], ext, sl, cmap="magma"), ax=row[7], fraction=0.046, pad=0.02)
        fig.colorbar(im_d, ax=row[4], fraction=0.046, pad=0.02)
        fig.colorbar(im_j, ax=row[6], fraction=0.046, pad=0.02)
        _label_row(row, label, cols if r == 0 else None)
    head = [title] if title else []
    if metrics:
        head.append("   ".join(f"{k}: {float(v):.4g}" for k, v in metrics.items()))
    if head:
        fig.suptitle("\n".join(head), fontsize=10)
    fig.tight_layout()
    with atomic_path(p) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return p


def _display_scales(imgs: dict, jac: np.ndarray) -> tuple:
    """Shared colour scales of :func:`save_qc_figure`: image window (1st-99th percentile of fixed and moving), the
    two difference maps with their 99.5th-percentile maximum, and the Jacobian's norm centred at 1."""
    from matplotlib.colors import TwoSlopeNorm

    f = imgs["fixed"]
    both = np.concatenate([f.ravel(), imgs["moving"].ravel()])
    lo, hi = np.percentile(both, [1, 99], overwrite_input=True)  # `both` is a copy: sorted in place
    del both
    hi = hi if hi > lo else lo + 1.0
    diffs = (np.abs(f - imgs["moving"]), np.abs(f - imgs["warped"]))
    dmax = max(float(np.percentile(diffs[0], 99.5)), 1e-12)
    jnorm = TwoSlopeNorm(vmin=min(float(jac.min()), 0.0), vcenter=1.0, vmax=max(float(jac.max()), 2.0))
    return lo, hi, diffs, dmax, jnorm


def _label_row(row: Any, label: str, titles: list[str] | None) -> None:
    """Row label on the first panel, no ticks, column titles on the first row."""
    row[0].set_ylabel(label)
    for c, ax in enumerate(row):
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[c], fontsize=9)


def _qc_inputs(fixed: Any, moving: Any, warped: Any, ddf: Any, extra: Any, det: Any) -> tuple:
    """Checked arrays of :func:`save_qc_figure`: images, extra map, field (float32), det J (float32), % folding."""
    f = _image(fixed, "fixed")
    spatial = f.shape
    imgs = {"fixed": f}
    for name, arr in (("moving", moving), ("warped", warped)):
        imgs[name] = _image(arr, name)
        if imgs[name].shape != spatial:
            raise ValueError(f"{_CALLER}: `{name}` has shape {imgs[name].shape} but `fixed` has {spatial}.")
    ext = None
    if extra is not None:
        ext = _image(extra, "extra")
        if ext.shape != spatial:
            raise ValueError(f"{_CALLER}: `extra` has shape {ext.shape} but `fixed` has {spatial}.")
    u = _field(ddf, spatial)
    # explicit determinant in NumPy slabs (common.metrics): a fraction of the memory of torch.linalg.det
    jac = jacobian_determinant(u[0].numpy()) if det is None else np.asarray(det)
    if jac.shape != spatial:
        raise ValueError(f"{_CALLER}: `det` has shape {jac.shape} but `fixed` has {spatial}.")
    fold_pct = 100.0 * float((jac <= 0).mean())
    jac = jac.astype(np.float32)  # display only (the sign survives the cast; fold_pct is from float64)
    return imgs, ext, u[0].numpy().astype(np.float32, copy=False), jac, fold_pct


def _draw_grid(ax: Any, ua: np.ndarray, ub: np.ndarray) -> None:
    """The deformed grid ``x + u(x)`` of one slice, every ~1/16 of the slice, over what ``ax`` shows."""
    na, nb = ua.shape
    ia, ib = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
    xa, xb = ia + ua, ib + ub
    step_a, step_b = max(1, na // 16), max(1, nb // 16)
    for i in range(0, na, step_a):
        ax.plot(xa[i, :], xb[i, :], color="tab:orange", lw=0.6)
    for j in range(0, nb, step_b):
        ax.plot(xa[:, j], xb[:, j], color="tab:orange", lw=0.6)
    ax.set_xlim(-0.5, na - 0.5)
    ax.set_ylim(-0.5, nb - 0.5)


def _draw_jacobian(ax: Any, jac: np.ndarray, norm: Any) -> Any:
    """det J of one slice (diverging, centred at 1), folding filled in green and outlined; returns the image."""
    from matplotlib.colors import ListedColormap

    im = ax.imshow(jac.T, origin="lower", interpolation="nearest", cmap="RdBu_r", norm=norm)
    folded = np.ma.masked_where(jac > 0, np.ones_like(jac))
    ax.imshow(folded.T, origin="lower", interpolation="nearest", cmap=ListedColormap(["#00c000"]), vmin=0, vmax=1)
    na, nb = jac.shape
    if (jac <= 0).any() and min(na, nb) > 1:
        ax.contour(jac.T, levels=[0.0], colors="k", linewidths=0.6)
    return im
