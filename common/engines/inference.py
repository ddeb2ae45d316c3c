"""Bundle inference as MONAI components: a pair-loading transform, an output-writing postprocessing transform
and a summary handler, driven by MONAI's ``SupervisedEvaluator`` (so ``monai.bundle run`` and the bundle
property checks work unchanged).

Flow for each pair (any orientation/spacing; see :mod:`common.geometry`):

1. :class:`~common.engines.pair_loading.LoadRegistrationPaird` reads the files (clear errors naming the file), builds the network grid from
   the fixed image (training orientation and spacing), resamples both images onto it and scales intensities
   to [0, 1] with percentiles (the same rule as training, :func:`normalise_intensity`);
2. the evaluator runs the network on ``[moving, fixed]``;
3. :class:`SaveRegistrationOutputsd` turns the prediction into a displacement on the network grid, maps it to
   the fixed image's own grid (vectors rescaled through mm) and writes, each file atomically: the warped moving
   image in the fixed geometry, warped moving labels (one-hot linear warp), the Learn2Reg displacement file,
   the ITK displacement field (loads in 3D Slicer as a transform), a QC PNG and a metrics JSON;
4. :class:`~common.engines.summary.RegistrationSummaryHandler` writes ``summary.csv`` over all pairs.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import SimpleInferer
from monai.transforms import Transform

from common.engines.outputs import PairContext, parse_outputs, write_pair_outputs
from common.engines.pair_loading import normalise_intensity
from common.engines.registration import PredToDDF
from common.geometry import (
    ddf_to_fixed_grid,
    warp_to_fixed,
)
from common.io.files import pair_output_name
from common.io.nifti import atomic_path, read_nifti

__all__ = [
    "refine_on_fixed_grid",
    "NetworkInferer",
    "SaveRegistrationOutputsd",
    "bundle_provenance",
    "remove_stale_partials",
    "fix_malloc_mmap_threshold",
]


def bundle_provenance(bundle_root: str | os.PathLike | None, ckpt_path: str | os.PathLike | None) -> dict[str, Any]:
    """``{"bundle", "version", "weights", "weights_sha256"}`` of a bundle run (what ``metrics.json`` records)."""
    import hashlib

    out: dict[str, Any] = {}
    if bundle_root:
        root = Path(bundle_root).resolve()
        meta_path = root / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        out["bundle"] = root.name
        out["version"] = meta.get("version")
    if ckpt_path and Path(ckpt_path).is_file():
        digest = hashlib.sha256()
        with open(ckpt_path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        out["weights"] = str(Path(ckpt_path).resolve())
        out["weights_sha256"] = digest.hexdigest()
    return out


def _writer_of(folder: Path) -> str:
    """ "bundle X" from a finished pair folder's metrics.json, for messages ("another run" when unknown)."""
    try:
        prov = json.loads((folder / "metrics.json").read_text()).get("provenance", {})
        return f"bundle {prov['bundle']}" if prov.get("bundle") else "another run"
    except (OSError, ValueError, AttributeError):
        return "another run"


def remove_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Remove ``.<pair>.partial-<pid>`` folders left in ``folder`` by processes that no longer run (a killed
    registration); folders of live processes are kept. Returns the removed paths."""
    removed = []
    base = Path(folder)
    if not base.is_dir():
        return removed
    for p in base.glob(".*.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or not ours to signal): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def fix_malloc_mmap_threshold(nbytes: int = 4 << 20) -> bool:
    """glibc only: serve every allocation >= ``nbytes`` by ``mmap`` so it goes back to the OS when freed.

    glibc raises its mmap threshold each time a large block is freed (up to 32 MB), after which the 27 MB
    volumes of a 1 mm brain come from the heap and freed ones stay resident; writing the outputs of one
    1 mm pair then ratchets the process to about 0.2 GB more than it ever holds at once. A fixed threshold
    (what ``MALLOC_MMAP_THRESHOLD_`` sets) stops that. Left alone when that variable is set or on other C
    libraries. Returns whether the setting was applied.
    """
    if sys.platform != "linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    m_mmap_threshold = -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, int(nbytes)))


def refine_on_fixed_grid(
    optimiser: Any,
    ddf: torch.Tensor,
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
) -> torch.Tensor:
    """Instance optimisation of ``ddf`` ``(1, D, *S_fixed)`` (fixed voxels) on the fixed image's own grid.

    Both images are percentile-scaled (:func:`normalise_intensity`), the moving one resampled into the fixed
    geometry (linear); ``optimiser`` (an :class:`~common.engines.instance_optimisation.InstanceOptimiser`) starts
    from ``ddf``. Returns the refined displacement in fixed voxels.
    """
    t_mov = torch.as_tensor(normalise_intensity(moving))[None, None]
    mov_on_fixed = warp_to_fixed(t_mov, moving_affine, None, fixed_affine, fixed_shape=fixed.shape)
    del t_mov
    t_fix = torch.as_tensor(normalise_intensity(fixed))[None, None]
    with torch.enable_grad():
        refined = optimiser(mov_on_fixed, t_fix, init=ddf)
    return refined.to(ddf.dtype)


class NetworkInferer(SimpleInferer):
    """MONAI's ``SimpleInferer`` run under ``torch.inference_mode`` (about 10 % faster than the evaluator's
    ``no_grad`` on CPU, same values) and, with ``bf16``, under CPU/GPU bfloat16 autocast. MONAI's evaluator only
    autocasts on CUDA (``amp``); bfloat16 halves the lumir_cascade network time on this CPU but moves the field by up
    to ~0.02 voxels, so it is off by default (``network_bf16`` in ``inference.json``). The prediction is returned
    as an ordinary float32 tensor (later steps, e.g. instance optimisation, may differentiate through its
    descendants)."""

    def __init__(self, bf16: bool = False) -> None:
        super().__init__()
        self.bf16 = bool(bf16)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        device = inputs.device.type if isinstance(inputs, torch.Tensor) else "cpu"
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=self.bf16):
            out = super().__call__(inputs, network, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out.float().clone()
        return out


class SaveRegistrationOutputsd(Transform):
    """Evaluator postprocessing (decollated items): map the field to the fixed grid and write the outputs.

    Args:
        pred_to_ddf: turns ``pred`` into a displacement on the network grid.
        output_dir: folder; each pair gets ``<moving>_to_<fixed>/``.
        overwrite: replace existing outputs (default: refuse, naming the folder).
        outputs: which outputs to write (:data:`common.engines.outputs.OUTPUTS`: warped, labels, l2r, itk, qc,
            metrics, inverse, extras), a list or a comma-separated string; None or ``"all"``: every one.
            ``metrics.json`` (provenance, timings and the selected metrics) is always written.
        compression: gzip level 0-9 for every file; None: displacement fields level 0, images level 1 (see
            :mod:`common.engines.outputs`).
        threads: writers run at once (thread pool); 1 writes one after the other.
        extra_outputs: callable ``(item, ddf_net) -> dict[name, (array (C or 1, *S_net))]`` for method-specific
            maps (e.g. an uncertainty map); they are resampled to the fixed grid and written as NIfTI.
        qc_extra: name of the extra output shown as the last column of the QC figure.
        extra_files: callable ``(item, out_dir, geometry) -> dict[name, path]`` that writes method-specific files
            (e.g. an ITK affine transform) into ``out_dir`` (the pair's folder, still being written: a failure
            leaves no half-written outputs); ``geometry`` holds ``net_affine``, ``fixed_affine``,
            ``moving_affine`` and ``fixed_shape`` as numpy arrays.
        bundle_root, ckpt_path: recorded in ``metrics.json`` (``provenance``: bundle, version, weights and their
            sha256) and ``summary.csv`` (``bundle``), and named when a pair folder written by another run is refused.
        pipeline: write a pair's outputs in a background thread while the next pair is read and registered
            (``python -m common batch`` does). At most one pair is being written at a time; its error surfaces when
            the next pair arrives or when the run ends (:class:`common.engines.summary.RegistrationSummaryHandler`
            waits for it); the item's ``registration_pending`` is that future, whose result is the completed item
            (with its ``registration`` record).
        inverse_to_ddf: for methods with an inverse transform (e.g. ``SVFToDDF(inverse=True)``): turns ``pred``
            into the inverse displacement on the network grid. Then also written, on the MOVING image's grid:
            ``inverse_displacement_itk.nii.gz`` (pulls the fixed image onto the moving one), ``warped_fixed.nii.gz``
            and, with both label maps, ``warped_fixed_label.nii.gz`` and ``dice_inverse_*`` metrics.
    """

    def __init__(
        self,
        pred_to_ddf: PredToDDF,
        output_dir: str,
        overwrite: bool = False,
        outputs: Sequence[str] | str | None = None,
        compression: int | None = None,
        threads: int = 2,
        extra_outputs: Any = None,
        qc_extra: str | None = None,
        inverse_to_ddf: PredToDDF | None = None,
        extra_files: Any = None,
        instance_optimiser: Any = None,
        bundle_root: str | None = None,
        ckpt_path: str | None = None,
        pipeline: bool = False,
    ) -> None:
        self.pred_to_ddf = pred_to_ddf
        self.pipeline, self._pool, self._pending = bool(pipeline), None, None
        self.bundle_root, self.ckpt_path = bundle_root, ckpt_path
        self.outputs = parse_outputs(outputs)
        if compression is not None and (isinstance(compression, bool) or not 0 <= int(compression) <= 9):
            raise ValueError(f"compression: a gzip level 0-9 or null, got {compression!r}.")
        self.compression = None if compression is None else int(compression)
        self.threads = max(1, int(threads))
        existing = next((p for p in (Path(output_dir), *Path(output_dir).parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():  # fail before registering, not after
            raise NotADirectoryError(f"{output_dir}: cannot create the output folder: {existing} is a file.")
        self._provenance: dict[str, Any] | None = None
        self._cleaned = False
        self.instance_optimiser = instance_optimiser
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.extra_outputs, self.qc_extra, self.inverse_to_ddf = extra_outputs, qc_extra, inverse_to_ddf
        self.extra_files = extra_files
        self._written: set[str] = set()
        fix_malloc_mmap_threshold()  # inference only: fewer 1 mm volumes left resident (see the function)

    def wait(self) -> None:
        """Wait until the pair being written in the background (``pipeline``) is done; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        self.wait()  # the previous pair's outputs were written while this pair was read and registered
        start = time.perf_counter()
        geo = {k: np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in item["geometry"].items()}
        paths = item["paths"]
        name = pair_output_name(paths, item.get("pair_id") or None)
        if name in self._written:
            raise ValueError(
                f"SaveRegistrationOutputsd: two pairs of this run map to the output folder {self.output_dir / name} "
                "(same file names in different folders?); give each datalist entry a unique 'id'."
            )
        self._written.add(name)
        out = self.output_dir / name
        if not self._cleaned:
            remove_stale_partials(self.output_dir)  # leftovers of killed runs
            self._cleaned = True
        if self._provenance is None:
            self._provenance = bundle_provenance(self.bundle_root, self.ckpt_path)
        if out.exists() and any(out.iterdir()) and not self.overwrite:
            raise FileExistsError(
                f"{out}: output folder exists (written by {_writer_of(out)}); pass --overwrite true to replace it "
                "or choose another output folder."
            )
        timings: dict[str, Any] = {}
        if "t_start" in item and "seconds_read" in item:
            timings["read"] = float(item["seconds_read"])
            # collation, device transfer and the forward pass: what happened between reading and this call
            timings["network"] = start - float(item["t_start"]) - float(item["seconds_read"])
        pred = item["pred"]
        pred = pred.as_tensor() if hasattr(pred, "as_tensor") else pred
        net_shape = tuple(item["fixed_image"].shape[1:])
        with torch.no_grad():
            ddf_net = self.pred_to_ddf(pred[None].float(), net_shape)
            fixed_shape = tuple(int(s) for s in geo["fixed_shape"])
            ddf = ddf_to_fixed_grid(ddf_net, geo["net_affine"], geo["fixed_affine"], fixed_shape)
        dims = ddf.shape[1]
        moving, _ = read_nifti(paths["moving_image"], ndim=dims)
        fixed, _ = read_nifti(paths["fixed_image"], ndim=dims)
        timings["map_to_fixed"] = time.perf_counter() - start  # incl. re-reading both images on their own grids
        refine_s = None
        if self.instance_optimiser is not None and self.instance_optimiser.total_iterations > 0:
            ddf = refine_on_fixed_grid(
                self.instance_optimiser, ddf, moving, geo["moving_affine"], fixed, geo["fixed_affine"]
            )
            refine_s = timings["instance_optimisation"] = float(self.instance_optimiser.seconds)
        final_out = out
        out = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        # absolute paths for the writer threads: ITK's lazy module loader changes the working directory while it
        # loads (itk/support/base.py), which would send another thread's relative path elsewhere
        abs_paths = {k: os.path.abspath(v) for k, v in paths.items()}
        ctx = PairContext(
            out=out.resolve(), title=final_out.name, item=item, geo=geo, paths=abs_paths, ddf=ddf, ddf_net=ddf_net, moving=moving,
            fixed=fixed, selected=self.outputs, compression=self.compression, inverse_to_ddf=self.inverse_to_ddf,
            extra_outputs=self.extra_outputs, extra_files=self.extra_files, qc_extra=self.qc_extra,
        )  # fmt: skip
        args = (ctx, item, out, final_out, paths, timings, refine_s, start)
        if not self.pipeline:
            return self._complete(*args)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pair-outputs")
        self._pending = item["registration_pending"] = self._pool.submit(self._complete, *args)
        return item

    def _complete(self, ctx, item, out, final_out, paths, timings, refine_s, start) -> dict[str, Any]:
        """Write the outputs into the hidden ``out`` folder, then ``metrics.json``, then rename it to ``final_out``."""
        try:
            t_out = time.perf_counter()
            written, metrics, writer_s = write_pair_outputs(ctx, self.threads)
            timings["outputs"] = time.perf_counter() - t_out
            timings["writers"] = writer_s
            self._finish(item, out, final_out, paths, written, metrics, timings, refine_s, start)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        if self.overwrite and final_out.exists():
            shutil.rmtree(final_out, ignore_errors=True)
        try:
            os.rename(out, final_out)  # refuses a non-empty folder: another run finished this pair meanwhile
        except OSError:
            who = _writer_of(final_out)
            shutil.rmtree(out, ignore_errors=True)
            raise FileExistsError(
                f"{final_out}: written meanwhile by {who} into the same output folder; nothing of this run was "
                "kept. Use another output folder, or pass --overwrite true."
            ) from None
        return item

    def _finish(self, item, out, final_out, paths, written, metrics, timings, refine_s, start) -> None:
        """``metrics.json`` (pair, provenance, metrics, outputs, timings) and the pair's summary record."""
        if refine_s is not None:
            metrics["seconds_instance_optimisation"] = float(refine_s)
            metrics["instance_iterations"] = int(self.instance_optimiser.total_iterations)
        metrics["seconds_postprocess"] = time.perf_counter() - start
        if "t_start" in item:
            # reading + resampling + network + mapping back + writing the outputs, for this pair
            metrics["seconds_total"] = timings["total"] = time.perf_counter() - float(item["t_start"])
        timings["finished_at"] = time.time()  # wall clock: a batch's throughput is the spacing of these
        written = {k: str(final_out / Path(v).name) for k, v in written.items()}
        timings = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in timings.items()}
        record = {"pair": paths, "provenance": self._provenance or {}, "metrics": metrics, "outputs": written,
                  "timings": timings}  # fmt: skip
        with atomic_path(out / "metrics.json") as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        item["registration"] = {
            "name": final_out.name,
            "bundle": (self._provenance or {}).get("bundle"),
            "out_dir": str(final_out),
            **metrics,
        }
