#!/usr/bin/env bash
# Copies the project to every worker and installs it in ~/big_vl_venv:
# jax[tpu] and the pinned requirements.
#
#   tpu_scripts/setup.sh --name=NAME --zone=ZONE [--project=P] [--dry-run]

source "$(dirname "$0")/lib.sh"
parse_common "$@"
[[ ${#EXTRA[@]} -eq 0 ]] || die "unknown flag ${EXTRA[0]}"
JAX_VERSION="$(sed -n 's/^jax==//p' "$BIG_VL_ROOT/requirements.txt")"
sync_code
ssh_workers all "python3 -m venv ~/big_vl_venv && ~/big_vl_venv/bin/pip install -q -r ~/big_vl/requirements.txt \"jax[tpu]==$JAX_VERSION\" -e ~/big_vl"
