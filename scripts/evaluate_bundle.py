"""Evaluate a bundle on labelled held-out pairs next to the zero-displacement and affine-only baselines.

The command line of :func:`common.evaluation.evaluate_bundle` (every model card number comes from it)::

    python scripts/evaluate_bundle.py --bundle brain_mri_hybrid_loss \
        --datalist data/prepared/brain/datalist_1mm.json --section test --out outputs/eval/hybrid
"""

from __future__ import annotations

import fire

from common.evaluation import evaluate_bundle

if __name__ == "__main__":
    fire.Fire(evaluate_bundle)
