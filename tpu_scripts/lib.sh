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
INCLUDE_UNTRACKED=0  # sync_code: also upload untracked (not ignored) files
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

# Refuses a run (log) name that is not a plain file name: it goes into a
# command run by the workers' shells (quoted there too, with printf %q).
check_run_name() {
  local name="$1" where="$2"
  if [[ ! "$name" =~ ^[A-Za-z0-9._-]+$ || "$name" == "." || "$name" == ".." ]]
  then
    die "run name $(printf '%q' "$name") ($where) may use only letters," \
        "digits and . _ - (it names ~/big_vl_logs/RUN.log on the workers)"
  fi
}

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

# Copies the project's files to ~/big_vl on every worker: the files git
# tracks (as they are in the working tree), plus untracked, not ignored ones
# only with --include-untracked (INCLUDE_UNTRACKED=1), so a stray local file
# (credentials, notes, data) is not uploaded by accident. The archive is
# built in a new private directory (mktemp -d, mode 0700), removed on exit.
SYNC_DIR=""
sync_code() {
  local listing=(-c) untracked
  if (( INCLUDE_UNTRACKED )); then listing=(-c -o --exclude-standard); fi
  untracked="$(cd "$BIG_VL_ROOT" && git ls-files -o --exclude-standard | wc -l)"
  if (( ! INCLUDE_UNTRACKED && untracked > 0 )); then
    echo "$(basename "$0"): note: $untracked untracked file(s) not uploaded" \
         "(git ls-files -o --exclude-standard; --include-untracked uploads" \
         "them)" >&2
  fi
  local archive
  if (( ! DRY_RUN )); then
    SYNC_DIR="$(mktemp -d "${TMPDIR:-/tmp}/big_vl_code.XXXXXXXXXX")"
    chmod 700 "$SYNC_DIR"
    trap 'rm -rf "$SYNC_DIR"' EXIT
    archive="$SYNC_DIR/big_vl_code.tgz"
    (cd "$BIG_VL_ROOT" && git ls-files -z "${listing[@]}" \
      | while IFS= read -r -d '' f; do
          # A tracked file deleted in the working tree is not archived.
          if [[ -e "$f" || -L "$f" ]]; then printf '%s\0' "$f"; fi
        done | tar --null -czf "$archive" -T -)
  else
    archive="${TMPDIR:-/tmp}/big_vl_code.XXXXXXXXXX/big_vl_code.tgz"
    echo "# archive the files git ls-files ${listing[*]} lists into a new" \
         "private directory (mktemp -d): $archive"
  fi
  run gcloud compute tpus tpu-vm scp "$archive" "$NAME:big_vl_code.tgz" \
    $(where) --worker=all
  ssh_workers all "mkdir -p ~/big_vl && tar -xzf ~/big_vl_code.tgz -C ~/big_vl"
}
