#!/usr/bin/env bash
# Syncs the code and starts one training process on every worker at once,
# in the background; each worker logs to ~/big_vl_logs/RUN.log.
#
#   tpu_scripts/launch.sh --name=NAME --zone=ZONE \
#       --config=configs/clip.py:variant=B/16 --workdir=gs://BUCKET/runs/RUN \
#       [--run=RUN] [--project=P] [--dry-run] [-- more trainer flags]
#
# --workdir a gs:// URL (or a directory every worker mounts): all workers
#           write the checkpoints there
# --run     log name (default: the workdir's last path component)
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
    *) die "unknown flag $arg (trainer flags go after --)" ;;
  esac
done
[[ -n "$CONFIG" ]] || die "--config=FILE[:ARGS] is required"
[[ -n "$WORKDIR" ]] || die "--workdir=DIR (shared by all workers) is required"
RUN_NAME="${RUN_NAME:-$(basename "$WORKDIR")}"
train="~/big_vl_venv/bin/python -m big_vl.train --config=$(printf '%q' "$CONFIG") --workdir=$(printf '%q' "$WORKDIR") --distributed=yes"
for flag in "${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"}"; do
  train+=" $(printf '%q' "$flag")"
done
sync_code
ssh_workers all "mkdir -p ~/big_vl_logs && cd ~/big_vl && nohup $train > ~/big_vl_logs/$RUN_NAME.log 2>&1 &"
