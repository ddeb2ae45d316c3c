"""Pair transforms: one random patch location for every key of a pair, and the 2-channel network input.

MONAI's ``RandSpatialCropd`` draws ONE crop centre per call and applies it to all its keys, so listing the
moving and fixed images and labels in one transform keeps the pair aligned (pinned by
``tests/data/test_pairs.py``). Bundles' networks take one tensor ``[moving, fixed]`` (design section 4):
:class:`StackPaird` builds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandSpatialCropd

__all__ = ["PAIR_KEYS", "StackPaird", "paired_random_crop"]

PAIR_KEYS: tuple[str, ...] = ("moving_image", "fixed_image", "moving_label", "fixed_label")


def paired_random_crop(
    roi_size: Sequence[int] | int, keys: Sequence[str] = PAIR_KEYS, allow_missing_keys: bool = True
) -> RandSpatialCropd:
    """Random patch (e.g. 128^3 as in Han et al.) at the SAME location for every key of a pair.

    Args:
        roi_size: patch size in voxels (int for a cube).
        keys: keys cropped together (labels included so that label losses see the same patch).
        allow_missing_keys: pairs without labels are fine.
    """
    return RandSpatialCropd(
        keys=list(keys), roi_size=roi_size, random_size=False, allow_missing_keys=allow_missing_keys
    )


class StackPaird(MapTransform):
    """Concatenate ``moving`` and ``fixed`` (each ``(C, *S)``) along channels into ``output_key``.

    Args:
        moving_key, fixed_key: input keys (kept). output_key: the network input, ``(2C, *S)``, moving first.

    Raises:
        ValueError: spatial shapes differ (crop/resample both onto one grid first).
    """

    def __init__(self, moving_key: str = "moving_image", fixed_key: str = "fixed_image", output_key: str = "image"):
        super().__init__([moving_key, fixed_key])
        self.moving_key, self.fixed_key, self.output_key = moving_key, fixed_key, output_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        m, f = d[self.moving_key], d[self.fixed_key]
        mt, ft = torch.as_tensor(m), torch.as_tensor(f)
        if mt.ndim < 2 or mt.shape[1:] != ft.shape[1:]:
            raise ValueError(
                f"StackPaird: `{self.moving_key}` {tuple(mt.shape)} and `{self.fixed_key}` {tuple(ft.shape)} must be "
                "channel-first with the same spatial shape."
            )
        out = torch.cat([mt.float(), ft.float()], dim=0)
        d[self.output_key] = MetaTensor(out, meta=dict(f.meta)) if isinstance(f, MetaTensor) else out
        return d
