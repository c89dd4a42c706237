#!/usr/bin/env bash
# Syncs the code and starts one training process on every worker at once,
# in the background; each worker logs to ~/big_vl_logs/RUN.log.
#
#   tpu_scripts/launch.sh --name=NAME --zone=ZONE \
#       --config=configs/clip.py:variant=B/16 --workdir=gs://BUCKET/runs/RUN \
#       [--run=RUN] [--include-untracked] [--project=P] [--dry-run] \
#       [-- more trainer flags]
#
# --workdir a gs:// URL (or a directory every worker mounts): all workers
#           write the checkpoints there
# --run     log name (default: the workdir's last path component); letters,
#           digits and . _ - only
# --include-untracked  also upload files git does not track (not ignored)
# Flags after `--` go to `python -m big_vl.train` (e.g. --config.lr=1e-4).
# jax.distributed is joined on every worker (--distributed=yes): the TPU
# VM's metadata gives the coordinator, process count and index. Relaunching
# the same command resumes from the workdir's last checkpoint.

source "$(dirname "$0")/lib.sh"
TRAIN_FLAGS=()
COMMON=()
while (( $# )); do
  if [[ "$1" == "--" ]]; then shift; TRAIN_FLAGS=("$@"); break; fi
  COMMON+=("$1"); shift
done
parse_common "${COMMON[@]+"${COMMON[@]}"}"
CONFIG="" WORKDIR="" RUN_NAME=""
for arg in "${EXTRA[@]+"${EXTRA[@]}"}"; do
  case "$arg" in
    --config=*) CONFIG="${arg#*=}" ;;
    --workdir=*) WORKDIR="${arg#*=}" ;;
    --run=*) RUN_NAME="${arg#*=}" ;;
    --include-untracked) INCLUDE_UNTRACKED=1 ;;
    *) die "unknown flag $arg (trainer flags go after --)" ;;
  esac
done
[[ -n "$CONFIG" ]] || die "--config=FILE[:ARGS] is required"
[[ -n "$WORKDIR" ]] || die "--workdir=DIR (shared by all workers) is required"
if [[ -n "$RUN_NAME" ]]; then
  check_run_name "$RUN_NAME" "--run"
else
  RUN_NAME="$(basename "$WORKDIR")"
  check_run_name "$RUN_NAME" "the --workdir's last component; pass --run=RUN"
fi
train="~/big_vl_venv/bin/python -m big_vl.train --config=$(printf '%q' "$CONFIG") --workdir=$(printf '%q' "$WORKDIR") --distributed=yes"
for flag in "${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"}"; do
  train+=" $(printf '%q' "$flag")"
done
sync_code
ssh_workers all "mkdir -p ~/big_vl_logs && cd ~/big_vl && nohup $train > ~/big_vl_logs/$(printf '%q' "$RUN_NAME").log 2>&1 &"
