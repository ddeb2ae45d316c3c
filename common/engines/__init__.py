"""Engines glue any method uses: pair batching, the registration loss for Ignite trainers, inference I/O.

The names below are imported on first use (PEP 562), so training (``common.engines.PairPrepareBatch``,
``RegistrationLoss``) does not load the inference output writers and QC plotting, and inference does not load the
training handlers.
"""

from __future__ import annotations

from common.lazy import lazy_attributes

_EXPORTS = {
    "registration": ("IdentityToDDF", "PairPrepareBatch", "PredToDDF", "RegistrationEvalPostprocess",
                     "RegistrationLoss", "ResizeToDDF", "SVFToDDF"),
    "pair_loading": ("LoadRegistrationPaird", "normalise_intensity", "pair_datalist"),
    "inference": ("NetworkInferer", "SaveRegistrationOutputsd"),
    "summary": ("RegistrationSummaryHandler",),
}  # fmt: skip

__getattr__, __dir__, __all__ = lazy_attributes(__name__, globals(), _EXPORTS)
