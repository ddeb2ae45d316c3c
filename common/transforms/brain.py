"""MONAI dictionary transforms for SynthMorph-style brain synthesis (label map -> deformed label map + image).

Each random transform ``Rand*d`` only SAMPLES parameters (``randomize``), stores them in ``last_params`` and
delegates to its deterministic twin (``*d``), which APPLIES them: image and label keys therefore get
exactly the same deformation, and ``twin = rand.twin()`` (or ``Twin(**rand.last_params)``) replays a sample
bit for bit (TorchIO style). Magnitudes are given in mm and converted with ``spacing`` (mm per voxel).

Data: channel-first ``(1, *S)`` arrays/tensors (after ``LoadImaged(ensure_channel_first=True)``); label
maps hold FreeSurfer codes until :class:`RemapLabelsd` turns them into consecutive evaluation indices.
MetaTensor metadata is kept (geometry never changes).

References:
    Hoffmann et al., "SynthMorph: learning contrast-invariant registration without acquired images",
    IEEE TMI 2022. Perez-Garcia et al., "TorchIO", Computer Methods and Programs in Biomedicine 2021.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

from common.blocks import control_grid_shape, warp
from common.data.brain import synth
from common.data.brain.labels import (
    EXTRA_CEREBRAL_CODES,
    T1_PRIOR_CLASS,
    T1_PRIOR_MEANS,
    T1_PRIOR_STDS,
    remap_to_eval,
)

__all__ = [
    "LabelsToImaged", "RandLabelsToImaged", "BiasFieldd", "RandBiasFieldd", "GaussianBlurd", "RandGaussianBlurd",
    "NormaliseGammad", "RandGammad", "AddNoised", "RandNoised", "Deformd", "RandDeformd", "MaskBackgroundd",
    "RemapLabelsd",
]  # fmt: skip

BACKGROUND_CODES: tuple[int, ...] = (0, *EXTRA_CEREBRAL_CODES)


def _batched(x: Any, key: Hashable, caller: str) -> torch.Tensor:
    t = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if t.ndim not in (3, 4) or t.shape[0] != 1:
        raise ValueError(f"{caller}: `{key}` must be channel-first (1, *S), got shape {tuple(t.shape)}.")
    return t[None]


def _like(out: torch.Tensor, ref: Any) -> torch.Tensor:
    out = out[0]
    return MetaTensor(out, meta=dict(ref.meta)) if isinstance(ref, MetaTensor) else out


class _RandTwin(Randomizable, MapTransform):
    """Base of the random transforms: ``randomize`` -> ``last_params`` -> apply ``twin()``."""

    twin_cls: type
    last_params: dict[str, Any] | None = None

    def _twin_kwargs(self) -> dict[str, Any]:
        return {"keys": self.keys, "allow_missing_keys": self.allow_missing_keys}

    def twin(self) -> MapTransform:
        """The deterministic transform that applies ``last_params`` (replays the last sample)."""
        if self.last_params is None:
            raise RuntimeError(f"{type(self).__name__}.twin: no sample drawn yet; call the transform first.")
        return self.twin_cls(**self._twin_kwargs(), **self.last_params)

    def __call__(self, data: Mapping) -> dict:
        self.randomize()
        return self.twin()(data)


class LabelsToImaged(MapTransform):
    """Gaussian-mixture image from a label map: intensity ~ N(means[code], stds[code]**2) per voxel.

    Args:
        label_key: key of the ``(1, *S)`` FreeSurfer-coded label map. image_key: output key.
        means, stds: lookup tables indexed by code (0-255 scale). seed: per-voxel noise seed.
    """

    def __init__(self, label_key: str = "label", image_key: str = "image", means=None, stds=None, seed: int = 0):
        super().__init__([label_key])
        if means is None or stds is None:
            raise ValueError("LabelsToImaged: `means` and `stds` lookup tables are required.")
        self.label_key, self.image_key = label_key, image_key
        self.means, self.stds, self.seed = np.asarray(means), np.asarray(stds), int(seed)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        lab = _batched(d[self.label_key], self.label_key, "LabelsToImaged")
        img = synth.labels_to_image(lab, torch.from_numpy(self.means), torch.from_numpy(self.stds), self.seed)
        d[self.image_key] = _like(img, d[self.label_key])
        return d


class RandLabelsToImaged(_RandTwin):
    """Sample per-label intensities and synthesise an image (twin: :class:`LabelsToImaged`).

    Args:
        contrast: ``"t1"`` (class means/stds drawn from SynthSeg's T1 priors through
            :data:`common.data.brain.labels.T1_PRIOR_CLASS`; left/right share a class; codes without a class
            get random values) or ``"random"`` (every code independent: mean ~ U(mean_range),
            std ~ U(std_range), SynthMorph style).
        skull_strip: give extra-cerebral codes the background's intensity (skull-stripped look).
        max_code: lookup tables cover codes ``0..max_code``.
    """

    twin_cls = LabelsToImaged

    def __init__(
        self,
        label_key: str = "label",
        image_key: str = "image",
        contrast: str = "t1",
        skull_strip: bool = True,
        mean_range: tuple[float, float] = (0.0, 255.0),
        std_range: tuple[float, float] = (0.0, 25.0),
        max_code: int = 1023,
    ):
        super().__init__([label_key])
        if contrast not in ("t1", "random"):
            raise ValueError(f"RandLabelsToImaged: contrast must be 't1' or 'random', got {contrast!r}.")
        self.label_key, self.image_key, self.contrast = label_key, image_key, contrast
        self.skull_strip, self.mean_range, self.std_range = skull_strip, mean_range, std_range
        self.size = int(max_code) + 1

    def randomize(self, data: Any = None) -> None:
        means = self.R.uniform(*self.mean_range, self.size)
        stds = self.R.uniform(*self.std_range, self.size)
        if self.contrast == "t1":
            n = T1_PRIOR_MEANS.shape[1]
            cls_mean = np.clip(self.R.normal(T1_PRIOR_MEANS[0], T1_PRIOR_MEANS[1]), 0, None)
            cls_std = np.clip(self.R.normal(T1_PRIOR_STDS[0], T1_PRIOR_STDS[1]), 0, None)
            codes = np.fromiter(T1_PRIOR_CLASS, dtype=np.int64)
            classes = np.fromiter(T1_PRIOR_CLASS.values(), dtype=np.int64)
            keep = codes < self.size
            means[codes[keep]], stds[codes[keep]] = cls_mean[classes[keep] % n], cls_std[classes[keep] % n]
        if self.skull_strip:
            ec = [c for c in EXTRA_CEREBRAL_CODES if c < self.size]
            means[ec], stds[ec] = means[0], stds[0]
        seed = int(self.R.randint(0, 2**31 - 1))
        self.last_params = {"means": means.astype(np.float32), "stds": stds.astype(np.float32), "seed": seed}

    def _twin_kwargs(self) -> dict[str, Any]:
        return {"label_key": self.label_key, "image_key": self.image_key}


class BiasFieldd(MapTransform):
    """Multiply images by ``exp(upsampled coefficients)``; ``coefficients`` is a coarse ``(*C)`` log-field."""

    def __init__(self, keys, coefficients=None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.coefficients = torch.as_tensor(np.asarray(coefficients), dtype=torch.float32)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = _batched(d[key], key, "BiasFieldd").float()
            field = synth.bias_field(self.coefficients[None, None], img.shape[2:])
            d[key] = _like(img * field, d[key])
        return d


class RandBiasFieldd(_RandTwin):
    """Sample a smooth bias field: coarse ``grid`` of N(0, s) log-values, s ~ U(0, ``max_std``)."""

    twin_cls = BiasFieldd

    def __init__(self, keys, max_std: float = 0.3, grid: Sequence[int] = (4, 4, 4), allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.max_std, self.grid = float(max_std), tuple(int(g) for g in grid)

    def randomize(self, data: Any = None) -> None:
        s = self.R.uniform(0, self.max_std)
        self.last_params = {"coefficients": self.R.normal(0, s, self.grid).astype(np.float32)}


class GaussianBlurd(MapTransform):
    """Gaussian blur with ``sigma`` voxels per axis."""

    def __init__(self, keys, sigma: Sequence[float] | float = 0.0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.sigma = sigma

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = _like(synth.gaussian_blur(_batched(d[key], key, "GaussianBlurd").float(), self.sigma), d[key])
        return d


class RandGaussianBlurd(_RandTwin):
    """Sample an anisotropic blur, sigma ~ U(``sigma_range``) mm per axis (converted with ``spacing``)."""

    twin_cls = GaussianBlurd

    def __init__(self, keys, sigma_range=(0.0, 1.0), spacing: float = 1.0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.sigma_range, self.spacing = sigma_range, float(spacing)

    def randomize(self, data: Any = None) -> None:
        self.last_params = {"sigma": [float(s) / self.spacing for s in self.R.uniform(*self.sigma_range, 3)]}


class NormaliseGammad(MapTransform):
    """Min-max normalise to [0, 1], then apply ``x ** gamma``."""

    def __init__(self, keys, gamma: float = 1.0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.gamma = float(gamma)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = _like(synth.normalise_gamma(_batched(d[key], key, "NormaliseGammad").float(), self.gamma), d[key])
        return d


class RandGammad(_RandTwin):
    """Sample ``gamma = exp(N(0, log_std))`` (twin: :class:`NormaliseGammad`)."""

    twin_cls = NormaliseGammad

    def __init__(self, keys, log_std: float = 0.25, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.log_std = float(log_std)

    def randomize(self, data: Any = None) -> None:
        self.last_params = {"gamma": float(np.exp(self.R.normal(0, self.log_std)))}


class AddNoised(MapTransform):
    """Add Gaussian noise of standard deviation ``std`` (reproducible by ``seed``)."""

    def __init__(self, keys, std: float = 0.0, seed: int = 0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.std, self.seed = float(std), int(seed)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for i, key in enumerate(self.key_iterator(d)):
            img = _batched(d[key], key, "AddNoised").float()
            d[key] = _like(synth.add_noise(img, self.std, self.seed + i), d[key])
        return d


class RandNoised(_RandTwin):
    """Sample noise std ~ U(``std_range``) (image units, after normalisation) and a seed."""

    twin_cls = AddNoised

    def __init__(self, keys, std_range=(0.0, 0.03), allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.std_range = std_range

    def randomize(self, data: Any = None) -> None:
        self.last_params = {"std": float(self.R.uniform(*self.std_range)), "seed": int(self.R.randint(0, 2**31 - 1))}


class Deformd(MapTransform):
    """Warp images (linear) and label maps (one-hot linear, any codes) by the same affine + SVF deformation.

    Args:
        image_keys, label_keys: keys warped as intensities / as label maps.
        matrix: ``(3, 4)`` affine, centred voxel coordinates (:func:`common.data.brain.synth.affine_matrix`).
        control_points: ``(3, *C)`` B-spline velocity control points in voxels, or None.
        stride: control point spacing in voxels. num_steps: scaling-and-squaring steps.
    """

    def __init__(self, image_keys=(), label_keys=(), matrix=None, control_points=None, stride: int = 16,
                 num_steps: int = 7, allow_missing_keys: bool = False):  # fmt: skip
        image_keys, label_keys = (
            [image_keys] if isinstance(image_keys, str) else list(image_keys),
            ([label_keys] if isinstance(label_keys, str) else list(label_keys)),
        )
        super().__init__(image_keys + label_keys, allow_missing_keys)
        self.image_keys, self.label_keys = image_keys, label_keys
        self.matrix, self.control_points = matrix, control_points
        self.stride, self.num_steps = stride, int(num_steps)
        self.last_ddf: torch.Tensor | None = None

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        shape = _batched(d[keys[0]], keys[0], "Deformd").shape[2:]
        for key in keys:
            if _batched(d[key], key, "Deformd").shape[2:] != shape:
                raise ValueError(f"Deformd: `{key}` has spatial shape differing from `{keys[0]}` {tuple(shape)}.")
        ddf = synth.deformation_field(shape, self.matrix, self.control_points, self.stride, self.num_steps)
        self.last_ddf = ddf
        for key in keys:
            x = _batched(d[key], key, "Deformd")
            out = synth.warp_label_map(x, ddf) if key in self.label_keys else warp(x.float(), ddf)
            d[key] = _like(out, d[key])
        return d


class RandDeformd(_RandTwin):
    """Sample a random affine (about the centre) and a smooth diffeomorphic deformation (twin: :class:`Deformd`).

    Args:
        rotation: max |angle| in degrees per axis. scale: max relative scaling per axis. shear: max shear.
        translation: max |shift| in mm per axis.
        svf_std: max standard deviation (mm) of the velocity control points; the std itself is drawn from
            U(0, svf_std) per sample. stride: control point spacing in mm.
        spacing: mm per voxel of the data (1 for the 1 mm grid, 2 for the 2 mm grid).

    The default affine range is modest because the label maps are already affinely aligned to the template:
    two independent draws differ by up to 10 degrees, 10 % scale and 6 mm.
    """

    twin_cls = Deformd

    def __init__(self, image_keys=(), label_keys=(), rotation: float = 5.0, scale: float = 0.05, shear: float = 0.02,
                 translation: float = 3.0, svf_std: float = 3.0, stride: float = 16.0, spacing: float = 1.0,
                 num_steps: int = 7, allow_missing_keys: bool = False):  # fmt: skip
        self._kw = {"image_keys": image_keys, "label_keys": label_keys, "num_steps": num_steps}
        keys = ([image_keys] if isinstance(image_keys, str) else list(image_keys)) + (
            [label_keys] if isinstance(label_keys, str) else list(label_keys)
        )
        super().__init__(keys, allow_missing_keys)
        self.rotation, self.scale, self.shear, self.translation = rotation, scale, shear, translation
        self.svf_std, self.spacing = float(svf_std), float(spacing)
        self.stride = max(int(round(stride / self.spacing)), 1)

    def randomize(self, data: Any = None) -> None:
        shape = data
        matrix = synth.affine_matrix(
            self.R.uniform(-self.rotation, self.rotation, 3),
            1.0 + self.R.uniform(-self.scale, self.scale, 3),
            self.R.uniform(-self.shear, self.shear, 3),
            self.R.uniform(-self.translation, self.translation, 3) / self.spacing,
        )
        cp = None
        if self.svf_std > 0:
            std = self.R.uniform(0, self.svf_std) / self.spacing
            cp = self.R.normal(0, std, (3, *control_grid_shape(shape, self.stride))).astype(np.float32)
        self.last_params = {"matrix": matrix.astype(np.float32), "control_points": cp, "stride": self.stride}

    def _twin_kwargs(self) -> dict[str, Any]:
        return {**self._kw, "allow_missing_keys": self.allow_missing_keys}

    def __call__(self, data: Mapping) -> dict:
        keys = list(self.key_iterator(data))
        if not keys:
            return dict(data)
        self.randomize(tuple(_batched(data[keys[0]], keys[0], "RandDeformd").shape[2:]))
        return self.twin()(data)


class MaskBackgroundd(MapTransform):
    """Zero image voxels whose label is background or extra-cerebral (``background`` codes)."""

    def __init__(self, image_keys, label_key: str = "label", background: Sequence[int] = BACKGROUND_CODES):
        super().__init__(image_keys)
        self.label_key, self.background = label_key, tuple(background)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        lab = _batched(d[self.label_key], self.label_key, "MaskBackgroundd")
        for key in self.key_iterator(d):
            img = _batched(d[key], key, "MaskBackgroundd").float()
            d[key] = _like(synth.mask_background(img, lab, self.background), d[key])
        return d


class RemapLabelsd(MapTransform):
    """FreeSurfer codes -> evaluation labels (consecutive 0..32 by default), see ``remap_to_eval``."""

    def __init__(self, keys, consecutive: bool = True, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.consecutive = consecutive

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = _batched(d[key], key, "RemapLabelsd")
            out = torch.from_numpy(remap_to_eval(x.cpu().numpy(), self.consecutive).astype(np.int64)).to(x.device)
            d[key] = _like(out.to(torch.float32), d[key])
        return d
