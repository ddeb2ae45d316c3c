"""The brain synthesis chain for one label map and the moving/fixed pair transform built from it.

:func:`synth_brain_transforms` composes the transforms of :mod:`common.transforms.brain` (deform, image from
labels, blur, bias, gamma, noise, mask, remap); :class:`RandSynthPaird` runs it for a moving and a fixed map, with
independent or shared contrast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from monai.transforms import Compose, MapTransform, Randomizable

from common.transforms.brain import (
    AddNoised,
    LabelsToImaged,
    MaskBackgroundd,
    RandBiasFieldd,
    RandDeformd,
    RandGammad,
    RandGaussianBlurd,
    RandLabelsToImaged,
    RandNoised,
    RemapLabelsd,
    _RandTwin,
)

__all__ = ["synth_brain_transforms", "RandSynthPaird"]


def synth_brain_transforms(
    label_key: str = "label",
    image_key: str = "image",
    *,
    contrast: str = "t1",
    spacing: float = 1.0,
    deform: bool = True,
    remap: bool = True,
    deform_kwargs: Mapping[str, Any] | None = None,
) -> Compose:
    """The synthesis chain for one label map: deform -> image -> blur -> bias -> gamma -> noise -> mask -> remap.

    Args:
        label_key: FreeSurfer-coded ``(1, *S)`` label map (replaced by the deformed, remapped labels).
        image_key: output image key (float, [0, 1] before noise, background 0).
        contrast: ``"t1"`` or ``"random"`` (see :class:`RandLabelsToImaged`).
        spacing: mm per voxel (1 or 2 on the template grids).
        deform: include :class:`RandDeformd`. remap: end with :class:`RemapLabelsd` (consecutive indices).
        deform_kwargs: overrides for :class:`RandDeformd` (e.g. ``{"svf_std": 0}``).
    """
    chain: list = []
    if deform:
        chain.append(RandDeformd(label_keys=label_key, spacing=spacing, **dict(deform_kwargs or {})))
    chain += [
        RandLabelsToImaged(label_key, image_key, contrast=contrast),
        RandGaussianBlurd(image_key, sigma_range=(0.0, 1.0), spacing=spacing),
        RandBiasFieldd(image_key),
        RandGammad(image_key),
        RandNoised(image_key),
        MaskBackgroundd(image_key, label_key),
    ]
    if remap:
        chain.append(RemapLabelsd(label_key))
    return Compose(chain)


class RandSynthPaird(Randomizable, MapTransform):
    """Synthesise a moving and a fixed image from their label maps, optionally with ONE shared contrast.

    ``shared_contrast=False`` runs two independent :func:`synth_brain_transforms` chains (SynthMorph's
    contrast-invariant training). ``shared_contrast=True`` draws the moving chain and replays its contrast,
    blur, bias field and gamma on the fixed label map; only the per-voxel Gaussian-mixture sampling and the
    additive noise get fresh seeds. That is the pair a same-modality intensity loss (SSD) assumes: with
    independent contrasts the SSD optimum moves structures to match intensities, not anatomy (measured for
    ``brain_mri_prob_diffeo``, see its model card). No spatial deformation is applied (the pairs are already
    different subjects); label maps end remapped to consecutive evaluation labels.

    Args:
        moving_label_key, fixed_label_key: FreeSurfer-coded ``(1, *S)`` label maps.
        moving_image_key, fixed_image_key: output image keys.
        shared_contrast: one contrast for both images (see above).
        contrast, spacing: as :func:`synth_brain_transforms`.
    """

    def __init__(
        self,
        moving_label_key: str = "moving_label",
        fixed_label_key: str = "fixed_label",
        moving_image_key: str = "moving_image",
        fixed_image_key: str = "fixed_image",
        *,
        shared_contrast: bool = True,
        contrast: str = "t1",
        spacing: float = 1.0,
    ) -> None:
        MapTransform.__init__(self, [moving_label_key, fixed_label_key])
        self.moving_label_key, self.fixed_label_key = moving_label_key, fixed_label_key
        self.moving_image_key, self.fixed_image_key = moving_image_key, fixed_image_key
        self.shared_contrast = bool(shared_contrast)
        kw = {"contrast": contrast, "spacing": spacing, "deform": False, "remap": False}
        self.moving_chain = synth_brain_transforms(moving_label_key, moving_image_key, **kw)
        self.fixed_chain = synth_brain_transforms(fixed_label_key, fixed_image_key, **kw)
        self.remap = RemapLabelsd([moving_label_key, fixed_label_key])
        self._seeds: tuple[int, int] = (0, 0)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.moving_chain.set_random_state(int(self.R.randint(0, 2**31 - 1)))
        self.fixed_chain.set_random_state(int(self.R.randint(0, 2**31 - 1)))
        return self

    def randomize(self, data: Any = None) -> None:
        self._seeds = (int(self.R.randint(0, 2**31 - 1)), int(self.R.randint(0, 2**31 - 1)))

    def _replay_on_fixed(self) -> Compose:
        """The moving chain's last draw, applied to the fixed keys with fresh voxel-noise seeds."""
        chain: list = []
        for t in self.moving_chain.transforms:
            if isinstance(t, RandLabelsToImaged):
                chain.append(LabelsToImaged(self.fixed_label_key, self.fixed_image_key,
                                            **{**t.last_params, "seed": self._seeds[0]}))  # fmt: skip
            elif isinstance(t, RandNoised):
                chain.append(AddNoised(self.fixed_image_key, **{**t.last_params, "seed": self._seeds[1]}))
            elif isinstance(t, _RandTwin):
                chain.append(t.twin_cls(keys=self.fixed_image_key, **t.last_params))
            elif isinstance(t, MaskBackgroundd):
                chain.append(MaskBackgroundd(self.fixed_image_key, self.fixed_label_key, t.background))
            else:
                raise TypeError(f"RandSynthPaird: cannot replay {type(t).__name__} on the fixed image.")
        return Compose(chain)

    def __call__(self, data: Mapping) -> dict:
        for key in (self.moving_label_key, self.fixed_label_key):
            if key not in data:
                raise KeyError(f"RandSynthPaird: missing label map `{key}` (keys present: {sorted(data)}).")
        self.randomize()
        d = self.moving_chain(dict(data))
        d = self._replay_on_fixed()(d) if self.shared_contrast else self.fixed_chain(d)
        return self.remap(d)
