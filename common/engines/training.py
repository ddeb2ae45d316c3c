"""Ignite handlers the bundles' training configs need beyond MONAI's: crash-safe checkpoints, resume-from-latest,
a CSV of the loss terms, and export of a plain state dict for ``models/model.pt``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

from common.engines.training_logs import LossTermsCSV, MetricCSV
from common.io.nifti import atomic_path

__all__ = [
    "BundleCheckpointLoader",
    "SafeCheckpointSaver",
    "ResumeFromLatest",
    "LossTermsCSV",
    "MetricCSV",
    "latest_checkpoint",
    "export_state_dict",
    "load_state_dict_safely",
    "init_from_checkpoint",
    "end_distributed",
]


class _AtomicDiskSaver(DiskSaver):
    """Ignite save handler: temp file + fsync + rename, and removals deferred until the next save has landed."""

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None, stale_glob: str | None = None,
                 record_score: bool = False):  # fmt: skip
        super().__init__(dirname=str(dirname), atomic=True, create_dir=True, require_empty=False)
        self.filename = filename
        self._pending: list[str] = []
        # files an earlier (interrupted) process left under the same name pattern: ignite only tracks the files
        # of its own process, so these are removed once this process's first checkpoint has landed
        self._stale_glob = stale_glob
        self.record_score = record_score

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename or filename
        with atomic_path(Path(self.dirname) / name) as tmp, open(tmp, "wb") as fh:
            torch.save(checkpoint, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if self.record_score and metadata is not None:
            with atomic_path(_score_record(Path(self.dirname) / name)) as tmp:
                tmp.write_text(json.dumps({"priority": float(metadata["priority"]), "ignite_name": filename}) + "\n")
        pending, self._pending = self._pending, []
        if self._stale_glob:
            pending += [p.name for p in Path(self.dirname).glob(self._stale_glob) if not p.name.startswith(".")]
            self._stale_glob = None
        for old in pending:
            if old != name:
                (Path(self.dirname) / old).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        self._pending.append(self.filename or filename)


class SafeCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) made safe against a kill while saving.

    MONAI's saver writes in place (``atomic=False``, to keep group/other read permission) and ignite's
    ``Checkpoint`` deletes the previous file *before* writing the new one, so a SIGKILL or OOM kill during a save
    with ``n_saved=1`` leaves only a truncated checkpoint (found by ``tests/robustness``). Here every file is
    written to a hidden temporary name, fsynced and renamed (normal permissions kept), and older checkpoints are
    removed only after the new one is complete; a kill at any moment leaves the previous checkpoint loadable.

    ignite forgets across processes what it saved, so on resume: with ``n_saved=1`` the interval checkpoint replaces
    the ones an interrupted run left, and the best-metric checkpoint is replaced only by a better score (recorded in
    ``<name>.score.json`` beside it; restored at the first validation when :class:`ResumeFromLatest` resumed from
    this folder, so a fresh run's best replaces an earlier run's whatever its score).
    """

    _restore: Any = None

    def metrics_completed(self, engine: Any) -> None:
        ckpt, self._restore = self._restore, None
        if ckpt is not None and str(Path(self.save_dir).resolve()) in _RESUMED_DIRS:
            _restore_best_score(ckpt)
        super().metrics_completed(engine)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                stale = None
                if ckpt is self._interval_checkpoint and ckpt.n_saved == 1:
                    # ignite's names: [<prefix>_]<checkpoint | the one key>_<epoch | iteration>=<n>.pt
                    name = "checkpoint" if len(self.save_dict) > 1 else next(iter(self.save_dict))
                    stale = f"{name}_{'epoch' if self.epoch_level else 'iteration'}=*.pt"
                    stale = f"{ckpt.filename_prefix}_{stale}" if ckpt.filename_prefix else stale
                best = ckpt is self._key_metric_checkpoint  # its score is recorded and restored on resume
                name = getattr(ckpt.save_handler, "filename", None)
                ckpt.save_handler = _AtomicDiskSaver(self.save_dir, name, stale_glob=stale, record_score=best)
                if best:
                    self._restore = ckpt


_RESUMED_DIRS: set[str] = set()  # checkpoint folders a ResumeFromLatest of this process resumed from


def _score_record(path: Path) -> Path:  # best_model.pt -> best_model.score.json
    return path.with_name(path.name.split(".")[0] + ".score.json")


def _restore_best_score(ckpt: Any) -> None:
    """Give a resumed run the score of the best checkpoint an earlier run left (ignite keeps it in memory only, so
    the first validation after a resume used to overwrite ``best_model.pt`` whatever its score)."""
    best = Path(ckpt.save_handler.dirname) / (ckpt.save_handler.filename or "none")
    if ckpt.save_handler.filename and best.is_file() and _score_record(best).is_file():
        saved = json.loads(_score_record(best).read_text())
        ckpt.load_state_dict({"_saved": [(float(saved["priority"]), str(saved["ignite_name"]))]})


def latest_checkpoint(ckpt_dir: str | os.PathLike, pattern: str = "latest*.pt") -> Path | None:
    """Newest file matching ``pattern`` in ``ckpt_dir`` (by the iteration/epoch number in its name, then mtime)."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    files = [p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith(".")]
    if not files:
        return None
    return max(files, key=lambda p: (p.stat().st_mtime, p.name))


class ResumeFromLatest:
    """Attach a MONAI ``CheckpointLoader`` for the newest ``latest*.pt`` in ``ckpt_dir``, if there is one.

    With ``load_dict = {"model": net, "optimizer": opt, "trainer": trainer}`` the run continues at the saved
    iteration with the optimiser state restored; without a checkpoint it starts from scratch.
    """

    def __init__(self, ckpt_dir: str, load_dict: Mapping[str, Any], map_location: Any = None, enabled: bool = True):
        self.ckpt_dir, self.load_dict, self.map_location, self.enabled = (
            ckpt_dir,
            dict(load_dict),
            map_location,
            enabled,
        )
        self.loaded_from: Path | None = None

    def attach(self, engine) -> None:
        _RESUMED_DIRS.discard(str(Path(self.ckpt_dir).resolve()))  # this run's own state, not an earlier one's
        if not self.enabled:
            return
        # temporary files of a save that was killed half-way (SafeCheckpointSaver writes ".<name>.*.pt" first)
        folder = Path(self.ckpt_dir)
        for tmp in folder.glob(".*.pt") if folder.is_dir() else []:
            engine.logger.info(f"ResumeFromLatest: removing {tmp.name}, left by a checkpoint save that was killed.")
            tmp.unlink(missing_ok=True)
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            engine.logger.info(f"ResumeFromLatest: no checkpoint in {self.ckpt_dir}; starting from scratch.")
            return
        self.loaded_from = path
        _RESUMED_DIRS.add(str(folder.resolve()))
        engine.logger.info(f"ResumeFromLatest: resuming from {path}.")
        CheckpointLoader(load_path=str(path), load_dict=self.load_dict, map_location=self.map_location).attach(engine)


def _signature(state: Mapping[str, torch.Tensor]) -> frozenset:
    return frozenset((k, tuple(v.shape)) for k, v in state.items())


def weights_owner(state: Mapping[str, torch.Tensor], bundles_dir: str | os.PathLike) -> str | None:
    """Name of the bundle under ``bundles_dir`` whose shipped ``models/model.pt`` has exactly these tensor names
    and shapes (the weights' architecture), or None."""
    want = _signature(state)
    for model in sorted(Path(bundles_dir).glob("*/models/model.pt")):
        try:
            if _signature(torch.load(model, map_location="cpu", weights_only=True)) == want:
                return model.parent.parent.name
        except Exception:  # an unreadable sibling is simply not the owner
            continue
    return None


class BundleCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (same arguments) that first checks the file, so a wrong one fails in one line.

    Before MONAI loads it, the checkpoint is read with ``weights_only=True`` (:func:`load_state_dict_safely`:
    corrupt, truncated or pickled-object files are refused, naming the file), and for a one-network
    ``load_dict`` its tensor names and shapes are compared with the network's. Weights of another architecture
    are refused with the bundle they belong to when a sibling bundle (``bundle_root/..``) ships that
    architecture ("these weights belong to brain_mri_prob_diffeo"), else with the count and a first example of
    the mismatched tensors, instead of MONAI's ``size mismatch`` list.

    Args:
        bundle_root: this bundle's folder (its name goes into the message; siblings are searched for the owner).
        strict: for MONAI: every tensor must match (default True).
    """

    def __init__(self, load_path: str, load_dict: dict, bundle_root: str | None = None, **kwargs: Any) -> None:
        super().__init__(load_path=load_path, load_dict=load_dict, **kwargs)
        self.bundle_root = Path(bundle_root).resolve() if bundle_root else None

    def __call__(self, engine) -> None:
        self.check()
        super().__call__(engine)

    def check(self) -> None:
        """Raise ``ValueError`` naming the file when it is not loadable weights for this network."""
        path = Path(self.load_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: weights file not found.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"{path}: refused to load: not a plain PyTorch weights file (corrupt, truncated, or it holds pickled "
                f"objects, which are never unpickled: {type(exc).__name__})."
            ) from None
        nets = [v for v in self.load_dict.values() if isinstance(v, torch.nn.Module)]
        if len(self.load_dict) != 1 or len(nets) != 1 or not self.strict or not self.strict_shape:
            return
        key = next(iter(self.load_dict))
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{path}: not a state dict of tensors (got {type(state).__name__}).")
        net = nets[0].module if hasattr(nets[0], "module") else nets[0]
        own = net.state_dict()
        if _signature(state) == _signature(own):
            return
        name = self.bundle_root.name if self.bundle_root else "this bundle"
        owner = weights_owner(state, self.bundle_root.parent) if self.bundle_root else None
        if owner and owner != name:
            raise ValueError(f"{path}: these weights belong to {owner}, not {name} (a different network); "
                             f"use {owner}'s inference.json or {name}'s own weights.")  # fmt: skip
        missing = sorted(set(own) - set(state))
        unknown = sorted(set(state) - set(own))
        shapes = sorted(k for k in set(state) & set(own) if tuple(state[k].shape) != tuple(own[k].shape))
        example = (
            f"'{shapes[0]}' {tuple(state[shapes[0]].shape)} vs {tuple(own[shapes[0]].shape)}" if shapes
            else f"'{(missing or unknown)[0]}' {'missing' if missing else 'unexpected'}"
        )  # fmt: skip
        raise ValueError(
            f"{path}: these weights do not fit {name}'s network: {len(shapes)} tensors of another shape, "
            f"{len(missing)} missing, {len(unknown)} unexpected (e.g. {example})."
        )


def load_state_dict_safely(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint with ``weights_only=True``; return the state dict (``checkpoint[key]`` if given).

    Raises:
        FileNotFoundError / ValueError: missing file, or a file that holds pickled objects rather than tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint not found.")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{p}: refused to load: not a plain tensor checkpoint ({type(exc).__name__}). Only state dicts load with "
            "weights_only=True; pickled objects are never unpickled."
        ) from exc
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise ValueError(
                f"{p}: checkpoint has no entry {key!r} (entries: {sorted(obj) if isinstance(obj, dict) else type(obj).__name__})."
            )
        obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{p}: expected a state dict of tensors.")
    return obj


def export_state_dict(checkpoint: str | os.PathLike, out: str | os.PathLike, key: str = "model") -> Path:
    """Write ``checkpoint[key]`` as a plain state dict (``models/model.pt``), atomically."""
    state = load_state_dict_safely(checkpoint, key)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    return Path(out)


def init_from_checkpoint(
    network: torch.nn.Module,
    path: str | os.PathLike | None,
    key: str | None = "model",
    allow_missing: Sequence[str] = (),
) -> torch.nn.Module:
    """Initialise ``network`` from the weights of another run (e.g. a pre-training stage); return ``network``.

    ``path`` None (or "") leaves the network as it is; a folder stands for its newest ``latest*.pt``
    (:func:`latest_checkpoint`, e.g. the ``checkpoints`` folder of the first stage's run). Every tensor of the
    checkpoint must match a parameter or buffer of ``network`` in name and shape; parameters of ``network`` the checkpoint lacks are allowed only
    when their names start with one of ``allow_missing`` (e.g. the decoder that a pre-training stage did not
    have), and keep their fresh initialisation. A checkpoint of a different network therefore fails with the
    file and the offending names instead of half-loading. Resuming (:class:`ResumeFromLatest`) overrides this:
    it loads after the network is built.

    Raises:
        FileNotFoundError / ValueError: missing or unsafe file (:func:`load_state_dict_safely`), unknown or
            mis-shaped tensors, or missing tensors outside ``allow_missing``.
    """
    if path is None or str(path) == "":
        return network
    if Path(path).is_dir():
        newest = latest_checkpoint(path)
        if newest is None:
            raise FileNotFoundError(f"{path}: no latest*.pt checkpoint in this folder to initialise from.")
        path = newest
    state = load_state_dict_safely(path, key)
    own = network.state_dict()
    unknown = sorted(k for k in state if k not in own)
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                    for k in state if k in own and state[k].shape != own[k].shape)  # fmt: skip
    missing = sorted(k for k in own if k not in state and not any(k.startswith(p) for p in allow_missing))
    found = (("tensors the network does not have", unknown), ("shape mismatch", shapes),
             ("network tensors the checkpoint lacks", missing))  # fmt: skip
    problems = [f"{what}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}" for what, names in found if names]
    if problems:
        raise ValueError(f"{path}: cannot initialise {type(network).__name__} from it; " + "; ".join(problems) + ".")
    network.load_state_dict(state, strict=False)
    return network


def end_distributed(network: torch.nn.Module | None = None) -> None:
    """End a ``torchrun`` training process's process group so that its threads stop before the interpreter exits.

    ``torch.distributed.destroy_process_group`` only drops the group from the registry: a ``DistributedDataParallel``
    wrapper still holds it (its ``process_group``, its C++ reducer and logger), so gloo's worker and TCP-loop threads
    keep running until interpreter shutdown destroys them, in whatever order. Measured with the shared
    ``multi_gpu_train.json`` on this 2-core machine: a rank then aborted at exit ("terminate called without an active
    exception", exit -6) in 2 of 56 launches on one loaded core (0 of 24 with this function), after training and
    checkpoints had finished. This waits for every rank (barrier), destroys the group, drops the wrapper's references
    and collects them, so the group's destructor joins its threads here. No-op outside a process group.
    """
    import gc

    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
    if isinstance(network, torch.nn.parallel.DistributedDataParallel):
        for name in ("logger", "reducer", "process_group"):
            if hasattr(network, name):
                delattr(network, name)
    gc.collect()
