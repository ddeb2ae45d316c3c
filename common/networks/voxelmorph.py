"""VoxelMorph-style U-Net whose flow head can sit at full or half resolution.

MONAI's ``VoxelMorphUNet`` always decodes back to full resolution, and ``VoxelMorph(half_res=True)`` only
integrates at half resolution (scaling the vectors the wrong way, see ``tests/conventions``). Han et al. 2021
predict the displacement at **half** the input resolution by dropping the last decoder stage, which is what
``half_res=True`` does here. The output is a :mod:`common.conventions` displacement in voxels of the
OUTPUT grid (half-size grid when ``half_res``); :class:`common.engines.registration.ResizeToDDF` brings it to
the input grid with rescaled vectors.

References:
    Balakrishnan et al., "VoxelMorph: A Learning Framework for Deformable Medical Image Registration",
    IEEE TMI 2019. Han et al., "Deformable Registration of Brain MR Images via a Hybrid Loss", Learn2Reg 2021.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["RegUNet", "FlowHead", "check_pair_input"]


def _conv(dims: int, cin: int, cout: int, stride: int = 1) -> Convolution:
    return Convolution(
        dims, cin, cout, strides=stride, kernel_size=3, act=("leakyrelu", {"negative_slope": 0.2}), norm=None
    )


def check_pair_input(
    x: torch.Tensor,
    name: str,
    dims: int,
    channels: int,
    factor: int,
    hint: str = "pad the input (the bundles' inference pads to a multiple of 16)",
) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``x`` is ``(B, channels, *S)`` with ``dims`` spatial dims, each
    divisible by ``factor`` (the registration networks' shared input check)."""
    if not isinstance(x, torch.Tensor) or x.ndim != dims + 2 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{name}: expected input (B, {channels}, *S) with {dims} spatial dims ([moving, fixed]), got shape {shape}."
        )
    if any(int(s) % factor for s in x.shape[2:]):
        raise ValueError(
            f"{name}: spatial size {tuple(x.shape[2:])} must be divisible by {factor} (input shape "
            f"{tuple(x.shape)}); {hint}."
        )


class FlowHead(nn.Module):
    """3x3(x3) convolution to ``dims`` channels, initialised near zero (the network starts at identity)."""

    def __init__(self, dims: int, cin: int, out_channels: int | None = None, init_std: float = 1e-5) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.conv = conv(cin, out_channels or dims, kernel_size=3, padding=1)
        nn.init.normal_(self.conv.weight, 0.0, init_std)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class RegUNet(nn.Module):
    """U-Net over ``[moving, fixed]`` predicting a displacement (or velocity) field.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (2: moving and fixed).
        enc_channels: channels of the encoder levels; each level halves the resolution with a stride-2 conv
            (VoxelMorph: ``(16, 32, 32, 32)``; Han et al.'s "c64": ``(64, 64, 64, 64)``).
        dec_channels: channels of the decoder convolutions, one per upsampling level (``len(enc_channels)``
            of them), followed by any number of extra full(or half)-resolution convolutions.
        half_res: stop decoding one level early and predict at half resolution (Han et al. 2021).
        out_channels: channels of the prediction (default ``spatial_dims``; e.g. ``2 * dims`` for a mean and a
            log-variance).

    Input ``(B, in_channels, *S)`` with every ``S`` divisible by ``2 ** len(enc_channels)``; output
    ``(B, out_channels, *S')`` with ``S' = S`` or ``S // 2`` when ``half_res``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        enc_channels: Sequence[int] = (16, 32, 32, 32),
        dec_channels: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        half_res: bool = False,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"RegUNet: spatial_dims must be 2 or 3, got {spatial_dims}.")
        levels = len(enc_channels)
        if len(dec_channels) < levels:
            raise ValueError(f"RegUNet: need at least {levels} dec_channels for {levels} encoder levels.")
        self.dims, self.levels, self.half_res = spatial_dims, levels, bool(half_res)
        self.in_channels = in_channels
        self.encoder = nn.ModuleList()
        prev, skips = in_channels, [in_channels]
        for c in enc_channels:
            self.encoder.append(_conv(spatial_dims, prev, c, stride=2))
            prev = c
            skips.append(c)
        self.decoder = nn.ModuleList()
        n_up = levels - 1 if half_res else levels
        for i in range(n_up):
            skip = skips[levels - 1 - i]
            self.decoder.append(_conv(spatial_dims, prev + skip, dec_channels[i]))
            prev = dec_channels[i]
        self.extra = nn.Sequential(
            *[_conv(spatial_dims, c_in, c_out) for c_in, c_out in self._extra(prev, dec_channels[levels:])]
        )
        prev = dec_channels[-1] if len(dec_channels) > levels else prev
        self.flow = FlowHead(spatial_dims, prev, out_channels)

    @staticmethod
    def _extra(prev: int, chans: Sequence[int]) -> list[tuple[int, int]]:
        pairs = []
        for c in chans:
            pairs.append((prev, c))
            prev = c
        return pairs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_pair_input(x, "RegUNet", self.dims, self.in_channels, 2**self.levels)
        feats = [x]
        h = x
        for enc in self.encoder:
            h = enc(h)
            feats.append(h)
        for i, dec in enumerate(self.decoder):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = dec(torch.cat([h, feats[self.levels - 1 - i]], dim=1))
        return self.flow(self.extra(h))
