#!/usr/bin/env bash
# Opens a shell on one worker (or runs a command on all: --worker=all).
#
#   tpu_scripts/ssh.sh --name=NAME --zone=ZONE [--worker=0] \
#       [--command='nvidia-smi'] [--project=P] [--dry-run]

source "$(dirname "$0")/lib.sh"
parse_common "$@"
WORKER=0 COMMAND=""
for arg in "${EXTRA[@]+"${EXTRA[@]}"}"; do
  case "$arg" in
    --worker=*) WORKER="${arg#*=}" ;;
    --command=*) COMMAND="${arg#*=}" ;;
    *) die "unknown flag $arg" ;;
  esac
done
if [[ -n "$COMMAND" ]]; then
  ssh_workers "$WORKER" "$COMMAND"
else
  run gcloud compute tpus tpu-vm ssh "$NAME" $(where) --worker="$WORKER"
fi
