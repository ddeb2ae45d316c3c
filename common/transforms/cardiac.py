"""MONAI dictionary transforms that synthesise cardiac ED/ES registration pairs on the fly.

:class:`RandCardiacPhantomd` samples phantom parameters (:func:`common.data.cardiac.sample_phantom_params`)
and delegates to its deterministic twin :class:`CardiacPhantomd`, which renders given parameters
(:func:`common.data.cardiac.render_cardiac_phantom`). The sampled parameters are stored in the output
dict (``params_key``, JSON) so a sample can be replayed exactly; a ``seed`` entry in the input dict makes the
draw deterministic regardless of the transform's random state (useful for fixed validation sets)::

    ds = monai.data.Dataset([{"seed": i} for i in range(100)], RandCardiacPhantomd())
    ds[0]["moving_image"].shape  # (1, 112, 112), ED; fixed_image is ES

Outputs are numpy arrays: images ``(1, H, W)`` float32 in [0, 1], labels ``(1, H, W)`` uint8 (1 RV
cavity, 2 myocardium, 3 LV cavity); append ``EnsureTyped`` for tensors. With ``with_ddf`` and direction
``"ED->ES"`` the known ES->ED displacement is added as ``"ddf"``, ``(2, H, W)`` float32, in the project's
convention (voxels, on the fixed = ES grid, ``fixed(x) ~ moving(x + ddf(x))``).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.transforms import Randomizable, Transform

from common.data.cardiac.phantom import CardiacPhantomParams
from common.data.cardiac.preprocess import DIRECTIONS, make_pairs
from common.data.cardiac.render import render_cardiac_phantom
from common.data.cardiac.sampling import PhantomRanges, sample_phantom_params
from common.data.cardiac.stats import load_cardiac_stats

__all__ = ["CardiacPhantomd", "RandCardiacPhantomd"]


class CardiacPhantomd(Transform):
    """Render the pair described by ``data[params_key]`` (deterministic).

    Args:
        direction: ``"ED->ES"`` (moving ED, fixed ES) or ``"ES->ED"``.
        params_key: key holding a :class:`CardiacPhantomParams`, its ``to_dict()`` or that dict as JSON.
        stats: intensity statistics table (default: the shipped one).
        with_ddf: add the known displacement as ``"ddf"`` (only for ``"ED->ES"``).
        id_key: key of the output id (``f"phantom_{texture_seed}_ED-ES"`` unless the input has one).
    """

    def __init__(
        self,
        direction: str = "ED->ES",
        params_key: str = "phantom_params",
        stats: dict[str, Any] | None = None,
        with_ddf: bool = False,
        id_key: str = "id",
    ) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"CardiacPhantomd: direction must be one of {DIRECTIONS}, got {direction!r}.")
        if with_ddf and direction != "ED->ES":
            raise ValueError("CardiacPhantomd: with_ddf needs direction 'ED->ES' (the field maps ES onto ED).")
        self.direction = direction
        self.params_key = params_key
        self.stats = stats if stats is not None else load_cardiac_stats()
        self.with_ddf = with_ddf
        self.id_key = id_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self.params_key not in data:
            raise KeyError(f"CardiacPhantomd: input has no '{self.params_key}' entry (keys: {list(data)}).")
        params = data[self.params_key]
        if isinstance(params, str):
            try:
                params = json.loads(params)
            except json.JSONDecodeError as exc:
                raise ValueError(f"CardiacPhantomd: '{self.params_key}' is a string but not JSON ({exc}).") from exc
        if isinstance(params, Mapping):
            params = CardiacPhantomParams.from_dict(dict(params))
        if not isinstance(params, CardiacPhantomParams):
            raise TypeError(
                f"CardiacPhantomd: '{self.params_key}' must be CardiacPhantomParams, a dict or a JSON "
                f"string, got {type(params).__name__}."
            )
        frames = render_cardiac_phantom(params, self.stats, with_ddf=self.with_ddf)
        base_id = str(data.get(self.id_key, f"phantom_{params.texture_seed}"))
        (pair,) = make_pairs(
            frames["ed_image"],
            frames["es_image"],
            frames["ed_label"],
            frames["es_label"],
            base_id,
            [self.direction],
        )
        out = dict(data)
        out.update(pair)
        if self.with_ddf:
            out["ddf"] = frames["ddf"]
        return out


class RandCardiacPhantomd(Randomizable, Transform):
    """Sample phantom parameters, then render with :class:`CardiacPhantomd`.

    Args:
        size: image size ``(H, W)`` in pixels.
        spacing_mm: pixel size in mm.
        direction: ``"ED->ES"``, ``"ES->ED"`` or ``"random"`` (either, with probability 1/2).
        ranges: sampling ranges (default :class:`common.data.cardiac.PhantomRanges`).
        stats: intensity statistics table (default: the shipped one).
        seed_key: if the input dict has this key, parameters come from ``numpy.random.default_rng(seed)``
            (and the direction from the same stream) instead of the transform's random state.
        params_key: key under which the sampled parameters are stored for replay, as a JSON string (a
            string collates in a DataLoader batch; a nested dict of variable-length tuples does not).
        with_ddf: add the known displacement (requires ``direction="ED->ES"``).
    """

    def __init__(
        self,
        size: tuple[int, int] = (112, 112),
        spacing_mm: float = 1.5,
        direction: str = "ED->ES",
        ranges: PhantomRanges | None = None,
        stats: dict[str, Any] | None = None,
        seed_key: str = "seed",
        params_key: str = "phantom_params",
        with_ddf: bool = False,
    ) -> None:
        if direction not in (*DIRECTIONS, "random"):
            raise ValueError(
                f"RandCardiacPhantomd: direction must be one of {DIRECTIONS} or 'random', got {direction!r}."
            )
        if with_ddf and direction != "ED->ES":
            raise ValueError("RandCardiacPhantomd: with_ddf needs direction 'ED->ES'.")
        self.size = (int(size[0]), int(size[1]))
        self.spacing_mm = float(spacing_mm)
        self.direction = direction
        self.ranges = ranges
        self.stats = stats if stats is not None else load_cardiac_stats()
        self.seed_key = seed_key
        self.params_key = params_key
        self.with_ddf = with_ddf
        self._renderers = {
            d: CardiacPhantomd(d, params_key, self.stats, with_ddf and d == "ED->ES") for d in DIRECTIONS
        }
        self._params: CardiacPhantomParams | None = None
        self._chosen = direction if direction != "random" else DIRECTIONS[0]

    def randomize(self, data: Mapping[Hashable, Any] | None = None) -> None:
        if data is not None and self.seed_key in data:
            rng = np.random.default_rng(int(data[self.seed_key]))
        else:
            rng = np.random.default_rng(self.R.randint(0, 2**31 - 1))
        self._params = sample_phantom_params(rng, self.stats, self.size, self.spacing_mm, self.ranges)
        self._chosen = self.direction if self.direction != "random" else DIRECTIONS[int(rng.integers(2))]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize(data)
        assert self._params is not None
        inp = dict(data)
        inp[self.params_key] = json.dumps(self._params.to_dict())
        return self._renderers[self._chosen](inp)
