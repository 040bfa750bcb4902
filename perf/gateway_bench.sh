#!/usr/bin/env bash
# Gateway overhead: decode tok/s of one greedy request through gRPC (tpserve serve + tpserve-cli)
# against `tpserve run` (no server), same model, same TP size, same machine, in one run.
# Decode tok/s = (completion_tokens - 1) / decode_time_s, both sides measured by tpserve itself
# (first token to last token). The two sides run back to back, in alternating order, REPEATS
# times; the reported ratio is the median of the per-pair ratios, so machine-speed drift (large
# on shared 2-core VMs) cancels. Writes JSON (and prints it).
#   perf/gateway_bench.sh [BUILD_DIR] [OUT_JSON]    env: PRESET=small NP=2 TOKENS=384 REPEATS=7
set -euo pipefail
BUILD="${1:-build}"
OUT="${2:-perf/results/gateway_bench.json}"
PRESET="${PRESET:-small}"
NP="${NP:-2}"
TOKENS="${TOKENS:-384}"
REPEATS="${REPEATS:-7}"
BIN="$BUILD/runtime"
WORK="$(mktemp -d)"
trap 'kill $server 2>/dev/null || true; rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe --allow-run-as-root -np "$NP")
"$BIN/tpserve-mkmodel" --preset "$PRESET" --dtype bf16 --seed 0 --out "$WORK/model" 2>/dev/null
rate() { python3 -c 'import json,sys; u=json.load(sys.stdin)["usage"]; print((u["completion_tokens"]-1)/u["decode_time_s"])'; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${MPIRUN[@]}" "$BIN/tpserve" serve --model-path "$WORK/model" --port "$port" 2>"$WORK/server.log" &
server=$!
for _ in $(seq 1 300); do "$BIN/tpserve-cli" --addr "127.0.0.1:$port" health >/dev/null 2>&1 && break; sleep 0.1; done

one_run() {
  "${MPIRUN[@]}" "$BIN/tpserve" run --model-path "$WORK/model" --prompt-ids 1,2,3 --max-new-tokens "$TOKENS" \
    --ignore-eos --json 2>/dev/null | rate
}
# The client shares this host's cores with the ranks; it runs SCHED_BATCH at nice +5 (as the
# server's gRPC threads do) so that its wake-ups per token do not preempt a rank: the bench
# measures the server's overhead, not a client's that would live on another machine in practice.
LOW=()
command -v chrt >/dev/null && LOW=(chrt --batch 0 nice -n 5)
one_grpc() {
  "${LOW[@]}" "$BIN/tpserve-cli" --addr "127.0.0.1:$port" generate --prompt-ids 1,2,3 --max-new-tokens "$TOKENS" --ignore-eos \
    --json | rate
}
runs=()
grpcs=()
for i in $(seq 1 "$REPEATS"); do
  if [ $((i % 2)) -eq 1 ]; then r=$(one_run); g=$(one_grpc); else g=$(one_grpc); r=$(one_run); fi
  echo "repeat $i: tpserve run $r tok/s, gRPC $g tok/s" >&2
  runs+=("$r")
  grpcs+=("$g")
done
kill -TERM "$(grep -o '"gatewayPid": [0-9]*' <("$BIN/tpserve-cli" --addr "127.0.0.1:$port" info) | tr -dc 0-9)"
wait $server || true
mkdir -p "$(dirname "$OUT")"
python3 - "$OUT" "${runs[*]}" "${grpcs[*]}" <<PY
import json, statistics, sys
runs = [float(x) for x in sys.argv[2].split()]
grpcs = [float(x) for x in sys.argv[3].split()]
ratios = [g / r for r, g in zip(runs, grpcs)]
out = {"bench": "gateway_overhead", "preset": "$PRESET", "dtype": "bf16", "np": $NP, "tokens": $TOKENS,
       "client": "${LOW[*]:-normal priority} tpserve-cli on the same host",
       "repeats": $REPEATS, "run_decode_tok_s": runs, "grpc_decode_tok_s": grpcs, "pair_ratios": ratios,
       "ratio_grpc_over_run_median": statistics.median(ratios), "target_ratio": 0.95}
json.dump(out, open(sys.argv[1], "w"), indent=2)
print(json.dumps(out))
PY
