"""Encoder + cascaded coarse-to-fine field estimators for unsupervised brain registration (LUMIR 2024).

Zhang et al. 2024 (2nd on the Learn2Reg 2024 LUMIR test leaderboard) build on an "encoder-only" design: one
convolutional encoder, shared by the moving and the fixed image, gives a feature pyramid; small field
estimators then predict the displacement coarse to fine, each level warping the moving features with the field
so far and adding a residual. The paper ablates four options, each a switch here:

* ``large_kernel`` (LK): encoder blocks with parallel ``k^D``, ``3^D`` and ``1^D`` convolutions plus identity
  (LKU-Net style) instead of plain ``3^D`` blocks;
* ``co_attention`` (CA): cross-attention between the moving and fixed features in the lowest
  (coarsest) ``ca_levels`` encoder levels, so each stream sees the other before the fields are estimated;
* ``bilateral`` (BF): the final field is smoothed by an image-guided bilateral filter
  (:class:`common.blocks.bilateral.BilateralFieldFilter`, guided by the fixed image);
* ``flow_channels`` (LC, "large channels" of the field-prediction stage: 32 vs 64 in the paper) and
  ``cascade_steps`` (refinements per level; the paper's "LC-2" cascade scheme is implemented here as two
  successive warp-and-refine steps per level, our reading of the paper's description: its exact wiring is not
  public in a form we could check).

Residuals are integrated (scaling and squaring, ``integrate=True``) and composed exactly with the field so far
(:func:`common.blocks.compose_ddf`), so each step is diffeomorphic. The output follows
:mod:`common.conventions`: a displacement in voxels of the input grid, pull-back on the fixed grid.

References:
    Zhang Y., Chen X., Wang J., Liu M., Wang Y., Liu D., Hu R., Zhang H. "Large Scale Unsupervised Brain MRI
    Image Registration Solution for Learn2Reg 2024". arXiv:2409.00917, 2024.
    Chen X., et al. "Encoder-Only Image Registration" (EOIR), 2024.
    Jia X., et al. "U-Net vs Transformer: Is U-Net Outdated in Medical Image Registration?" MLMI 2022 (LKU-Net).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.blocks.bilateral import BilateralFieldFilter
from common.blocks.compose import compose_ddf
from common.blocks.integrate import VelocityIntegrator
from common.blocks.resize_flow import resize_flow
from common.blocks.warp import warp
from common.networks.voxelmorph import FlowHead, check_pair_input

__all__ = ["ConvBlock", "LargeKernelBlock", "CoAttention", "CascadeRegNet"]


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv2d if dims == 2 else nn.Conv3d


class _SafeInstanceNorm(nn.InstanceNorm3d):
    """Instance norm (learnt affine, 2D or 3D) that also accepts a single voxel per channel: small inputs reach a
    1-voxel coarsest level, where ``x - mean(x) = 0`` and the output is the bias (torch would raise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0, 0].numel() == 1:
            return torch.zeros_like(x) + self.bias.view(1, -1, *([1] * (x.dim() - 2)))
        return F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def _norm(dims: int, channels: int) -> nn.Module:
    return _SafeInstanceNorm(channels, affine=True)


class ConvBlock(nn.Module):
    """``3^D`` convolution (stride 1 or 2), instance norm, leaky ReLU: the plain encoder block."""

    def __init__(self, dims: int, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = _conv(dims)(cin, cout, 3, stride, 1)
        self.norm = _norm(dims, cout)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class LargeKernelBlock(nn.Module):
    """Parallel ``k^D``, ``3^D`` and ``1^D`` convolutions (each normalised), summed with the input when the
    shapes allow, then PReLU: a large receptive field at the cost of one big kernel (LKU-Net's block).

    Args:
        dims: 2 or 3. cin / cout: channels. kernel_size: the large kernel (odd, e.g. 5). stride: 1 or 2.
    """

    def __init__(self, dims: int, cin: int, cout: int, kernel_size: int = 5, stride: int = 1) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 3:
            raise ValueError(f"LargeKernelBlock: kernel_size must be odd and >= 3, got {kernel_size}.")
        conv = _conv(dims)
        self.large = nn.Sequential(conv(cin, cout, kernel_size, stride, kernel_size // 2), _norm(dims, cout))
        self.small = nn.Sequential(conv(cin, cout, 3, stride, 1), _norm(dims, cout))
        self.point = nn.Sequential(conv(cin, cout, 1, stride, 0), _norm(dims, cout))
        self.residual = cin == cout and stride == 1
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.large(x) + self.small(x) + self.point(x)
        return self.act(y + x if self.residual else y)


class CoAttention(nn.Module):
    """Cross-attention between two feature maps of the same level (co-attention feature fusion).

    Each stream queries the other: ``m' = m + Attn(q=m, k=f, v=f)`` and ``f' = f + Attn(q=f, k=m, v=m)``, with
    voxels as tokens, shared projections for both directions and ``heads`` heads. Keys and values are
    average-pooled to at most ``max_kv_tokens`` tokens (so memory stays bounded at 1 mm); queries keep every
    voxel. The output projection starts at zero: the block starts as the identity.

    Args:
        dims: 2 or 3. channels: feature channels (divisible by ``heads``). heads: attention heads.
        max_kv_tokens: cap on the key/value token count.
    """

    def __init__(self, dims: int, channels: int, heads: int = 4, max_kv_tokens: int = 4096) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"CoAttention: channels ({channels}) must be divisible by heads ({heads}).")
        self.dims, self.heads, self.max_kv_tokens = dims, heads, int(max_kv_tokens)
        self.norm = nn.GroupNorm(1, channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _kv_tokens(self, x: torch.Tensor) -> torch.Tensor:
        size = list(x.shape[2:])
        while torch.Size(size).numel() > self.max_kv_tokens:
            size = [max(1, s // 2) for s in size]
        if size != list(x.shape[2:]):
            pool = F.adaptive_avg_pool2d if self.dims == 2 else F.adaptive_avg_pool3d
            x = pool(x, size)
        return x.flatten(2).transpose(1, 2)

    def _attend(self, query: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        b, c = query.shape[:2]
        q = self.q(query.flatten(2).transpose(1, 2))
        k, v = self.kv(self._kv_tokens(other)).chunk(2, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)

        att = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        att = self.out(att.transpose(1, 2).reshape(b, -1, c))
        return att.transpose(1, 2).reshape(query.shape)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, f = self.norm(moving), self.norm(fixed)
        return moving + self._attend(m, f), fixed + self._attend(f, m)


class _Estimator(nn.Module):
    """Residual field from ``[fixed features, warped moving features]``: two convolutions then a head at ~0."""

    def __init__(self, dims: int, cin: int, width: int) -> None:
        super().__init__()
        conv = _conv(dims)
        self.body = nn.Sequential(
            conv(2 * cin, width, 3, 1, 1), nn.LeakyReLU(0.2), conv(width, width, 3, 1, 1), nn.LeakyReLU(0.2)
        )
        self.head = FlowHead(dims, width)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.cat([fixed, warped], dim=1)))


class CascadeRegNet(nn.Module):
    """Shared encoder + cascaded coarse-to-fine field estimators (Zhang et al. 2024), with the paper's switches.

    Args:
        spatial_dims: 2 or 3.
        enc_channels: channels of the encoder levels, finest first; level ``l`` has ``1 / 2**l`` of the input
            size (level 0 at full resolution). The number of levels is ``len(enc_channels)``.
        flow_channels: width of the field estimators ("sc": 32, large-channel variant 64).
        cascade_steps: warp-and-refine steps per level (1: plain coarse-to-fine; 2: the "LC-2" scheme).
        finest_level: the finest level that estimates a field (0: full resolution; 1: half resolution, the
            field is then upsampled to full size with rescaled vectors, which saves memory at 1 mm).
        large_kernel: LK encoder blocks instead of plain ``3^D`` blocks. lk_size: their large kernel.
        co_attention: cross-attention between the streams in the ``ca_levels`` coarsest levels.
        bilateral: image-guided bilateral filtering of the final field (guide: the fixed image).
        bf_kernel / bf_sigma_spatial (voxels) / bf_sigma_intensity (intensity units of inputs scaled to [0, 1]):
            initial bilateral filter settings (the sigmas are learnt).
        integrate: integrate each residual as a stationary velocity (scaling and squaring, ``int_steps``).

    Input ``(B, 2, *S)`` = ``[moving, fixed]`` with every ``S`` divisible by ``2 ** (len(enc_channels) - 1)``;
    output the displacement ``(B, D, *S)`` in voxels of the input grid (:mod:`common.conventions`).
    :meth:`forward_levels` returns the field after each level instead (coarse to fine, each on its own grid).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        enc_channels: Sequence[int] = (16, 32, 32, 64, 64),
        flow_channels: int = 32,
        cascade_steps: int = 1,
        finest_level: int = 0,
        large_kernel: bool = False,
        lk_size: int = 5,
        co_attention: bool = False,
        ca_levels: int = 2,
        ca_heads: int = 4,
        bilateral: bool = False,
        bf_kernel: int = 5,
        bf_sigma_spatial: float = 1.5,
        bf_sigma_intensity: float = 0.1,
        integrate: bool = True,
        int_steps: int = 7,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"CascadeRegNet: spatial_dims must be 2 or 3, got {spatial_dims}.")
        levels = len(enc_channels)
        if levels < 1:
            raise ValueError("CascadeRegNet: need at least one encoder level.")
        if not 0 <= finest_level < levels:
            raise ValueError(f"CascadeRegNet: finest_level must be in [0, {levels - 1}], got {finest_level}.")
        if cascade_steps < 1:
            raise ValueError(f"CascadeRegNet: cascade_steps must be >= 1, got {cascade_steps}.")
        if co_attention and not 1 <= ca_levels <= levels:
            raise ValueError(f"CascadeRegNet: ca_levels must be in [1, {levels}], got {ca_levels}.")
        self.dims, self.levels, self.finest_level = spatial_dims, levels, int(finest_level)
        self.cascade_steps = int(cascade_steps)
        d = spatial_dims

        def block(cin: int, cout: int, stride: int) -> nn.Module:
            return LargeKernelBlock(d, cin, cout, lk_size, stride) if large_kernel else ConvBlock(d, cin, cout, stride)

        self.encoder = nn.ModuleList()
        prev = 1
        for lvl, c in enumerate(enc_channels):
            self.encoder.append(nn.Sequential(block(prev, c, 1 if lvl == 0 else 2), block(c, c, 1)))
            prev = c
        first_ca = levels - ca_levels if co_attention else levels
        self.co_attention = nn.ModuleDict(
            {str(lvl): CoAttention(d, enc_channels[lvl], ca_heads) for lvl in range(first_ca, levels)}
        )
        self.estimators = nn.ModuleDict(
            {
                f"{lvl}_{s}": _Estimator(d, enc_channels[lvl], flow_channels)
                for lvl in range(self.finest_level, levels)
                for s in range(self.cascade_steps)
            }
        )
        self.integrator = VelocityIntegrator(int_steps) if integrate else None
        self.bilateral = (
            BilateralFieldFilter(d, bf_kernel, bf_sigma_spatial, bf_sigma_intensity, learnable=True)
            if bilateral
            else None
        )

    def _encode(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        feats = []
        h = x  # (2B, 1, *S): moving and fixed share the encoder
        for lvl, enc in enumerate(self.encoder):
            h = enc(h)
            if str(lvl) in self.co_attention:
                m, f = h.chunk(2, dim=0)
                m, f = self.co_attention[str(lvl)](m, f)
                h = torch.cat([m, f], dim=0)
            feats.append(h.chunk(2, dim=0))
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flow = self.forward_levels(x)[-1]
        if flow.shape[2:] != x.shape[2:]:
            flow = resize_flow(flow, x.shape[2:])
        if self.bilateral is not None:
            flow = self.bilateral(flow, x[:, 1:])
        return flow

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The field after each estimating level, coarse to fine, each on its level's grid (before the final
        resize to the input grid and the bilateral filter)."""
        check_pair_input(x, "CascadeRegNet", self.dims, 2, 2 ** (self.levels - 1))
        moving, fixed = x[:, :1], x[:, 1:]
        feats = self._encode(torch.cat([moving, fixed], dim=0))
        flow: torch.Tensor | None = None
        levels = []
        for lvl in range(self.levels - 1, self.finest_level - 1, -1):
            m_feat, f_feat = feats[lvl]
            if flow is not None:
                flow = resize_flow(flow, m_feat.shape[2:])
            for s in range(self.cascade_steps):
                # the coarsest first step starts from the identity: no warp, no composition needed
                warped = m_feat if flow is None else warp(m_feat, flow)
                residual = self.estimators[f"{lvl}_{s}"](f_feat, warped)
                if self.integrator is not None:
                    residual = self.integrator(residual)
                flow = residual if flow is None else compose_ddf(flow, residual)
            levels.append(flow)
        return levels
