#!/usr/bin/env bash
# Deletes the TPU VM (or the queued resource and its VM: --queued).
#
#   tpu_scripts/delete.sh --name=NAME --zone=ZONE [--queued] [--project=P] \
#       [--dry-run]

source "$(dirname "$0")/lib.sh"
parse_common "$@"
QUEUED=0
for arg in "${EXTRA[@]+"${EXTRA[@]}"}"; do
  case "$arg" in
    --queued) QUEUED=1 ;;
    *) die "unknown flag $arg" ;;
  esac
done
if (( QUEUED )); then
  run gcloud compute tpus queued-resources delete "$NAME" $(where) --force \
    --quiet
else
  run gcloud compute tpus tpu-vm delete "$NAME" $(where) --quiet
fi
