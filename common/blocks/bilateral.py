"""Image-guided (joint / cross) bilateral filtering of displacement fields.

The field is smoothed with weights that fall off with the spatial distance *and* with the difference of a
guide image's intensities (the fixed image in registration), so it stays sharp across anatomical edges and
is smoothed inside homogeneous tissue.

Implementation note: the filter loops over the ``kernel_size**D`` offsets with padded slicing and
accumulates numerator and denominator in place, so no ``(k**D, ...)`` stack of shifted copies is ever
built (``F.unfold`` is 4D only and would do exactly that). Plain autograd through such a loop would still
keep a few full-size tensors *per offset* for the backward pass (125 offsets for ``k = 5`` in 3D, i.e.
gigabytes for a brain volume), so the gradient is a hand-written :class:`torch.autograd.Function` that
recomputes the weights offset by offset: memory is ``O(B * (D + C) * |S|)`` whatever the kernel size.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from common.conventions import check_ddf

__all__ = ["bilateral_filter_field", "BilateralFieldFilter"]

_NAME = "bilateral_filter_field"


def _offsets(dims: int, radius: int) -> list[tuple[int, ...]]:
    return list(itertools.product(range(-radius, radius + 1), repeat=dims))


def _window(offset: tuple[int, ...], pad: int, dilation: int, size: tuple[int, ...]) -> tuple[slice, ...]:
    """Slices of a tensor padded by ``pad`` on every spatial side that read ``x + offset * dilation``."""
    return (slice(None), slice(None)) + tuple(
        slice(pad + o * dilation, pad + o * dilation + n) for o, n in zip(offset, size)
    )


def _dist2(offset: tuple[int, ...], dilation: int) -> float:
    """Squared length of an offset in voxels."""
    return float(sum(o * o for o in offset) * dilation * dilation)


def _pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(x, [pad] * (2 * (x.ndim - 2)), mode="replicate") if pad > 0 else x


def _unpad_adjoint(grad_padded: torch.Tensor, shape: torch.Size, pad: int) -> torch.Tensor:
    """Adjoint of replicate padding: fold the gradient of the padded tensor back onto the original."""
    if pad == 0:
        return grad_padded
    with torch.enable_grad():
        x = torch.zeros(shape, dtype=grad_padded.dtype, device=grad_padded.device, requires_grad=True)
        (grad,) = torch.autograd.grad(_pad(x, pad), x, grad_padded)
    return grad


def _scaled_guides(guide: torch.Tensor, sigma_intensity: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = guide / (sqrt(2) sigma_intensity)`` and its padded copy, so that ``log w = -||dh||^2 - const``."""
    h = guide / (math.sqrt(2.0) * sigma_intensity)
    return h, _pad(h, pad)


def _neg_log_weight(
    h_pad: torch.Tensor,
    h: torch.Tensor,
    window: tuple[slice, ...],
    shift: torch.Tensor,
    diff: torch.Tensor,
    d2: torch.Tensor,
) -> None:
    """Fill ``diff = h(x + o) - h(x)`` and ``d2 = ||diff||^2 + shift`` (``-log w``) in preallocated buffers."""
    torch.sub(h_pad[window], h, out=diff)
    if diff.shape[1] == 1:
        torch.addcmul(shift, diff, diff, out=d2)
    else:
        _squared_norm(diff, d2).add_(shift)


def _squared_norm(diff: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = sum_c diff_c^2`` (channel axis kept), without temporaries for one channel."""
    if diff.shape[1] == 1:
        return torch.mul(diff, diff, out=out)
    return torch.sum(diff.square(), dim=1, keepdim=True, out=out)


def _filter_traceable(
    ddf: torch.Tensor,
    guide: torch.Tensor,
    sigma_spatial: torch.Tensor,
    sigma_intensity: torch.Tensor,
    radius: int,
    dilation: int,
) -> torch.Tensor:
    """The forward of :class:`_BilateralFieldFunction` out of place, for ``torch.jit.trace`` and ONNX export (a
    Python ``autograd.Function`` cannot be exported). Windows are sliced from both ends of the padded tensors, so
    the traced graph holds no image size and works at any input size."""
    dims = ddf.ndim - 2
    pad = radius * dilation
    view = (-1,) + (1,) * (dims + 1)
    inv_2ss2 = 0.5 / sigma_spatial.reshape(view).square()
    h, h_pad = _scaled_guides(guide, sigma_intensity.reshape(view), pad)
    ddf_pad = _pad(ddf, pad)
    num, den = torch.zeros_like(ddf), torch.zeros_like(ddf[:, :1])
    for offset in _offsets(dims, radius):
        win = (slice(None), slice(None)) + tuple(
            slice(pad + o * dilation, -(pad - o * dilation) or None) for o in offset
        )
        diff = h_pad[win] - h
        w = torch.exp(-((diff * diff).sum(dim=1, keepdim=True) + _dist2(offset, dilation) * inv_2ss2))
        num = num + w * ddf_pad[win]
        den = den + w
    return num / den


class _BilateralFieldFunction(torch.autograd.Function):
    """Joint bilateral filter with a recomputing backward (see the module docstring).

    With ``h = guide / (sqrt(2) sigma_intensity)`` and ``c_o = |o|^2 / (2 sigma_spatial^2)`` the weights are
    ``w_o = exp(-||h(x + o) - h(x)||^2 - c_o)``; all per-offset work reuses a handful of preallocated buffers.
    """

    @staticmethod
    def forward(
        ctx,
        ddf: torch.Tensor,
        guide: torch.Tensor,
        sigma_spatial: torch.Tensor,
        sigma_intensity: torch.Tensor,
        radius: int,
        dilation: int,
    ) -> torch.Tensor:
        dims = ddf.ndim - 2
        size = tuple(ddf.shape[2:])
        pad = radius * dilation
        view = (-1,) + (1,) * (dims + 1)  # sigmas: () or (B,) -> broadcast over (B, 1, *S)
        ss, si = sigma_spatial.reshape(view), sigma_intensity.reshape(view)
        inv_2ss2 = 0.5 / ss.square()
        h, h_pad = _scaled_guides(guide, si, pad)
        ddf_pad = _pad(ddf, pad)
        num = torch.zeros_like(ddf)
        den = torch.zeros_like(ddf[:, :1])
        diff, w = torch.empty_like(h), torch.empty_like(den)
        for offset in _offsets(dims, radius):
            win = _window(offset, pad, dilation, size)
            _neg_log_weight(h_pad, h, win, _dist2(offset, dilation) * inv_2ss2, diff, w)
            w.neg_().exp_()
            num.addcmul_(w, ddf_pad[win])
            den.add_(w)
        out = num.div_(den)  # den >= 1: the zero offset always contributes weight exp(0) = 1
        ctx.save_for_backward(ddf, guide, sigma_spatial, sigma_intensity, out, den)
        ctx.radius, ctx.dilation = radius, dilation
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        ddf, guide, sigma_spatial, sigma_intensity, out, den = ctx.saved_tensors
        radius, dilation = ctx.radius, ctx.dilation
        need_ddf, need_guide, need_ss, need_si = ctx.needs_input_grad[:4]
        dims, batch = ddf.ndim - 2, ddf.shape[0]
        size = tuple(ddf.shape[2:])
        pad = radius * dilation
        view = (-1,) + (1,) * (dims + 1)
        ss, si = sigma_spatial.reshape(view), sigma_intensity.reshape(view)
        inv_2ss2 = 0.5 / ss.square()
        h, h_pad = _scaled_guides(guide, si, pad)
        ddf_pad = _pad(ddf, pad)

        # out = N / Z  =>  dL/dw_o = a . (u_o - out) with a = g / Z;  e_o = w_o dL/dw_o = dL/d(log w_o)
        a = grad_out / den
        neg_a_dot_out = -(a * out).sum(dim=1, keepdim=True)
        need_e = need_guide or need_ss or need_si
        grad_ddf_pad = torch.zeros_like(ddf_pad) if need_ddf else None
        grad_h = torch.zeros_like(h) if need_guide else None
        grad_h_pad = torch.zeros_like(h_pad) if need_guide else None
        acc_ss = ddf.new_zeros(batch) if need_ss else None  # sum_o |o|^2 sum_x e_o, per batch element
        acc_si = ddf.new_zeros(batch) if need_si else None  # sum_o sum_x e_o ||dh_o||^2, per batch element
        diff, d2, w, e = torch.empty_like(h), torch.empty_like(den), torch.empty_like(den), torch.empty_like(den)
        for offset in _offsets(dims, radius):
            win = _window(offset, pad, dilation, size)
            dist2 = _dist2(offset, dilation)
            _neg_log_weight(h_pad, h, win, dist2 * inv_2ss2, diff, w)
            w.neg_().exp_()
            if need_ddf:
                grad_ddf_pad[win].addcmul_(w, a)
            if not need_e:
                continue
            u_o = ddf_pad[win]
            e.copy_(neg_a_dot_out)
            for k in range(dims):
                e.addcmul_(a[:, k : k + 1], u_o[:, k : k + 1])
            e.mul_(w)
            if need_ss and dist2 > 0:
                acc_ss.add_(e.reshape(batch, -1).sum(dim=1), alpha=dist2)
            if need_si:  # ||dh||^2 without the spatial shift
                _squared_norm(diff, d2)
                acc_si.add_(torch.linalg.vecdot(e.reshape(batch, -1), d2.reshape(batch, -1)))
            if need_guide:  # d(log w)/dh(x + o) = -2 dh, d(log w)/dh(x) = +2 dh
                grad_h.addcmul_(e, diff, value=2.0)
                grad_h_pad[win].addcmul_(e, diff, value=-2.0)

        def _to_sigma(grad: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return (grad.sum() if sigma.numel() == 1 else grad).reshape(sigma.shape)

        g_ddf = _unpad_adjoint(grad_ddf_pad, ddf.shape, pad) if need_ddf else None
        g_guide = None
        if need_guide:
            g_guide = (grad_h + _unpad_adjoint(grad_h_pad, h.shape, pad)) / (math.sqrt(2.0) * si)
        # d(log w)/d sigma_spatial = |o|^2 / sigma_spatial^3;  d(log w)/d sigma_intensity = 2 ||dh||^2 / sigma_intensity
        g_ss = _to_sigma(acc_ss / sigma_spatial.reshape(-1).pow(3), sigma_spatial) if need_ss else None
        g_si = _to_sigma(2.0 * acc_si / sigma_intensity.reshape(-1), sigma_intensity) if need_si else None
        return g_ddf, g_guide, g_ss, g_si, None, None


def _check_shapes(ddf: torch.Tensor, guide: torch.Tensor, kernel_size: int, dilation: int, caller: str) -> int:
    dims = check_ddf(ddf, "ddf", caller, finite=False)
    if not isinstance(guide, torch.Tensor):
        raise TypeError(f"{caller}: `guide` must be a torch.Tensor, got {type(guide).__name__}.")
    if guide.ndim != ddf.ndim or guide.shape[0] != ddf.shape[0] or guide.shape[2:] != ddf.shape[2:]:
        raise ValueError(
            f"{caller}: `guide` must have shape (B, C, *S) = ({ddf.shape[0]}, C, {', '.join(map(str, ddf.shape[2:]))}) "
            f"to match `ddf` shape {tuple(ddf.shape)}, got shape {tuple(guide.shape)}."
        )
    if guide.shape[1] < 1:
        raise ValueError(f"{caller}: `guide` needs at least one channel, got shape {tuple(guide.shape)}.")
    if isinstance(kernel_size, bool) or int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"{caller}: `kernel_size` must be an odd integer >= 1, got {kernel_size!r} "
            f"(ddf shape {tuple(ddf.shape)}, guide shape {tuple(guide.shape)})."
        )
    if isinstance(dilation, bool) or int(dilation) != dilation or dilation < 1:
        raise ValueError(f"{caller}: `dilation` must be an integer >= 1, got {dilation!r}.")
    return dims


def _as_sigma(sigma: float | torch.Tensor, name: str, ref: torch.Tensor, check: bool, caller: str) -> torch.Tensor:
    """Sigma as a tensor on ``ref``'s device/dtype, with one value or one per batch element."""
    batch = ref.shape[0]
    if isinstance(sigma, torch.Tensor):
        if sigma.numel() not in (1, batch):
            raise ValueError(
                f"{caller}: `{name}` must be a scalar or have {batch} values (one per batch element of ddf "
                f"shape {tuple(ref.shape)}), got shape {tuple(sigma.shape)}."
            )
        value = sigma.to(dtype=ref.dtype, device=ref.device)
    else:
        value = torch.tensor(float(sigma), dtype=ref.dtype, device=ref.device)
    if check and not bool(torch.isfinite(value).all() and (value > 0).all()):
        shown = value.detach().cpu().flatten().tolist()
        raise ValueError(f"{caller}: `{name}` must be positive and finite, got {shown} (ddf shape {tuple(ref.shape)}).")
    return value


def bilateral_filter_field(
    ddf: torch.Tensor,
    guide: torch.Tensor,
    kernel_size: int = 5,
    sigma_spatial: float | torch.Tensor = 1.0,
    sigma_intensity: float | torch.Tensor = 0.1,
    dilation: int = 1,
) -> torch.Tensor:
    """Joint (cross) bilateral filter of a displacement field, guided by an image on the same grid.

    ``out(x) = sum_o w(x, o) ddf(x + o) / sum_o w(x, o)`` over the ``kernel_size**D`` window, with
    ``w(x, o) = exp(-|o|^2 / (2 sigma_spatial^2)) * exp(-||guide(x + o) - guide(x)||^2 / (2 sigma_intensity^2))``,
    ``|o|`` in voxels (offsets are multiples of ``dilation``). Borders use replicate padding, so a constant
    field is returned unchanged. Each output is a convex combination of input vectors, so the filter never
    increases ``max |ddf|``. Differentiable w.r.t. ``ddf``, ``guide`` and both sigmas (first order only; the
    backward recomputes the weights, so memory does not grow with the kernel size).

    Args:
        ddf: ``(B, D, *S)`` displacement in voxels (:mod:`common.conventions`), ``D == len(S)`` in {2, 3}.
        guide: ``(B, C, *S)`` guide image on the field's grid (in registration: the fixed image), in its own
            intensity units; several channels are compared with the Euclidean norm.
        kernel_size: odd window width in taps (``1`` returns ``ddf``).
        sigma_spatial: spatial standard deviation in voxels; float, scalar tensor or ``(B,)`` tensor.
        sigma_intensity: range standard deviation in guide intensity units (e.g. 0.1 for images in [0, 1]);
            float, scalar tensor or ``(B,)`` tensor.
        dilation: spacing between taps in voxels (the window spans ``(kernel_size - 1) * dilation + 1``).

    Returns:
        ``(B, D, *S)`` filtered displacement in voxels, dtype of ``ddf``.

    Raises:
        ValueError: bad ``ddf`` shape, ``guide`` batch/spatial size differing from ``ddf``, even or
            non-positive ``kernel_size``, non-positive ``dilation`` or non-positive / non-finite sigmas.

    References:
        Tomasi and Manduchi, "Bilateral filtering for gray and color images", ICCV 1998.
    """
    _check_shapes(ddf, guide, kernel_size, dilation, _NAME)
    ss = _as_sigma(sigma_spatial, "sigma_spatial", ddf, True, _NAME)
    si = _as_sigma(sigma_intensity, "sigma_intensity", ddf, True, _NAME)
    if torch.jit.is_tracing():
        return _filter_traceable(ddf, guide.to(ddf.dtype), ss, si, int(kernel_size) // 2, int(dilation))
    return _BilateralFieldFunction.apply(ddf, guide.to(ddf.dtype), ss, si, int(kernel_size) // 2, int(dilation))


class BilateralFieldFilter(nn.Module):
    """Image-guided bilateral filter of a predicted displacement field ("BF" of Zhang et al. 2024).

    The network's field is smoothed with weights depending on the spatial distance and on the difference
    of the **fixed** image's intensities (the field lives on the fixed grid, :mod:`common.conventions`),
    so it stays sharp across anatomical edges and is smoothed inside homogeneous tissue. The filter acts on
    the field in **voxels**; ``sigma_spatial`` is in voxels. The sigmas are stored as logarithms, so they stay
    positive while being trained.

    Args:
        spatial_dims: 2 or 3.
        kernel_size: odd window width in taps.
        sigma_spatial: initial spatial standard deviation in voxels.
        sigma_intensity: initial range standard deviation in guide intensity units.
        learnable: store ``log_sigma_spatial`` / ``log_sigma_intensity`` as ``nn.Parameter`` (else buffers).
        dilation: spacing between taps in voxels.

    References:
        Zhang et al., "Large Scale Unsupervised Brain MRI Image Registration Solution for Learn2Reg 2024",
        arXiv:2409.00917, 2024.

        Tomasi and Manduchi, "Bilateral filtering for gray and color images", ICCV 1998.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        kernel_size: int = 5,
        sigma_spatial: float = 1.0,
        sigma_intensity: float = 0.1,
        learnable: bool = True,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        name = "BilateralFieldFilter"
        if spatial_dims not in (2, 3):
            raise ValueError(f"{name}: `spatial_dims` must be 2 or 3, got {spatial_dims!r}.")
        if isinstance(kernel_size, bool) or int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{name}: `kernel_size` must be an odd integer >= 1, got {kernel_size!r}.")
        if isinstance(dilation, bool) or int(dilation) != dilation or dilation < 1:
            raise ValueError(f"{name}: `dilation` must be an integer >= 1, got {dilation!r}.")
        for key, value in (("sigma_spatial", sigma_spatial), ("sigma_intensity", sigma_intensity)):
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"{name}: `{key}` must be positive and finite, got {value!r}.")
        self.spatial_dims, self.kernel_size, self.dilation = int(spatial_dims), int(kernel_size), int(dilation)
        self.learnable = bool(learnable)
        log_ss = torch.tensor(math.log(float(sigma_spatial)))
        log_si = torch.tensor(math.log(float(sigma_intensity)))
        if self.learnable:
            self.log_sigma_spatial = nn.Parameter(log_ss)
            self.log_sigma_intensity = nn.Parameter(log_si)
        else:
            self.register_buffer("log_sigma_spatial", log_ss)
            self.register_buffer("log_sigma_intensity", log_si)

    @property
    def sigma_spatial(self) -> torch.Tensor:
        """Spatial standard deviation in voxels (scalar tensor)."""
        return self.log_sigma_spatial.exp()

    @property
    def sigma_intensity(self) -> torch.Tensor:
        """Range standard deviation in guide intensity units (scalar tensor)."""
        return self.log_sigma_intensity.exp()

    def forward(self, ddf: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Args: ddf ``(B, D, *S)`` displacement in voxels; guide ``(B, C, *S)`` fixed image. Returns ``(B, D, *S)``."""
        name = "BilateralFieldFilter"
        dims = _check_shapes(ddf, guide, self.kernel_size, self.dilation, name)
        if dims != self.spatial_dims:
            raise ValueError(
                f"{name}: built for {self.spatial_dims}D fields, got ddf shape {tuple(ddf.shape)} ({dims}D)."
            )
        # exp() of the log-parameters is positive by construction: no value check (avoids a device sync)
        ss = _as_sigma(self.sigma_spatial, "sigma_spatial", ddf, False, name)
        si = _as_sigma(self.sigma_intensity, "sigma_intensity", ddf, False, name)
        if torch.jit.is_tracing():  # export: the same filter without the Python autograd.Function
            return _filter_traceable(ddf, guide.to(ddf.dtype), ss, si, self.kernel_size // 2, self.dilation)
        return _BilateralFieldFunction.apply(ddf, guide.to(ddf.dtype), ss, si, self.kernel_size // 2, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"sigma_spatial={self.sigma_spatial.item():.4g}, sigma_intensity={self.sigma_intensity.item():.4g}, "
            f"learnable={self.learnable}"
        )
