"""Cardiac 2D short-axis data: ACDC reader, synthetic ED/ES phantom, preprocessing and dataset writers.

* :mod:`~common.data.cardiac.acdc` reads the real ACDC layout and cuts ED/ES slice pairs (Hering et al.
  2019 protocol: slices with all three labels, 112 x 112 crop, [0, 1] intensities), patient-wise splits;
* :mod:`~common.data.cardiac.phantom` / :mod:`~common.data.cardiac.sampling` /
  :mod:`~common.data.cardiac.render` synthesise labelled bSSFP-like ED/ES slices whose intensities follow
  real bSSFP statistics (:mod:`~common.data.cardiac.stats`, shipped as ``common/data/cardiac_stats.json``);
* :mod:`~common.data.cardiac.prepare` writes either to disk as NIfTI + a MONAI datalist.

Labels everywhere: 0 background, 1 RV cavity, 2 myocardium, 3 LV cavity (ACDC convention).
"""

from __future__ import annotations

from common.data.cardiac.acdc import (
    ACDC_LABELS,
    AcdcLayoutError,
    AcdcPatient,
    acdc_slice_pairs,
    extract_slices,
    find_acdc_patients,
    load_acdc_patient,
    read_info_cfg,
    split_patients,
)
from common.data.cardiac.phantom import CardiacPhantomParams, phantom_geometry
from common.data.cardiac.prepare import phantom_subject, prepare_acdc_dataset, prepare_phantom_dataset
from common.data.cardiac.preprocess import (
    DIRECTIONS,
    PAIR_KEYS,
    crop_center,
    label_centroid,
    make_pairs,
    normalise_percentile,
    resample_inplane,
)
from common.data.cardiac.render import gaussian_random_field, render_cardiac_phantom
from common.data.cardiac.sampling import PhantomRanges, sample_phantom_params
from common.data.cardiac.stats import compute_bssfp_stats, load_cardiac_stats, write_cardiac_stats

__all__ = [
    "ACDC_LABELS",
    "DIRECTIONS",
    "PAIR_KEYS",
    "AcdcLayoutError",
    "AcdcPatient",
    "CardiacPhantomParams",
    "PhantomRanges",
    "acdc_slice_pairs",
    "compute_bssfp_stats",
    "crop_center",
    "extract_slices",
    "find_acdc_patients",
    "gaussian_random_field",
    "label_centroid",
    "load_acdc_patient",
    "load_cardiac_stats",
    "make_pairs",
    "normalise_percentile",
    "phantom_geometry",
    "phantom_subject",
    "prepare_acdc_dataset",
    "prepare_phantom_dataset",
    "read_info_cfg",
    "render_cardiac_phantom",
    "resample_inplane",
    "sample_phantom_params",
    "split_patients",
    "write_cardiac_stats",
]
