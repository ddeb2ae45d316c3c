"""Engines glue any method uses: pair batching, the registration loss for Ignite trainers, inference I/O.

The names below are imported on first use (PEP 562), so training (``common.engines.PairPrepareBatch``,
``RegistrationLoss``) does not load the inference output writers and QC plotting, and inference does not load the
training handlers.
"""

from __future__ import annotations

from common.lazy import lazy_attributes

_WHERE = {
    "IdentityToDDF": "registration",
    "PairPrepareBatch": "registration",
    "PredToDDF": "registration",
    "RegistrationEvalPostprocess": "registration",
    "RegistrationLoss": "registration",
    "ResizeToDDF": "registration",
    "SVFToDDF": "registration",
    "LoadRegistrationPaird": "pair_loading",
    "normalise_intensity": "pair_loading",
    "pair_datalist": "pair_loading",
    "NetworkInferer": "inference",
    "SaveRegistrationOutputsd": "inference",
    "RegistrationSummaryHandler": "summary",
}

__all__ = sorted(_WHERE)


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _WHERE)
