#!/usr/bin/env bash
# Train the ablation variants of a bundle, one after another (resumable: rerun to continue).
# Usage: scripts/train_variants.sh BUNDLE VARIANT [VARIANT ...]
#   prob_diffeo  (bundles/brain_mri_prob_diffeo, Dalca et al. 2018):  full | diag | unidir | seg
#   joint_affine (bundles/brain_mri_joint_affine, Zhu et al. 2020):    full | noaffine | noanat
# Each variant trains from scratch with the same seed, data and schedule; runs go to $RUNS/<variant>
# (default ~/.cache/monai-reg-zoo/runs/<run set of the bundle>/). MAX_EPOCHS=N overrides the config's
# schedule, also when resuming.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
bundle="${1:?usage: scripts/train_variants.sh BUNDLE VARIANT [VARIANT ...]}"
shift
case "$bundle" in
  prob_diffeo) dir=brain_mri_prob_diffeo; RUNS="${RUNS:-$HOME/.cache/monai-reg-zoo/runs/prob_diffeo_v2}" ;;
  joint_affine) dir=brain_mri_joint_affine; RUNS="${RUNS:-$HOME/.cache/monai-reg-zoo/runs/joint_affine}" ;;
  *) echo "unknown bundle: $bundle (prob_diffeo | joint_affine)" >&2; exit 2 ;;
esac
cd "$ROOT/bundles/$dir"
for variant in "$@"; do
  case "$bundle/$variant" in
    */full) extra=() ;;
    prob_diffeo/diag) extra=(--smoothing_sigma 0.0) ;;
    prob_diffeo/unidir) extra=(--bidirectional False) ;;
    prob_diffeo/seg) extra=(--seg_weight 1.0) ;;
    joint_affine/noaffine) extra=(--network_def#use_affine False --affine_weight 0.0) ;;
    joint_affine/noanat) extra=(--anat_weight 0.0) ;;
    *) echo "unknown variant of $bundle: $variant" >&2; exit 2 ;;
  esac
  mkdir -p "$RUNS/$variant"
  "$PY" -m monai.bundle run --config_file configs/train.json --logging_file configs/logging.conf \
    --output_dir "$RUNS/$variant" ${MAX_EPOCHS:+--max_epochs "$MAX_EPOCHS"} "${extra[@]}" >>"$RUNS/$variant/train.log" 2>&1
done
