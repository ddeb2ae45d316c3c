"""Dalca et al. 2018, probabilistic diffeomorphic registration (bundle brain_mri_prob_diffeo).

``network.py``: the U-Net with a Gaussian posterior head over a velocity field (:class:`ProbabilisticRegUNet`).
``engine.py``: its training loss (:class:`ProbabilisticRegistrationLoss`: sampled velocity, KL to the smoothness
prior, optional Dice) and its extra inference output, the posterior uncertainty (:class:`PosteriorUncertainty`).
Velocities become displacements through the generic :class:`common.engines.SVFToDDF`.
"""

from common.methods.prob_diffeo.engine import PosteriorUncertainty, ProbabilisticRegistrationLoss, split_posterior
from common.methods.prob_diffeo.network import ProbabilisticRegUNet

__all__ = ["PosteriorUncertainty", "ProbabilisticRegUNet", "ProbabilisticRegistrationLoss", "split_posterior"]
