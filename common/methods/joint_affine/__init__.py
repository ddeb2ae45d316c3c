"""Zhu et al. 2020, joint affine and deformable registration (bundle brain_mri_joint_affine).

``network.py``: the shared-encoder network with its affine and deformable heads (:class:`JointAffineDeformNet`).
``engine.py``: its prediction-to-displacement map (:class:`JointToDDF`), its training loss
(:class:`JointAffineDeformLoss`), its inferer (:class:`AffineRefinementInferer`) and its extra output, the ITK
affine file (:class:`AffineTransformFile`).
"""

from common.methods.joint_affine.engine import (
    AffineRefinementInferer,
    AffineTransformFile,
    JointAffineDeformLoss,
    JointToDDF,
    split_joint,
)
from common.methods.joint_affine.network import JointAffineDeformNet

__all__ = [
    "AffineRefinementInferer",
    "AffineTransformFile",
    "JointAffineDeformLoss",
    "JointAffineDeformNet",
    "JointToDDF",
    "split_joint",
]
