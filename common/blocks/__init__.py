"""Parameter-free layers, one concept per file (see :mod:`common.conventions` for the field convention)."""

from __future__ import annotations

from common.blocks.affine import (
    AffineTransform,
    affine_normalised_to_voxel,
    affine_to_ddf,
    ddf_to_affine,
    identity_affine,
)
from common.blocks.bilateral import BilateralFieldFilter, bilateral_filter_field
from common.blocks.bspline import BSplineTransformer, control_grid_shape
from common.blocks.compose import compose_ddf
from common.blocks.integrate import VelocityIntegrator, integrate_velocity
from common.blocks.jacobian import jacobian_determinant, jacobian_matrix
from common.blocks.resize_flow import ResizeFlow, resize_flow
from common.blocks.warp import Warp, WarpLabels, one_hot, pair_one_hot, sample_at, sample_labels_at, warp, warp_labels

__all__ = [
    "AffineTransform",
    "BSplineTransformer",
    "ResizeFlow",
    "VelocityIntegrator",
    "Warp",
    "WarpLabels",
    "affine_to_ddf",
    "compose_ddf",
    "control_grid_shape",
    "ddf_to_affine",
    "identity_affine",
    "affine_normalised_to_voxel",
    "integrate_velocity",
    "jacobian_determinant",
    "jacobian_matrix",
    "one_hot",
    "pair_one_hot",
    "resize_flow",
    "sample_at",
    "sample_labels_at",
    "warp",
    "warp_labels",
    "BilateralFieldFilter",
    "bilateral_filter_field",
]
