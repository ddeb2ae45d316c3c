"""Scaling and squaring: stationary velocity field (SVF) -> diffeomorphic displacement field."""

from __future__ import annotations

import torch
from torch import nn

from common.blocks.warp import Warp
from common.conventions import DEFAULT_INTEGRATION_STEPS, check_ddf

__all__ = ["integrate_velocity", "VelocityIntegrator"]


class VelocityIntegrator(nn.Module):
    """Integrate an SVF ``v`` into ``phi = exp(v)`` by scaling and squaring.

    ``u_0 = v / 2**N``; ``u_{i+1} = u_i + u_i o (id + u_i)``. Same algorithm as MONAI ``DVF2DDF``, but with
    border padding (MONAI's default zero padding drags the field to 0 outside the image, so even a
    constant SVF does not integrate to itself near the border) and input checks. ``exp(-v)`` is the
    inverse of ``exp(v)`` up to discretisation error.

    Args:
        num_steps: number of squaring steps N (default 7).
        padding_mode: grid_sample padding used when composing (``"border"`` default).
    """

    def __init__(self, num_steps: int = DEFAULT_INTEGRATION_STEPS, padding_mode: str = "border") -> None:
        super().__init__()
        if int(num_steps) < 0:
            raise ValueError(f"VelocityIntegrator: num_steps must be >= 0, got {num_steps}.")
        self.num_steps = int(num_steps)
        self.warp = Warp(mode="bilinear", padding_mode=padding_mode)

    def forward(self, svf: torch.Tensor) -> torch.Tensor:
        """Args: svf ``(B, D, *S)`` velocity in voxels. Returns the displacement ``(B, D, *S)`` in voxels."""
        check_ddf(svf, "svf", "VelocityIntegrator")
        ddf = svf / (2**self.num_steps)
        for _ in range(self.num_steps):
            ddf = ddf + self.warp(ddf, ddf)
        return ddf


def integrate_velocity(svf: torch.Tensor, num_steps: int = DEFAULT_INTEGRATION_STEPS) -> torch.Tensor:
    """Functional form of :class:`VelocityIntegrator`."""
    return VelocityIntegrator(num_steps)(svf)
