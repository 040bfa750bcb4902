# Helpers of the perf scripts that start `tpserve serve` and a client on this host (sourced):
# free_port, wait_healthy and gateway_pid (launch/server_lib.sh), and LOW.
# BIN must name the directory of the tpserve binaries.
source "$(dirname "${BASH_SOURCE[0]}")/../launch/server_lib.sh"

# The client shares this host's cores with the ranks; it runs SCHED_BATCH at nice +5 (as the
# server's gRPC threads do) so that its wake-ups per token do not preempt a rank: the benches
# measure the server, not a client that would live on another machine in practice. LOW: the
# command prefix for that (empty where chrt is missing).
LOW=()
if command -v chrt >/dev/null; then LOW=(chrt --batch 0 nice -n 5); fi  # (an if: `source` returns 0)
