#!/usr/bin/env bash
# Train the Dalca et al. 2018 ablation variants of bundles/brain_mri_prob_diffeo (resumable: rerun to continue).
# Usage: scripts/train_prob_diffeo_variants.sh VARIANT [VARIANT ...]   (full | diag | unidir | seg)
# Each variant trains from scratch with the same seed, data and schedule; runs go to $RUNS/<variant>.
# MAX_EPOCHS=N (epochs of 50 iterations) overrides the config's schedule, also when resuming.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUNS="${RUNS:-$HOME/.cache/monai-reg-zoo/runs/prob_diffeo_v2}"
PY="${PY:-$ROOT/.venv/bin/python}"
cd "$ROOT/bundles/brain_mri_prob_diffeo"
for variant in "$@"; do
  case "$variant" in
    full) extra=() ;;
    diag) extra=(--smoothing_sigma 0.0) ;;
    unidir) extra=(--bidirectional False) ;;
    seg) extra=(--seg_weight 1.0) ;;
    *) echo "unknown variant: $variant (full | diag | unidir | seg)" >&2; exit 2 ;;
  esac
  mkdir -p "$RUNS/$variant"
  "$PY" -m monai.bundle run --config_file configs/train.json --logging_file configs/logging.conf \
    --output_dir "$RUNS/$variant" ${MAX_EPOCHS:+--max_epochs "$MAX_EPOCHS"} "${extra[@]}" >>"$RUNS/$variant/train.log" 2>&1
done
