# Helpers for scripts that start `tpserve serve` on this host and talk to it with tpserve-cli
# (sourced by launch/quickstart.sh, the perf/ benches and the CLI tests). BIN must name the
# directory of the tpserve binaries; CLI-ARGS are tpserve-cli's connection flags (--addr, --tls-ca).

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_healthy CLI-ARGS...: until the server reports SERVING (up to 30 s); non-zero if it never does.
wait_healthy() {
  for _ in $(seq 1 300); do "$BIN/tpserve-cli" "$@" health >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

# gateway_pid CLI-ARGS...: the pid of the server's rank 0 (the gateway), from its info: SIGTERM to
# it drains and stops the job.
gateway_pid() { "$BIN/tpserve-cli" "$@" info | grep -o '"gatewayPid": [0-9]*' | tr -dc 0-9; }
