"""Networks, one module per method, plus shared U-Net parts."""

from __future__ import annotations

from common.networks.bspline_net import SharedStreamBSplineNet
from common.networks.joint_affine import JointAffineDeformNet
from common.networks.lumir_cascade import CascadeRegNet
from common.networks.voxelmorph import FlowHead, ProbabilisticRegUNet, RegUNet

__all__ = [
    "CascadeRegNet",
    "FlowHead",
    "ProbabilisticRegUNet",
    "RegUNet",
    "SharedStreamBSplineNet",
    "JointAffineDeformNet",
]
