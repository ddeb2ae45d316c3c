#!/usr/bin/env bash
# Train the ablation variants of a bundle, one after another (resumable: rerun to continue).
# Usage: scripts/train_variants.sh BUNDLE VARIANT [VARIANT ...]
#   prob_diffeo  (bundles/brain_mri_prob_diffeo, Dalca et al. 2018):  full | diag | unidir | seg
#   joint_affine (bundles/brain_mri_joint_affine, Zhu et al. 2020):    affine_pretrain | full | smooth<L> | noaffine | noanat
#     (the v0.2 recipe: affine_pretrain trains the affine part alone (u = 0), the first stage; full and noanat
#      start from its newest checkpoint, so run it first; smooth<L> (e.g. smooth10), the third stage, fine-tunes
#      full's newest checkpoint with smooth_weight L at the learning rate full ended with (FINETUNE_EPOCHS=N,
#      default 10 = 500 iterations). The shipped v0.2 weights:
#      scripts/train_variants.sh joint_affine affine_pretrain full smooth10)
#   lumir_cascade (bundles/brain_mri_lumir_cascade, Zhang et al. 2024): backbone | bf | ca | lk | lc2
#     (the paper's Table 2 rows, each adding one switch: bilateral filter, co-attention, large kernels,
#      large channels + two cascade steps per level)
# Each variant trains with the same seed, data and schedule (from scratch unless said above); runs go to $RUNS/<variant>
# (default ~/.cache/monai-reg-zoo/runs/<run set of the bundle>/). MAX_EPOCHS=N overrides the config's
# schedule, also when resuming (PRETRAIN_EPOCHS=N that of joint_affine's affine_pretrain, default 30).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
bundle="${1:?usage: scripts/train_variants.sh BUNDLE VARIANT [VARIANT ...]}"
shift
case "$bundle" in
  prob_diffeo) dir=brain_mri_prob_diffeo; RUNS="${RUNS:-$HOME/.cache/monai-reg-zoo/runs/prob_diffeo_v2}" ;;
  joint_affine) dir=brain_mri_joint_affine; RUNS="${RUNS:-$HOME/.cache/monai-reg-zoo/runs/joint_affine_v2}" ;;
  lumir_cascade) dir=brain_mri_lumir_cascade; RUNS="${RUNS:-$HOME/.cache/monai-reg-zoo/runs/lumir_cascade}" ;;
  *) echo "unknown bundle: $bundle (prob_diffeo | joint_affine | lumir_cascade)" >&2; exit 2 ;;
esac
cd "$ROOT/bundles/$dir"
for variant in "$@"; do
  epochs="${MAX_EPOCHS:-}"
  case "$bundle/$variant" in
    joint_affine/full) extra=(--init_checkpoint "$RUNS/affine_pretrain/checkpoints") ;;
    */full) extra=() ;;
    prob_diffeo/diag) extra=(--smoothing_sigma 0.0) ;;
    prob_diffeo/unidir) extra=(--bidirectional False) ;;
    prob_diffeo/seg) extra=(--seg_weight 1.0) ;;
    joint_affine/affine_pretrain) epochs="${PRETRAIN_EPOCHS:-30}"; extra=(--network_def#use_deformable False --smooth_weight 0.0) ;;
    joint_affine/noaffine) extra=(--network_def#use_affine False --affine_weight 0.0) ;;
    joint_affine/smooth[0-9]*)
      epochs="${FINETUNE_EPOCHS:-10}"
      extra=(--init_checkpoint "$RUNS/full/checkpoints" --smooth_weight "${variant#smooth}" --learning_rate 0.000125) ;;
    joint_affine/noanat) extra=(--anat_weight 0.0 --init_checkpoint "$RUNS/affine_pretrain/checkpoints") ;;
    lumir_cascade/*)
      bf=False ca=False lk=False fc=16 steps=1
      case "$variant" in
        backbone) ;;
        bf) bf=True ;;
        ca) bf=True ca=True ;;
        lk) bf=True ca=True lk=True ;;
        lc2) bf=True ca=True lk=True fc=32 steps=2 ;;
        *) echo "unknown variant of $bundle: $variant" >&2; exit 2 ;;
      esac
      extra=(--bilateral $bf --co_attention $ca --large_kernel $lk --flow_channels $fc --cascade_steps $steps) ;;
    *) echo "unknown variant of $bundle: $variant" >&2; exit 2 ;;
  esac
  mkdir -p "$RUNS/$variant"
  "$PY" -m monai.bundle run --config_file configs/train.json --logging_file configs/logging.conf \
    --output_dir "$RUNS/$variant" ${epochs:+--max_epochs "$epochs"} "${extra[@]}" >>"$RUNS/$variant/train.log" 2>&1
done
