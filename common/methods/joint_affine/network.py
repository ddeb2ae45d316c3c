"""Zhu et al.'s joint affine and deformable registration network (one encoder shared by both stages).

The network takes ``[moving, fixed]`` and runs ONE encoder twice:

1. on ``[M, F]``: global pooling of its deepest features and a linear layer give the affine matrix, which
   warps ``M`` to ``A`` (the affine subnetwork: four conv blocks, three stride-2 downsamplings);
2. on ``[A, F]``: the same encoder (same modules, same parameters) feeds a dilated block and a U-Net decoder
   that predict the deformable displacement ``u`` at full resolution; ``A`` warped by ``u`` is the result.

It returns ONE tensor ``(B, 3 D, *S)`` (the bundle contract: one input, one output), all three fields in the
:mod:`common.conventions` convention (voxels of ``S``, array order, pull-back on the fixed grid):

* channels ``[0:D]``: the total displacement, the affine then the deformable map composed with
  :func:`common.blocks.compose_ddf`, so ``M(x + total(x)) = A(x + u(x))`` with ``A(y) = M(y + aff(y))``;
* channels ``[D:2D]``: the affine-only displacement ``aff`` (:func:`common.blocks.affine_to_ddf`);
* channels ``[2D:3D]``: the deformable displacement ``u``.

:func:`common.methods.joint_affine.engine.split_joint` splits it; :class:`common.methods.joint_affine.engine.JointToDDF`
hands the total to the inference and evaluation engines.

Choices where the paper leaves room (documented, not claimed to be the authors'):

* each "conv block" / "residual module" is a MONAI ``ResidualUnit`` with one 3x3(x3) conv, a normalisation
  and LeakyReLU(0.2), plus the identity (or 1x1 projection) shortcut; downsampling is a stride-2 3x3(x3) conv,
  normalisation, LeakyReLU; upsampling a stride-2 transposed conv, normalisation, LeakyReLU. The paper's
  batch norm is ``norm="batch"`` (the default); ``"instance"`` normalises each pair with its own statistics,
  which is what batch norm computes while training with one pair per batch, but also at inference (see
  ``norm`` below);
* global pooling: the paper's global average pooling is ``affine_pooling="mean"``. A mean over the grid is
  blind to WHERE a feature responds: a feature that measures the local offset between ``M`` and ``F`` averages
  to the translation, but under a rotation or scaling about the centre the offsets on opposite sides cancel.
  ``"moments"`` also pools each feature times each normalised coordinate (first moments), from which a linear
  layer can read rotation, scaling and shear. Measured on the bundle's data (affine part alone trained with
  the global NCC for 1200 iterations, best validation checkpoint, 4 held-out test pairs at 4 mm): Dice 0.306
  with moments (lr 5e-4), 0.165 with the mean (lr 1e-3; a mean run at lr 5e-4 followed a similar loss curve);
  0.144 before registration;
* the dilated block is a cascade of four 3x3(x3) convs (dilations 1, 2, 4, 8; group norm; ReLU) added to its
  input (a residual around the cascade);
* the linear layer predicts the change from identity in normalised coordinates (``[-1, 1]`` along every axis,
  where matrix and translation entries have the same scale); it is converted to the voxel convention of
  :func:`common.blocks.affine_to_ddf` (``A_vox = H A_n H^-1``, ``t_vox = H t_n``, ``H = diag((n - 1) / 2)``).
  Weights and bias start at zero, so the network starts at the identity affine.

Tracing: ``torch.jit.trace`` gives the eager output (tested), but the grids of the resampling steps are
recorded as constants, so a traced module only accepts the spatial size it was traced with (the bundles pad
inputs to one size). The input checks of the shared warping blocks turn tensors into Python booleans, which is
harmless here (they only raise on bad inputs); their ``TracerWarning`` (and that of this network's own shape
check) is silenced while tracing. Run the traced module without autograd (``torch.no_grad`` or
``inference_mode``, as inference does): with torch 2.13, a traced :func:`common.blocks.warp` (MONAI ``Warp``
writes into its sampling grid in place) fails from its second call with gradients enabled ("a view of a leaf
Variable that requires grad is being used in an in-place operation", the profiling executor's autodiff graph);
eager training is unaffected.

References:
    Zhu Z., Cao Y., Qin C., Rao Y., Lin D., Dou Q., Ni D., Wang Y. "Joint affine and deformable
    three-dimensional networks for brain MRI registration." Medical Physics 48(3):1182-1196, 2021
    (arXiv 2020).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from common.blocks.affine import affine_normalised_to_voxel, affine_to_ddf, identity_affine
from common.blocks.compose import compose_ddf
from common.blocks.warp import warp
from common.networks.voxelmorph import FlowHead, check_pair_input

__all__ = ["JointAffineDeformNet"]

_LEAKY = ("leakyrelu", {"negative_slope": 0.2})


def _norm_layer(norm: str) -> str | tuple[str, dict]:
    return ("instance", {"affine": True}) if norm == "instance" else "batch"


def _res(dims: int, cin: int, cout: int, norm: str) -> ResidualUnit:
    return ResidualUnit(dims, cin, cout, strides=1, kernel_size=3, subunits=1, act=_LEAKY, norm=_norm_layer(norm))


def _down(dims: int, c: int, norm: str) -> Convolution:
    return Convolution(dims, c, c, strides=2, kernel_size=3, act=_LEAKY, norm=_norm_layer(norm))


def _up(dims: int, cin: int, cout: int, norm: str) -> Convolution:
    return Convolution(
        dims, cin, cout, strides=2, kernel_size=3, act=_LEAKY, norm=_norm_layer(norm), is_transposed=True
    )


@contextlib.contextmanager
def _quiet_trace() -> Iterator[None]:
    """Silence ``TracerWarning`` from the shared blocks' input checks while tracing (see module docstring)."""
    if not torch.jit.is_tracing():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


class SharedEncoder(nn.Module):
    """Encoder used by both stages: ``len(channels)`` conv blocks with a stride-2 downsampling between two.

    Returns the features of every level, full resolution first (``len(channels)`` tensors).
    """

    def __init__(self, dims: int, in_channels: int, channels: Sequence[int], norm: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = in_channels
        for i, c in enumerate(channels):
            if i > 0:
                self.downs.append(_down(dims, prev, norm))
            self.blocks.append(_res(dims, prev, c, norm))
            prev = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.blocks[0](x)]
        for down, block in zip(self.downs, self.blocks[1:]):
            feats.append(block(down(feats[-1])))
        return feats


class DilatedBlock(nn.Module):
    """Cascade of 3x3(x3) convs with growing dilation (group norm, ReLU), added to the input."""

    def __init__(self, dims: int, channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        groups = math.gcd(int(channels), 8)
        self.convs = nn.Sequential(
            *[
                Convolution(
                    dims,
                    channels,
                    channels,
                    kernel_size=3,
                    dilation=int(d),
                    act="relu",
                    norm=("group", {"num_groups": groups}),
                )  # fmt: skip
                for d in dilations
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.convs(x)


class JointAffineDeformNet(nn.Module):
    """Joint affine + deformable registration network of Zhu et al. 2020 (module docstring).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels, ``[moving, fixed]`` stacked (2 for single-channel images; must be even).
        enc_channels: channels of the shared encoder's conv blocks, one per resolution level (the paper:
            ``(16, 32, 32, 32)``, i.e. three stride-2 downsamplings).
        dilations: dilation of each conv of the dilated block at the end of the encoder.
        dec_channels: channels of the decoder's residual modules, one per upsampling
            (``len(enc_channels) - 1`` of them).
        use_affine: False replaces the affine stage by the identity (ablation "no affine part").
        use_deformable: False sets ``u = 0`` (affine registration only).
        norm: normalisation of the conv blocks. ``"batch"`` (default, the paper's; the v0.1 weights):
            PyTorch batch norm with running statistics. ``"instance"`` (the shipped v0.2 weights): every pair
            is normalised with its own statistics (affine instance norm), in training and inference alike. The
            bundle trains with one pair per batch, where the paper's batch norm computes exactly these
            statistics during training; but in
            eval mode batch norm switches to running averages over the training pairs, whose synthetic contrasts
            vary from pair to pair, so inference sees differently normalised features than training did. With
            the last checkpoint (iteration 3000) of the v0.1 run, normalising with each pair's own statistics
            at inference raised the mean held-out Dice at 4 mm from 0.503 to 0.553 (affine part alone: 0.251
            to 0.326).
        affine_pooling: how the affine head pools the deepest features: ``"mean"`` (default, the paper's global
            average) or ``"moments"`` (the shipped v0.2 weights: also each feature times each normalised
            coordinate; see the module docstring).

    Forward: ``x`` ``(B, in_channels, *S)`` with every ``S`` divisible by ``2 ** (len(enc_channels) - 1)``
    returns ``(B, 3 D, *S)`` = ``[total, affine, deformable]`` displacements in voxels of ``S`` (pull-back).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        enc_channels: Sequence[int] = (16, 32, 32, 32),
        dilations: Sequence[int] = (1, 2, 4, 8),
        dec_channels: Sequence[int] = (32, 32, 32),
        use_affine: bool = True,
        use_deformable: bool = True,
        norm: str = "batch",
        affine_pooling: str = "mean",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if spatial_dims not in (2, 3):
            raise ValueError(f"{name}: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 2 or in_channels % 2:
            raise ValueError(f"{name}: in_channels must be even ([moving, fixed] stacked), got {in_channels}.")
        if len(enc_channels) < 2:
            raise ValueError(f"{name}: need at least 2 enc_channels (one downsampling), got {tuple(enc_channels)}.")
        if len(dec_channels) != len(enc_channels) - 1:
            raise ValueError(
                f"{name}: need {len(enc_channels) - 1} dec_channels (one per upsampling) for enc_channels "
                f"{tuple(enc_channels)}, got {tuple(dec_channels)}."
            )
        if affine_pooling not in ("mean", "moments"):
            raise ValueError(f"{name}: affine_pooling must be 'mean' or 'moments', got {affine_pooling!r}.")
        if norm not in ("instance", "batch"):
            raise ValueError(f"{name}: norm must be 'instance' or 'batch', got {norm!r}.")
        if not (use_affine or use_deformable):
            raise ValueError(f"{name}: use_affine and use_deformable are both False; nothing to predict.")
        self.dims, self.in_channels = spatial_dims, int(in_channels)
        self.factor = 2 ** (len(enc_channels) - 1)
        self.use_affine, self.use_deformable = bool(use_affine), bool(use_deformable)
        self.norm, self.affine_pooling = norm, affine_pooling
        self.encoder = SharedEncoder(spatial_dims, in_channels, enc_channels, norm)
        if self.use_affine:
            pooled = enc_channels[-1] * (1 + spatial_dims if affine_pooling == "moments" else 1)
            self.affine_head = nn.Linear(pooled, spatial_dims * (spatial_dims + 1))
            nn.init.zeros_(self.affine_head.weight)
            nn.init.zeros_(self.affine_head.bias)
        if self.use_deformable:
            self.dilated = DilatedBlock(spatial_dims, enc_channels[-1], dilations)
            self.ups = nn.ModuleList()
            self.dec_blocks = nn.ModuleList()
            prev = enc_channels[-1]
            for i, c in enumerate(dec_channels):
                skip = enc_channels[len(enc_channels) - 2 - i]
                self.ups.append(_up(spatial_dims, prev, c, norm))
                self.dec_blocks.append(_res(spatial_dims, c + skip, c, norm))
                prev = c
            self.flow = FlowHead(spatial_dims, prev)

    def _check(self, x: torch.Tensor) -> None:
        check_pair_input(x, type(self).__name__, self.dims, self.in_channels, self.factor, hint="pad the images")
        deepest = [int(n) // self.factor for n in x.shape[2:]]
        if self.norm == "instance" and math.prod(deepest) < 2:
            raise ValueError(
                f"{type(self).__name__}: spatial size {tuple(x.shape[2:])} leaves a single voxel after "
                f"{len(self.encoder.downs)} downsamplings, where per-pair normalisation is undefined; the image is "
                f"too small: it needs at least {2 * self.factor} voxels along one axis at the network's spacing."
            )

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.in_channels // 2
        return x[:, :half], x[:, half:]

    def _pool(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` -> ``(B, C)`` (``"mean"``) or ``(B, C (1 + D))`` (``"moments"``: also the mean of each
        feature times each normalised coordinate in ``[-1, 1]``)."""
        axes = tuple(range(2, feats.ndim))
        pooled = [feats.mean(dim=axes)]
        if self.affine_pooling == "moments":
            for i, n in enumerate(feats.shape[2:]):
                shape = [1] * feats.ndim
                shape[2 + i] = int(n)
                coord = torch.linspace(-1.0, 1.0, int(n), dtype=feats.dtype, device=feats.device).view(shape)
                pooled.append((feats * coord).mean(dim=axes))
        return torch.cat(pooled, dim=1)

    def _affine_params(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D, D + 1)`` voxel-convention matrix predicted from ``[M, F]`` (identity if not ``use_affine``)."""
        dims = self.dims
        if not self.use_affine:
            return identity_affine(x.shape[0], dims, x.dtype, x.device)
        deepest = self.encoder(x)[-1]
        delta = self.affine_head(self._pool(deepest))  # (B, D (D + 1))
        delta = affine_normalised_to_voxel(delta.view(-1, dims, dims + 1), x.shape[2:])
        return identity_affine(x.shape[0], dims, delta.dtype, delta.device) + delta

    def _deformation(self, affine_warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Deformable displacement ``u`` ``(B, D, *S)`` in voxels from the affinely warped moving and fixed."""
        feats = self.encoder(torch.cat([affine_warped, fixed], dim=1))
        h = self.dilated(feats[-1])
        for i, (up, block) in enumerate(zip(self.ups, self.dec_blocks)):
            h = block(torch.cat([up(h), feats[len(feats) - 2 - i]], dim=1))
        return self.flow(h)

    def affine_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted ``[A | t]`` ``(B, D, D + 1)`` in centred voxel coordinates (:func:`affine_to_ddf`)."""
        with _quiet_trace():
            self._check(x)
            return self._affine_params(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _quiet_trace():
            self._check(x)
            return self._register(x, self._affine_params(x) if self.use_affine else None)

    def forward_with_affine(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with the affine part given instead of predicted: ``matrix`` ``(B, D, D + 1)`` in
        centred voxel coordinates (:meth:`affine_matrix`), e.g. refined for the pair by
        :class:`common.methods.joint_affine.engine.AffineRefinementInferer`; the deformable part registers ``M``
        warped by it to ``F``. Output as :meth:`forward`."""
        expected = (x.shape[0], self.dims, self.dims + 1)
        if not isinstance(matrix, torch.Tensor) or tuple(matrix.shape) != expected:
            got = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
            raise ValueError(f"{type(self).__name__}: `matrix` must have shape {expected} for this input, got {got}.")
        if not torch.isfinite(matrix).all():
            raise ValueError(f"{type(self).__name__}: `matrix` contains NaN or Inf values.")
        with _quiet_trace():
            self._check(x)
            return self._register(x, matrix)

    def _register(self, x: torch.Tensor, matrix: torch.Tensor | None) -> torch.Tensor:
        moving, fixed = self._split(x)
        size = tuple(x.shape[2:])
        if matrix is not None:
            aff = affine_to_ddf(matrix, size)
            affine_warped = warp(moving, aff)
        else:
            aff = x.new_zeros(x.shape[0], self.dims, *size)
            affine_warped = moving
        if not self.use_deformable:
            return torch.cat([aff, aff, torch.zeros_like(aff)], dim=1)
        u = self._deformation(affine_warped, fixed)
        total = compose_ddf(aff, u) if matrix is not None else u
        return torch.cat([total, aff, u], dim=1)
