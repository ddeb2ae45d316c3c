"""Dalca et al. 2018's network: the shared VoxelMorph-style U-Net with a Gaussian posterior head."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from common.networks.voxelmorph import RegUNet

__all__ = ["ProbabilisticRegUNet"]


class ProbabilisticRegUNet(RegUNet):
    """:class:`RegUNet` predicting a Gaussian posterior over a velocity field: ``[mu, log_var]`` (``2 D`` channels).

    Dalca et al. 2018's VoxelMorph-diff. The head starts at ``mu = 0`` and ``log_var = log_var_init`` (a tiny
    posterior variance, so early samples are near the mean; VoxelMorph's public code starts at -10).

    Args:
        log_var_init: initial log-variance (bias of the last ``D`` output channels).
        Other arguments: as :class:`RegUNet` (``out_channels`` is fixed to ``2 * spatial_dims``).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        enc_channels: Sequence[int] = (16, 32, 32, 32),
        dec_channels: Sequence[int] = (32, 32, 32, 32, 16, 16),
        half_res: bool = True,
        log_var_init: float = -10.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, enc_channels, dec_channels, half_res, 2 * spatial_dims)
        with torch.no_grad():
            self.flow.conv.bias[spatial_dims:] = float(log_var_init)
