#!/usr/bin/env bash
# Follows one worker's log of a launched run (worker 0: progress, metrics).
#
#   tpu_scripts/tail.sh --name=NAME --zone=ZONE --run=RUN [--worker=0] \
#       [--project=P] [--dry-run]

source "$(dirname "$0")/lib.sh"
parse_common "$@"
RUN_NAME="" WORKER=0
for arg in "${EXTRA[@]+"${EXTRA[@]}"}"; do
  case "$arg" in
    --run=*) RUN_NAME="${arg#*=}" ;;
    --worker=*) WORKER="${arg#*=}" ;;
    *) die "unknown flag $arg" ;;
  esac
done
[[ -n "$RUN_NAME" ]] || die "--run=RUN is required (the launch's log name)"
check_run_name "$RUN_NAME" "--run"
ssh_workers "$WORKER" "tail -n 100 -f ~/big_vl_logs/$(printf '%q' "$RUN_NAME").log"
