"""Shared-stream U-Net predicting cubic B-spline control points at several levels (Hering et al. 2019).

The fixed and moving images first pass, separately, through the same small feature stream (shared weights);
the two feature maps are concatenated and encoded further; a decoder predicts control-point displacements at
``len(strides)`` levels, coarse to fine. Each level is a complete prediction of the transform (deep
supervision); the loss is a weighted sum over levels and inference uses only the finest level.

Bundle contract: ``forward`` takes ONE tensor ``[moving, fixed]`` and returns ONE tensor, the finest control
grid ``(B, D, *C)`` in voxels of the image grid (:class:`common.engines.registration.BSplineToDDF` turns it into
a displacement). :meth:`SharedStreamBSplineNet.forward_levels` returns every level (coarse to fine); training wraps
the network in :class:`AllLevels`, whose ``forward`` returns that list, so the multi-level loss
(:class:`common.methods.ngf_bspline.MultiLevelRegistrationLoss`) receives the levels as the prediction itself (also
through a ``DistributedDataParallel`` wrapper, whose forward is the only one that synchronises gradients).

References:
    Hering A, Kuckertz S, Heldmann S, Heinrich MP. Enhancing Label-Driven Deep Deformable Image Registration
    with Local Distance Metrics for State-of-the-Art Cardiac Motion Tracking. BVM 2019.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from common.blocks.bspline import control_grid_shape
from common.networks.voxelmorph import FlowHead

__all__ = ["AllLevels", "SharedStreamBSplineNet"]


def _block(dims: int, cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    act = ("leakyrelu", {"negative_slope": 0.2})
    return nn.Sequential(
        Convolution(dims, cin, cout, strides=stride, kernel_size=3, act=act, norm="instance"),
        Convolution(dims, cout, cout, kernel_size=3, act=act, norm="instance"),
    )


class SharedStreamBSplineNet(nn.Module):
    """Args:
    spatial_dims: 2 (cine short-axis slices) or 3.
    image_size: input spatial size (control grids are sized for it; other sizes are refused).
    strides: control-point spacing in voxels per level, coarse to fine (default 16, 8, 4).
    stream_channels: channels of the shared per-image stream (each entry halves the resolution).
    enc_channels: channels of the joint encoder after the streams are concatenated.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        image_size: Sequence[int] = (112, 112),
        strides: Sequence[int] = (16, 8, 4),
        stream_channels: Sequence[int] = (16, 32),
        enc_channels: Sequence[int] = (64, 64),
    ) -> None:
        super().__init__()
        self.dims, self.image_size = spatial_dims, tuple(int(s) for s in image_size)
        if len(self.image_size) != spatial_dims:
            raise ValueError(f"SharedStreamBSplineNet: image_size {self.image_size} must have {spatial_dims} entries.")
        self.strides = tuple(int(s) for s in strides)
        self.grids = [control_grid_shape(self.image_size, s) for s in self.strides]
        stream, prev = [], 1
        for i, c in enumerate(stream_channels):
            stream.append(_block(spatial_dims, prev, c, stride=1 if i == 0 else 2))
            prev = c
        self.stream = nn.Sequential(*stream)
        self.encoder = nn.ModuleList()
        prev *= 2
        for c in enc_channels:
            self.encoder.append(_block(spatial_dims, prev, c, stride=2))
            prev = c
        skip = 2 * stream_channels[-1]
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for _ in self.strides:
            self.decoder.append(_block(spatial_dims, prev + skip, prev))
            self.heads.append(FlowHead(spatial_dims, prev))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The finest control grid ``(B, D, *C)`` (the bundle contract: one tensor in, one out)."""
        return self.forward_levels(x)[-1]

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every level's control grid, coarse to fine (what the multi-level loss needs)."""
        if x.ndim != self.dims + 2 or x.shape[1] != 2:
            raise ValueError(
                f"SharedStreamBSplineNet: expected (B, 2, *S) [moving, fixed] with {self.dims} spatial dims, got shape {tuple(x.shape)}."
            )
        if tuple(x.shape[2:]) != self.image_size:
            raise ValueError(
                f"SharedStreamBSplineNet: input size {tuple(x.shape[2:])} != image_size {self.image_size}; crop or "
                "resample first (the bundle's inference does)."
            )
        moving, fixed = self.stream(x[:, :1]), self.stream(x[:, 1:])
        joint = torch.cat([moving, fixed], dim=1)
        h = joint
        for enc in self.encoder:
            h = enc(h)
        mode = "bilinear" if self.dims == 2 else "trilinear"
        levels = []
        for dec, head, grid in zip(self.decoder, self.heads, self.grids):
            up = F.interpolate(h, size=grid, mode=mode, align_corners=True)
            skip = F.interpolate(joint, size=grid, mode=mode, align_corners=True)
            h = dec(torch.cat([up, skip], dim=1))
            levels.append(head(h))
        return levels


class AllLevels(nn.Module):
    """Training view of a multi-level network: ``forward`` returns ``network.forward_levels(x)`` (coarse to fine).

    The wrapped network is a submodule, so the optimiser, checkpoints and a ``DistributedDataParallel`` wrapper around
    this module see the same parameters; save and load the network itself (its keys carry no prefix).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(network, "forward_levels", None)):
            raise TypeError(f"AllLevels: {type(network).__name__} has no forward_levels(x) returning its levels.")
        self.network = network

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.network.forward_levels(x)
