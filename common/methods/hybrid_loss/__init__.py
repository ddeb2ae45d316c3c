"""Han et al. 2021, "Deformable Registration of Brain MR Images via a Hybrid Loss" (bundle brain_mri_hybrid_loss).

The network is the shared VoxelMorph-style U-Net predicting at half resolution (:class:`RegUNet`,
``common/networks/voxelmorph.py``, resized by the generic :class:`common.engines.ResizeToDDF`). What is the
method's own is the hybrid loss: generic image terms (SSD, mutual information) and a gradient regulariser composed
in ``train.json`` through :class:`common.engines.RegistrationLoss`, plus the blurred-boundary label term here
(``loss.py``). Inference is the generic network + instance-optimisation path (``common/engines/inference.py``).
"""

from common.methods.hybrid_loss.loss import BlurredBoundaryLoss
from common.networks.voxelmorph import RegUNet

__all__ = ["BlurredBoundaryLoss", "RegUNet"]
