"""Zhang et al. 2024, the LUMIR cascade (bundle brain_mri_lumir_cascade, the flagship).

``network.py``: the cascade network (:class:`CascadeRegNet`). It predicts the displacement on the input grid
(generic :class:`common.engines.IdentityToDDF`); its loss is composed in ``train.json`` from generic terms through
:class:`common.engines.RegistrationLoss`; inference is the generic network + instance-optimisation path.
"""

from common.methods.lumir_cascade.network import CascadeRegNet

__all__ = ["CascadeRegNet"]
