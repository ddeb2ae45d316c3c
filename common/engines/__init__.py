"""Engines glue: pair batching, registration losses for Ignite trainers, inference I/O, geometry."""

from __future__ import annotations

from common.engines.inference import (
    LoadRegistrationPaird,
    NetworkInferer,
    RegistrationSummaryHandler,
    SaveRegistrationOutputsd,
    normalise_intensity,
    pair_datalist,
)
from common.engines.registration import (
    IdentityToDDF,
    PairPrepareBatch,
    PredToDDF,
    RegistrationEvalPostprocess,
    RegistrationLoss,
    ResizeToDDF,
    SVFToDDF,
)

__all__ = [
    "IdentityToDDF",
    "LoadRegistrationPaird",
    "NetworkInferer",
    "PairPrepareBatch",
    "PredToDDF",
    "RegistrationEvalPostprocess",
    "RegistrationLoss",
    "RegistrationSummaryHandler",
    "ResizeToDDF",
    "SVFToDDF",
    "SaveRegistrationOutputsd",
    "normalise_intensity",
    "pair_datalist",
]
