#!/usr/bin/env bash
# The server over TLS (self-signed certificate made here), and a graceful stop through mpirun:
# SIGINT to rank 0, and SIGTERM sent to mpirun itself (which forwards it to every rank); the
# `tpserve-cli load` mode over TLS (every request and token counted, refused requests as errors).
source "$(dirname "$0")/lib.sh"
command -v openssl >/dev/null || { echo "skip: openssl not installed"; exit 0; }

"$BIN/tpserve-mkmodel" --preset tiny --dtype bf16 --seed 2 --out "$WORK/tiny" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 1 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
# wait_exit PID SECONDS: the exit code of PID, or 124 if it is still running after SECONDS.
wait_exit() {
  for _ in $(seq 1 $(($2 * 10))); do kill -0 "$1" 2>/dev/null || { wait "$1"; return $?; }; sleep 0.1; done
  return 124
}

P=$(free_port)
"${MPIRUN[@]}" -np 2 "$BIN/tpserve" serve --model-path "$WORK/tiny" --port "$P" --tls-cert "$WORK/cert.pem" \
  --tls-key "$WORK/key.pem" 2>"$WORK/tls.log" &
srv=$!
if wait_healthy --addr "localhost:$P" --tls-ca "$WORK/cert.pem"; then
  pass "TLS: health SERVING with the server's certificate"
  out=$("$BIN/tpserve-cli" --addr "localhost:$P" --tls-ca "$WORK/cert.pem" generate --prompt-ids 1,2 \
        --max-new-tokens 5 --json)
  echo "$out" | grep -q '"completion_tokens":5' && pass "TLS: generate works" || fail "TLS generate: $out"
  # The load mode (closed loop, every stream on one client thread): each request and token counted.
  # (128 tokens a request: the gateway sends the tokens a stream has waiting in one message, and
  # this tiny model decodes 24 tokens before a TLS stream's first message goes out, so a request
  # of 24 could come as one message, with no gap to time.)
  out=$("$BIN/tpserve-cli" --addr "localhost:$P" --tls-ca "$WORK/cert.pem" load --concurrency 3 --requests 7 \
        --prompt-len 4 --max-new-tokens 128)
  python3 - "$out" <<'PY' && pass "load: 7 requests, 896 tokens, no errors" || fail "load: $out"
import json, sys
d = json.loads(sys.argv[1])
assert d["errors"] == 0, d
assert round(d["output_tokens_per_s"] * d["duration_s"]) == 7 * 128, d
assert d["ttft_p50_s"] > 0 and d["itl_p50_s"] > 0, d
PY
  # Requests the server refuses (prompts past the 1024-token context) are errors: exit 1.
  rc=0
  out=$("$BIN/tpserve-cli" --addr "localhost:$P" --tls-ca "$WORK/cert.pem" load --concurrency 2 --requests 3 \
        --prompt-len 2000 --max-new-tokens 2) || rc=$?
  [ "$rc" = 1 ] && echo "$out" | grep -q '"errors":3' && pass "load: refused requests counted, exit 1" \
    || fail "load with refused requests: rc=$rc $out"
  "$BIN/tpserve-cli" --addr "127.0.0.1:$P" --timeout 3 health >/dev/null 2>&1 \
    && fail "TLS: a plaintext client was served" || pass "TLS: a plaintext client is refused"
else
  fail "TLS server never became healthy"; cat "$WORK/tls.log"
fi
gw=$(gateway_pid --addr "localhost:$P" --tls-ca "$WORK/cert.pem")
kill -INT "$gw"
rc=0; wait_exit $srv 30 || rc=$?
[ "$rc" = 0 ] && pass "SIGINT to rank 0: every rank exited 0" || fail "SIGINT: exit $rc"

P=$(free_port)
"${MPIRUN[@]}" -np 2 "$BIN/tpserve" serve --model-path "$WORK/tiny" --port "$P" 2>"$WORK/fwd.log" &
srv=$!
wait_healthy --addr "127.0.0.1:$P" || fail "server 2 never became healthy"
kill -TERM $srv
rc=0; wait_exit $srv 30 || rc=$?
if grep -q "shut down cleanly" "$WORK/fwd.log"; then
  pass "SIGTERM to mpirun: forwarded, rank 0 drained and shut down cleanly (mpirun exit $rc)"
else
  fail "SIGTERM to mpirun: exit $rc"; cat "$WORK/fwd.log"
fi
finish
