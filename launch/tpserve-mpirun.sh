#!/usr/bin/env bash
# tpserve-mpirun.sh NP ARGS...: runs `tpserve ARGS...` on NP MPI ranks of this host.
# Adds the flags a single workstation needs: --oversubscribe (more ranks than cores) and, when
# run as root (containers, CI), --allow-run-as-root. Ranks are bound to cores when they fit.
set -euo pipefail
np="$1"
shift
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${TPSERVE_BIN:-$here/build/runtime/tpserve}"
flags=(--oversubscribe)
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
if [ "$np" -le "$(nproc)" ]; then flags+=(--bind-to core); else flags+=(--bind-to none); fi
exec mpirun "${flags[@]}" -np "$np" "$bin" "$@"
