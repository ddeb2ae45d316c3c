"""Brain data: template space, label sets, ITK affine pre-alignment, SynthMorph-style synthesis, real OASIS T1s.

See :mod:`common.data.brain.template` for the template grid (1 mm 160x192x224 LIA in MNI space, 2 mm
80x96x112) and :mod:`common.data.brain.synthetic` for the split (label maps 17-20 never train).
"""

from __future__ import annotations

from common.data.brain.align import AlignResult, affine_align, label_pseudo_image
from common.data.brain.labels import (
    BRAIN_EVAL_CODES,
    BRAIN_EVAL_LABELS,
    EVAL_MERGE,
    EXTRA_CEREBRAL_CODES,
    T1_PRIOR_CLASS,
    load_t1_priors,
    read_labels_table,
    remap_to_eval,
)
from common.data.brain.oasis import demo_pair, list_oasis_t1, load_onehot_labels
from common.data.brain.synthetic import (
    HELD_OUT_IDS,
    TEST_IDS,
    TRAIN_IDS,
    VALIDATION_IDS,
    align_label_map,
    check_no_held_out,
    evaluation_transforms,
    list_label_maps,
    split_label_maps,
    synthesize_pair,
    training_transforms,
    write_unit_image,
)
from common.data.brain.template import (
    TEMPLATE_GRID_1MM,
    TEMPLATE_GRID_2MM,
    Grid,
    build_template,
    load_template,
    template_grid,
)

__all__ = [
    "AlignResult",
    "BRAIN_EVAL_CODES",
    "BRAIN_EVAL_LABELS",
    "EVAL_MERGE",
    "EXTRA_CEREBRAL_CODES",
    "Grid",
    "HELD_OUT_IDS",
    "T1_PRIOR_CLASS",
    "TEMPLATE_GRID_1MM",
    "TEMPLATE_GRID_2MM",
    "TEST_IDS",
    "TRAIN_IDS",
    "VALIDATION_IDS",
    "affine_align",
    "align_label_map",
    "build_template",
    "check_no_held_out",
    "demo_pair",
    "evaluation_transforms",
    "label_pseudo_image",
    "list_label_maps",
    "list_oasis_t1",
    "load_onehot_labels",
    "load_t1_priors",
    "load_template",
    "read_labels_table",
    "remap_to_eval",
    "split_label_maps",
    "synthesize_pair",
    "template_grid",
    "training_transforms",
    "write_unit_image",
]
