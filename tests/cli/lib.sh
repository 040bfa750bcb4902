# Shared helpers for the end-to-end tests: BIN (tpserve binaries), a scratch dir, mpirun flags.
set -u
BIN="$1"
REF_GREEDY="${2:-}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tpserve-cli-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe --allow-run-as-root)
FAILS=0

fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
pass() { echo "ok: $*"; }

# free_port, wait_healthy CLI-ARGS..., gateway_pid CLI-ARGS...
source "$(dirname "${BASH_SOURCE[0]}")/../../launch/server_lib.sh"

# expect_error NAME NEEDLE -- COMMAND...: the command must exit non-zero within 60 s (no hang)
# and its stderr must contain NEEDLE.
expect_error() {
  local name="$1" needle="$2"
  shift 3
  local rc=0
  timeout 60 "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
  if [ "$rc" -eq 0 ]; then
    fail "$name: exited 0"
  elif [ "$rc" -eq 124 ]; then
    fail "$name: hung (killed after 60 s)"
  elif ! grep -qF -- "$needle" "$WORK/err"; then
    fail "$name: stderr lacks '$needle'"
    sed 's/^/    /' "$WORK/err" | head -20
  else
    pass "$name (exit $rc): $(grep -F -m1 -- "$needle" "$WORK/err" | cut -c1-160)"
  fi
}

finish() {
  if [ "$FAILS" -ne 0 ]; then
    echo "$FAILS check(s) failed"
    exit 1
  fi
  echo "all checks passed"
}
