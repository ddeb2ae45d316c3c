"""Local NCC against one fixed image, with its window statistics computed once and an analytic gradient.

Instance optimisation compares many warped versions of the moving image with the *same* fixed image. The value
here is exactly :class:`common.losses.LocalNCCLoss`'s (rectangular window, zero padding, each image centred by its
global mean, window variances clamped at ``smooth_dr``, ``1 - clamp(LNCC^2, 0, 1)`` averaged over voxels and
channels), but

* the fixed image's window sums (``sum t``, ``sum t^2``) are computed once, in the constructor;
* the forward pass filters three maps (``p``, ``p^2``, ``p t``) instead of five, with sums of shifted slices
  (no convolution), and stores only the three per-voxel gradient coefficients;
* the backward pass is three more box sums (a zero-padded symmetric box sum is its own adjoint):
  ``dL/dp = B(a) + 2 p B(b) + t B(c)`` with ``a, b, c`` the loss's derivatives by the window sums
  ``sum p``, ``sum p^2``, ``sum p t``; then the global-mean centring's ``- mean(dL/dp)``.

Measured on this 2-core CPU for one 1 mm brain (``1x1x160x192x224``, window 5), forward + backward: see
:class:`FixedImageLNCC`. Tested against :class:`~common.losses.LocalNCCLoss` (value and gradient) and by
``gradcheck`` in float64.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FixedImageLNCC", "box_sum"]


def box_sum(x: torch.Tensor, width: int) -> torch.Tensor:
    """Sum over a ``width^D`` box around every voxel of ``x`` ``(B, C, *S)``, zero padding, same size (a new tensor).

    Separable: along each spatial axis the input is added to itself shifted by ``1 .. width // 2`` voxels either
    way (in place on one copy; exactly the sums of a convolution with a box of ones).
    """
    radius = int(width) // 2
    out = x
    for axis in range(2, x.ndim):
        src, out = out, out.clone()
        n = x.shape[axis]
        for j in range(1, min(radius, n - 1) + 1):
            out.narrow(axis, j, n - j).add_(src.narrow(axis, 0, n - j))
            out.narrow(axis, 0, n - j).add_(src.narrow(axis, j, n - j))
    return out if out is not x else x.clone()


class _LNCCAgainstFixed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, t, st, tv, width: int, smooth_dr: float):  # type: ignore[override]
        axes = tuple(range(2, pred.ndim))
        channels = pred.shape[1]
        p = pred - pred.mean(dim=axes, keepdim=True)
        sp, spp, spt = box_sum(torch.cat([p, p * p, p * t], dim=1), width).split(channels, dim=1)
        vol = float(width ** len(axes))
        cross = spt - sp * st / vol
        pv_raw = spp - sp * sp / vol
        pv = pv_raw.clamp(min=smooth_dr)
        denom = pv * tv
        cc2 = cross * cross / denom
        value = (1.0 - cc2.clamp(0.0, 1.0)).mean()
        if ctx.needs_input_grad[0]:
            # dL/d cc2 = -1/N where the clamp passes it; chain through cross and the clamped moving variance
            g_cc2 = (cc2 <= 1.0).to(pred.dtype).mul_(-1.0 / cc2.numel())
            g_cross = g_cc2 * 2.0 * cross / denom
            g_pv = g_cc2 * (-cc2 / pv) * (pv_raw >= smooth_dr).to(pred.dtype)
            g_sp = -(g_cross * st + 2.0 * g_pv * sp) / vol
            ctx.save_for_backward(p, t, torch.cat([g_sp, g_pv, g_cross], dim=1))
        ctx.width, ctx.channels = width, channels
        return value

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        p, t, coeff = ctx.saved_tensors
        a, b, c = box_sum(coeff, ctx.width).split(ctx.channels, dim=1)
        g = a + 2.0 * p * b + t * c
        axes = tuple(range(2, g.ndim))
        g = g - g.mean(dim=axes, keepdim=True)  # through p = pred - mean(pred)
        return grad_output * g, None, None, None, None, None


class FixedImageLNCC(nn.Module):
    """``mean(1 - clamp(LNCC^2, 0, 1))`` of ``pred`` against the fixed ``target`` given once (module docstring).

    Same value as ``LocalNCCLoss(kernel_size)(pred, target)`` (rectangular window), to rounding; the gradient is
    computed analytically and only for ``pred``. Measured on this CPU, one thread (another job on the second core),
    ``1x1x160x192x224``, window 5, forward + backward: 0.84 s vs 2.53 s for :class:`~common.losses.LocalNCCLoss`
    (which recomputes its checkpointed slabs in the backward pass); a whole 1 mm step of the instance optimiser
    2.9 s vs 4.3 s. Between the passes it holds the centred moving image and three gradient-coefficient maps
    (the fixed image and its two window-sum maps are held by the module).

    Sign, range, optimum: ``[0, 1]``, ``0`` when every window of ``pred`` is a non-constant affine function of
    the same window of ``target``.

    Args:
        target: the fixed image ``(B, C, *S)`` (2D or 3D), float32 or float64.
        kernel_size: odd window width in voxels.
        smooth_dr: lower clamp of the window variance sums (intensity units squared).
    """

    def __init__(self, target: torch.Tensor, kernel_size: int = 9, smooth_dr: float = 1e-5) -> None:
        super().__init__()
        name = type(self).__name__
        if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{name}: `kernel_size` must be a positive odd integer, got {kernel_size}.")
        if target.ndim not in (4, 5):
            raise ValueError(f"{name}: target must be (B, C, H, W[, D]), got shape {tuple(target.shape)}.")
        self.kernel_size, self.smooth_dr = int(kernel_size), float(smooth_dr)
        with torch.no_grad():
            target = target.detach()
            axes = tuple(range(2, target.ndim))
            t = target - target.mean(dim=axes, keepdim=True)
            st, stt = box_sum(torch.cat([t, t * t], dim=1), self.kernel_size).split(t.shape[1], dim=1)
            vol = float(self.kernel_size ** len(axes))
            tv = (stt - st * st / vol).clamp(min=self.smooth_dr)
        self.register_buffer("t", t, persistent=False)
        self.register_buffer("st", st, persistent=False)
        self.register_buffer("tv", tv, persistent=False)

    def forward(self, pred: torch.Tensor) -> torch.Tensor:
        if pred.shape != self.t.shape:
            raise ValueError(
                f"{type(self).__name__}: pred {tuple(pred.shape)} must have the fixed image's shape {tuple(self.t.shape)}."
            )
        pred = pred.to(self.t.dtype)
        return _LNCCAgainstFixed.apply(pred, self.t, self.st, self.tv, self.kernel_size, self.smooth_dr)
