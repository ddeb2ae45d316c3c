"""Hering et al. 2019, multi-level NGF B-spline registration of cardiac cine MRI (bundle cardiac_cine_ngf_bspline).

``network.py``: the shared-stream network predicting B-spline control points at several levels
(:class:`SharedStreamBSplineNet`) and its training view returning every level (:class:`AllLevels`). ``loss.py``: control points to displacements (:class:`BSplineToDDF`) and the
loss over every level (:class:`MultiLevelRegistrationLoss`, deep supervision); the NGF and curvature terms are
generic losses composed in ``train.json``.
"""

from common.methods.ngf_bspline.loss import BSplineToDDF, MultiLevelRegistrationLoss
from common.methods.ngf_bspline.network import AllLevels, SharedStreamBSplineNet

__all__ = ["AllLevels", "BSplineToDDF", "MultiLevelRegistrationLoss", "SharedStreamBSplineNet"]
