#!/usr/bin/env bash
# Copies the project to every worker and installs it in ~/big_vl_venv:
# jax[tpu] and the pinned requirements.
#
#   tpu_scripts/setup.sh --name=NAME --zone=ZONE [--include-untracked] \
#       [--project=P] [--dry-run]
#
# --include-untracked  also upload files git does not track (not ignored);
#                      by default only tracked files are copied

source "$(dirname "$0")/lib.sh"
parse_common "$@"
for arg in "${EXTRA[@]+"${EXTRA[@]}"}"; do
  case "$arg" in
    --include-untracked) INCLUDE_UNTRACKED=1 ;;
    *) die "unknown flag $arg" ;;
  esac
done
JAX_VERSION="$(sed -n 's/^jax==//p' "$BIG_VL_ROOT/requirements.txt")"
sync_code
ssh_workers all "python3 -m venv ~/big_vl_venv && ~/big_vl_venv/bin/pip install -q -r ~/big_vl/requirements.txt \"jax[tpu]==$JAX_VERSION\" -e ~/big_vl"
