# Helpers of the perf scripts that start `tpserve serve` and a client on this host (sourced).
# BIN must name the directory of the tpserve binaries.

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 30 s until the server at ADDR reports SERVING.
wait_healthy() {
  for _ in $(seq 1 300); do "$BIN/tpserve-cli" --addr "$1" health >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

# The pid of rank 0 (the gateway) of the server at ADDR: SIGTERM to it drains and stops the job.
gateway_pid() { "$BIN/tpserve-cli" --addr "$1" info | grep -o '"gatewayPid": [0-9]*' | tr -dc 0-9; }

# The client shares this host's cores with the ranks; it runs SCHED_BATCH at nice +5 (as the
# server's gRPC threads do) so that its wake-ups per token do not preempt a rank: the benches
# measure the server, not a client that would live on another machine in practice. LOW: the
# command prefix for that (empty where chrt is missing).
LOW=()
if command -v chrt >/dev/null; then LOW=(chrt --batch 0 nice -n 5); fi  # (an if: `source` returns 0)
