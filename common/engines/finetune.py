"""Fine-tune a 3D brain bundle's network on a user's own T1 scans (the MONAI Label app's trainer).

No labels are needed: the pairs are the user's images (and the atlas) affinely aligned to the atlas grid, and the
loss is the bundle's own training loss (``loss`` in its ``train.json``: image similarity + regulariser); where
both images of a pair have a label map (values 1..32, the app's segment values, see
:mod:`common.engines.label_app`) and the bundle's loss has a label term (hybrid_loss, joint_affine; not
lumir_cascade, nor prob_diffeo at its shipped ``seg_weight`` 0), that term is used too. The pairs go through the
bundle's own inference loader (``preprocessing`` of its ``inference.json``: grid, padding), so the network sees what
it sees at inference; training crops the bundle's training ``patch_size`` where it has one. MONAI's ``SupervisedTrainer``
runs the steps with the bundle's ``PairPrepareBatch``.

The result is a plain state dict (what ``models/model.pt`` holds), written atomically, with a JSON record next
to it: images, pairs, iterations, seconds, and the mean loss on the whole (uncropped) pairs before and after.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io.nifti import atomic_path, read_label_map, write_nifti

__all__ = ["finetune_bundle", "aligned_items", "pair_list"]


def aligned_items(images: list[str], labels: list[str | None], folder: Path, with_atlas: bool = True,
                  skipped: list[str] | None = None) -> list[dict]:  # fmt: skip
    """Each image (and label map, values 1..32) affinely aligned to the atlas T1 on the 1 mm atlas grid.

    Returns ``[{"image", "label"}]`` (``label`` None where there is none); the atlas itself comes first when
    ``with_atlas`` (its labels in the app's 1..32 values). Images that cannot be used (not a 3D image, constant,
    the affine fails) are left out with their reason appended to ``skipped``.
    """
    from common.data.brain.align import affine_align
    from common.data.brain.template import TEMPLATE_GRID_1MM
    from common.engines.atlas import default_atlas
    from common.engines.label_app import check_image_upload, to_slicer_values
    from common.io.nifti import ImageReadError

    atlas_t1, atlas_labels = default_atlas(1)
    grid = TEMPLATE_GRID_1MM
    items: list[dict] = []
    skipped = skipped if skipped is not None else []
    if with_atlas:
        lab, aff = read_label_map(atlas_labels, ndim=3)
        path = write_nifti(to_slicer_values(lab), aff, folder / "atlas_labels.nii")
        items.append({"image": str(atlas_t1), "label": str(path)})
    for i, (image, label) in enumerate(zip(images, labels)):
        try:
            check_image_upload(image)
            r = affine_align(str(image), str(atlas_t1), moving_labels=label, grid=grid)
        except (ImageReadError, ValueError) as exc:  # one unusable image does not stop the others
            skipped.append(f"{Path(image).name}: {exc}")
            continue
        item = {"image": str(write_nifti(r.image.astype(np.float32), grid.affine, folder / f"image_{i}.nii"))}
        item["label"] = None if label is None else str(write_nifti(r.labels, grid.affine, folder / f"label_{i}.nii"))
        items.append(item)
    return items


def pair_list(items: list[dict], max_pairs: int = 64, seed: int = 0) -> list[dict]:
    """Ordered pairs (moving != fixed) of ``items``, shuffled with ``seed``, at most ``max_pairs``."""
    pairs = [
        {"moving_image": m["image"], "fixed_image": f["image"], "moving_label": m["label"], "fixed_label": f["label"],
         "id": f"{i}_to_{j}"}
        for i, m in enumerate(items) for j, f in enumerate(items) if i != j
    ]  # fmt: skip
    random.Random(seed).shuffle(pairs)
    return pairs[:max_pairs]


class _LabelsOnNetGrid:
    """Both label maps of a pair (when both exist) nearest-resampled onto the network grid of the pair."""

    def __call__(self, d: dict[str, Any]) -> dict[str, Any]:
        from common.data.brain.template import Grid
        from common.geometry import resample_array

        d = dict(d)
        paths = d.get("paths", {})
        if paths.get("moving_label") and paths.get("fixed_label"):
            geo = d["geometry"]
            grid = Grid(tuple(int(s) for s in d["fixed_image"].shape[1:]), np.asarray(geo["net_affine"]))
            for key in ("moving_label", "fixed_label"):
                lab, aff = read_label_map(paths[key], ndim=3)
                d[key] = torch.as_tensor(resample_array(lab, aff, grid, order=0).astype(np.int64))[None]
        return d


def _bundle_parts(bundle: Path) -> dict[str, Any]:
    """Network, loss, learning rate and patch size from the bundle's train.json; grid from its inference.json."""
    from monai.bundle import ConfigParser

    train = ConfigParser()
    train.read_config(str(bundle / "configs" / "train.json"))
    train["bundle_root"] = str(bundle)
    train["device"] = "$torch.device('cpu')"
    infer = ConfigParser()
    infer.read_config(str(bundle / "configs" / "inference.json"))
    infer["bundle_root"] = str(bundle)
    loss = train.get_parsed_content("loss")
    return {
        "network": train.get_parsed_content("network_def"),
        "loss": loss,
        "label_term": has_label_term(loss),
        "lr": min(float(train.get_parsed_content("learning_rate")), 1e-4),
        "patch": train.get("patch_size"),
        "load": infer.get_parsed_content("preprocessing"),  # the bundle's own inference loader (grid, padding)
    }


def has_label_term(loss: torch.nn.Module) -> bool:
    """Whether a bundle's training loss uses label maps (RegistrationLoss label terms, prob_diffeo's seg_weight,
    joint_affine's anat_weight); lumir_cascade's and (at seg_weight 0) prob_diffeo's do not."""
    if len(getattr(loss, "label_losses", [])):
        return True
    return float(getattr(loss, "seg_weight", 0.0)) > 0 or float(getattr(loss, "anat_weight", 0.0)) > 0


def _mean_loss(network: torch.nn.Module, loss: torch.nn.Module, items: list[dict], device: str) -> float:
    """Mean loss over whole pairs; seeded, so a loss that samples (prob_diffeo) compares before vs after."""
    from common.engines.registration import PairPrepareBatch

    prepare, values = PairPrepareBatch(), []
    network.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        for d in items:
            batch = {k: (v[None] if torch.is_tensor(v) else v) for k, v in d.items()}
            inputs, targets = prepare(batch, device)
            values.append(float(loss(network(inputs), targets)))
    return float(np.mean(values))


def _train(network: torch.nn.Module, loss: torch.nn.Module, full: list[dict], parts: dict[str, Any], iterations: int,
           lr: float, crop: bool, seed: int, device: str) -> None:  # fmt: skip
    """``iterations`` Adam steps with MONAI's ``SupervisedTrainer``, one random pair (whole, or a crop) per step."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.transforms import RandSpatialCropd

    from common.engines.registration import PairPrepareBatch

    keys = ["moving_image", "fixed_image", "moving_label", "fixed_label"]
    cropper = RandSpatialCropd(keys, roi_size=parts["patch"], random_size=False, allow_missing_keys=True)
    train_ds = Dataset(full, transform=cropper if crop and parts["patch"] else None)
    sampler = torch.utils.data.RandomSampler(train_ds, replacement=True, num_samples=iterations,
                                             generator=torch.Generator().manual_seed(seed))  # fmt: skip
    network.train()
    trainer = SupervisedTrainer(
        device=torch.device(device), max_epochs=1, epoch_length=iterations,
        train_data_loader=DataLoader(train_ds, batch_size=1, sampler=sampler, num_workers=0),
        network=network, optimizer=torch.optim.Adam(network.parameters(), lr=lr),
        loss_function=loss, prepare_batch=PairPrepareBatch(), amp=False,
    )  # fmt: skip
    trainer.run()


def finetune_bundle(
    bundle: str | os.PathLike,
    images: list[str],
    out_path: str | os.PathLike,
    labels: list[str | None] | None = None,
    init: str | os.PathLike | None = None,
    iterations: int = 50,
    lr: float | None = None,
    max_pairs: int = 64,
    with_atlas: bool = True,
    crop: bool = False,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Fine-tune ``bundle``'s network on ``images`` and write the weights to ``out_path``; returns the record.

    Args:
        bundle: a 3D brain bundle folder.
        images: the user's T1s (any grid; affinely aligned to the atlas here).
        out_path: the fine-tuned state dict (``.pt``); the record goes to ``<out_path>.json``.
        labels: per image a label map in the app's values 1..32, or None (default: none).
        init: weights to start from (default the bundle's ``models/model.pt``).
        iterations: optimiser steps (one pair per step).
        lr: learning rate (default ``min(the bundle's learning_rate, 1e-4)``: at the bundles' own rates, 3 Adam steps
            raised prob_diffeo's loss on the demo scans (lr 1e-3: 2.007 -> 2.044), at 1e-4 it fell (-> 1.995)).
        max_pairs / with_atlas / seed: the pairs (see :func:`pair_list`), the atlas as one of the items, seeding.
        crop: train on random crops of the bundle's training ``patch_size`` (less memory) instead of whole pairs
            (default: whole pairs, the loss that is reported).
    """
    from monai.data import CacheDataset
    from monai.transforms import Compose

    from common.engines.training import load_state_dict_safely

    t0, bundle, out_path = time.perf_counter(), Path(bundle), Path(out_path)
    labels = list(labels) if labels is not None else [None] * len(images)
    if iterations < 1:
        raise ValueError(f"finetune_bundle: iterations must be >= 1, got {iterations}.")
    if len(images) + int(with_atlas) < 2:
        raise ValueError(f"finetune_bundle: need at least 2 images (with the atlas), got {len(images)} image(s).")
    torch.manual_seed(seed)
    parts = _bundle_parts(bundle)
    network, loss = parts["network"].to(device), parts["loss"].to(device)
    init = Path(init) if init else bundle / "models" / "model.pt"
    network.load_state_dict(load_state_dict_safely(init))
    before_state = {k: v.clone() for k, v in network.state_dict().items()}
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="finetune_") as tmp:
        items = aligned_items(images, labels, Path(tmp), with_atlas, skipped)
        if len(items) < 2:
            raise ValueError(f"finetune_bundle: fewer than 2 usable images (skipped: {skipped}).")
        pairs = pair_list(items, max_pairs, seed)
        load = Compose([parts["load"], _LabelsOnNetGrid()])
        cached = CacheDataset(pairs, transform=load, progress=False)
        full = [cached[i] for i in range(len(cached))]
        loss_before = _mean_loss(network, loss, full, device)
        _train(network, loss, full, parts, iterations, lr or parts["lr"], crop, seed, device)
        loss_after = _mean_loss(network, loss, full, device)
    changed = sum(int(not torch.equal(before_state[k], v)) for k, v in network.state_dict().items())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp_path:
        torch.save({k: v.cpu() for k, v in network.state_dict().items()}, tmp_path)
    record = {
        "bundle": bundle.name, "init": str(init), "weights": str(out_path), "images": [str(i) for i in images],
        "labelled": sum(lab is not None for lab in labels), "with_atlas": with_atlas, "pairs": len(pairs),
        "label_pairs": sum(bool(p["moving_label"] and p["fixed_label"]) for p in pairs) if parts["label_term"] else 0,
        "label_term": parts["label_term"], "skipped": skipped,
        "iterations": iterations, "crop": bool(crop and parts["patch"]), "lr": lr or parts["lr"],
        "loss_before": loss_before, "loss_after": loss_after, "tensors_changed": changed, "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    with atomic_path(out_path.with_suffix(".json")) as tmp_path:
        tmp_path.write_text(json.dumps(record, indent=1))
    return record
