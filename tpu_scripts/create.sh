#!/usr/bin/env bash
# Creates a TPU VM (or a queued resource that becomes one).
#
#   tpu_scripts/create.sh --name=NAME --zone=ZONE --type=v4-32 \
#       [--version=tpu-ubuntu2204-base] [--queued] [--spot] [--project=P] \
#       [--dry-run]
#
# --type      accelerator type, e.g. v4-32 (4 hosts), v5litepod-16, v6e-8
# --version   TPU software version (runtime image)
# --queued    create a queued resource (waits for capacity) instead of a VM
# --spot      spot capacity (cheaper, can be preempted: runs resume from the
#             last checkpoint when relaunched)

source "$(dirname "$0")/lib.sh"
parse_common "$@"
TYPE="" VERSION="tpu-ubuntu2204-base" QUEUED=0 SPOT=0
for arg in "${EXTRA[@]+"${EXTRA[@]}"}"; do
  case "$arg" in
    --type=*) TYPE="${arg#*=}" ;;
    --version=*) VERSION="${arg#*=}" ;;
    --queued) QUEUED=1 ;;
    --spot) SPOT=1 ;;
    *) die "unknown flag $arg" ;;
  esac
done
[[ -n "$TYPE" ]] || die "--type=TYPE is required (e.g. v4-32)"
spot=()
if (( SPOT )); then spot=(--spot); fi
if (( QUEUED )); then
  run gcloud compute tpus queued-resources create "$NAME" $(where) \
    --node-id="$NAME" --accelerator-type="$TYPE" \
    --runtime-version="$VERSION" "${spot[@]+"${spot[@]}"}"
else
  run gcloud compute tpus tpu-vm create "$NAME" $(where) \
    --accelerator-type="$TYPE" --version="$VERSION" \
    "${spot[@]+"${spot[@]}"}"
fi
