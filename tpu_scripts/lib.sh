# Shared by the tpu_scripts: flag parsing, --dry-run, code sync.
# Sourced, not run. Every script accepts:
#   --name=NAME        the TPU VM (or queued resource) name   (required)
#   --zone=ZONE        e.g. us-central2-b                       (required)
#   --project=PROJECT  gcloud project (default: gcloud's configured one)
#   --dry-run          print the exact gcloud commands instead of running them
# Script-specific flags are documented at the top of each script.

set -euo pipefail

BIG_VL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="" ZONE="" PROJECT="" DRY_RUN=0
EXTRA=()  # flags a script parses itself

parse_common() {
  for arg in "$@"; do
    case "$arg" in
      --name=*) NAME="${arg#*=}" ;;
      --zone=*) ZONE="${arg#*=}" ;;
      --project=*) PROJECT="${arg#*=}" ;;
      --dry-run) DRY_RUN=1 ;;
      -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) EXTRA+=("$arg") ;;
    esac
  done
  [[ -n "$NAME" ]] || die "--name=NAME is required"
  [[ -n "$ZONE" ]] || die "--zone=ZONE is required"
}

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

# The --zone (and --project) flags every gcloud command gets.
where() {
  echo "--zone=$ZONE"
  if [[ -n "$PROJECT" ]]; then echo "--project=$PROJECT"; fi
}

# One shell word as a user would type it: as is when safe, otherwise in
# single quotes (after the `=` of a --flag=value).
quote() {
  local word="$1" prefix=""
  if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then echo "$word"; return; fi
  if [[ "$word" =~ ^(--[A-Za-z0-9_-]+=)(.*)$ ]]; then
    prefix="${BASH_REMATCH[1]}" word="${BASH_REMATCH[2]}"
  fi
  echo "$prefix'${word//\'/\'\\\'\'}'"
}

# Runs a command, or prints it (one line, quoted for a shell) with --dry-run.
run() {
  if (( DRY_RUN )); then
    local out="" word
    for word in "$@"; do out+="$(quote "$word") "; done
    echo "${out% }"
  else
    "$@"
  fi
}

# gcloud compute tpus tpu-vm ssh on the given workers ("all" or an index).
ssh_workers() {
  local workers="$1" command="$2"
  run gcloud compute tpus tpu-vm ssh "$NAME" $(where) --worker="$workers" \
    --command="$command"
}

# Copies the project's files (tracked and untracked, not ignored) to
# ~/big_vl on every worker.
sync_code() {
  local archive="/tmp/big_vl_code_${NAME}.tgz"
  if (( ! DRY_RUN )); then
    (cd "$BIG_VL_ROOT" && git ls-files -co --exclude-standard -z \
      | tar --null -czf "$archive" -T -)
  else
    echo "# archive the project's files into $archive"
  fi
  run gcloud compute tpus tpu-vm scp "$archive" "$NAME:big_vl_code.tgz" \
    $(where) --worker=all
  ssh_workers all "mkdir -p ~/big_vl && tar -xzf ~/big_vl_code.tgz -C ~/big_vl"
}
