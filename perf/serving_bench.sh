#!/usr/bin/env bash
# Serving throughput and latency against concurrency: starts `tpserve serve` (NP ranks, PRESET
# model), then runs `tpserve-cli load` (closed loop: each stream sends its next request when the
# previous ends) at each concurrency, in one run. The levels are swept REPEATS times in turn
# (this VM's speed drifts by 2x within minutes), and each level reports the median of its sweeps.
# Output: JSON (every sweep's points, the medians, and the ratio of output tokens/s at concurrency
# 16 to concurrency 1: of the medians, and per sweep) and a PNG (throughput and latency vs
# concurrency, medians).
#   perf/serving_bench.sh [BUILD_DIR] [OUT_PREFIX]   env: PRESET=small NP=2 LEVELS="1 4 16 64"
#                                                         PROMPT_LEN=32 TOKENS=64 ROUNDS=4 REPEATS=5
#                                                         SERVE_ARGS="--enable-deterministic-inference"
#                                                         MPI_ARGS (mpirun's own flags: one rank
#                                                         using both cores of a 2-core host is
#                                                         MPI_ARGS="--bind-to none" NP=1
#                                                         SERVE_ARGS="--threads 2")
set -euo pipefail
BUILD="${1:-build}"
OUT="${2:-perf/results/serving_bench}"
PRESET="${PRESET:-small}"
NP="${NP:-2}"
LEVELS="${LEVELS:-1 4 16 64}"
PROMPT_LEN="${PROMPT_LEN:-32}"
TOKENS="${TOKENS:-64}"
ROUNDS="${ROUNDS:-4}"  # requests per stream at each level (a c1 level then lasts ~1 s)
REPEATS="${REPEATS:-5}"  # sweeps over the levels
BIN="$BUILD/runtime"
WORK="$(mktemp -d)"
server=""
trap '[ -z "$server" ] || kill "$server" 2>/dev/null || true; rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$BIN/tpserve-mkmodel" --preset "$PRESET" --dtype bf16 --seed 0 --out "$WORK/model" 2>/dev/null
source "$(dirname "$0")/server_lib.sh"
port=$(free_port)
mpirun ${MPI_ARGS:-} --oversubscribe --allow-run-as-root -np "$NP" "$BIN/tpserve" serve --model-path "$WORK/model" --port "$port" \
  --max-running-requests 64 ${SERVE_ARGS:-} 2>"$WORK/server.log" &
server=$!
wait_healthy --addr "127.0.0.1:$port" || { echo "serving_bench: the server did not start" >&2; cat "$WORK/server.log" >&2; exit 1; }
# The load client runs at low priority (server_lib.sh; CLIENT_LOW_PRIORITY=0: normal priority).
[ "${CLIENT_LOW_PRIORITY:-1}" = 1 ] || LOW=()
"${LOW[@]}" "$BIN/tpserve-cli" --addr "127.0.0.1:$port" load --concurrency 2 --requests 2 --max-new-tokens 8 >/dev/null  # warm-up
: >"$WORK/points.jsonl"
for rep in $(seq 1 "$REPEATS"); do
  for c in $LEVELS; do
    # A seed per sweep and level: no request repeats another's prompt, so the prefix cache (on by
    # default) finds nothing to share in these random prompts.
    "${LOW[@]}" "$BIN/tpserve-cli" --addr "127.0.0.1:$port" load --concurrency "$c" --requests $((c * ROUNDS)) \
      --prompt-len "$PROMPT_LEN" --max-new-tokens "$TOKENS" --seed $((rep * 1000 + c)) | sed "s/^{/{\"sweep\":$rep,/" | tee -a "$WORK/points.jsonl" >&2
  done
done
kill -TERM "$(gateway_pid --addr "127.0.0.1:$port")"
wait $server || true
mkdir -p "$(dirname "$OUT")"
python3 - "$WORK/points.jsonl" "$OUT.json" "$OUT.dat" <<PY  # OUT.dat: the medians, for gnuplot
import json, statistics, sys
pts = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
levels = sorted({p["concurrency"] for p in pts})
median = {}
for c in levels:
    at = [p for p in pts if p["concurrency"] == c]
    median[c] = {k: statistics.median(p[k] for p in at) for k in at[0] if k not in ("sweep", "concurrency")}
    median[c]["concurrency"] = c
def ratio(a, b):
    return a[16]["output_tokens_per_s"] / a[1]["output_tokens_per_s"] if 16 in a and 1 in a else None
sweeps = sorted({p["sweep"] for p in pts})
per_sweep = [ratio({p["concurrency"]: p for p in pts if p["sweep"] == s}, None) for s in sweeps]
out = {"bench": "serving", "serve_args": "${SERVE_ARGS:-}", "mpi_args": "${MPI_ARGS:-}", "client": "${LOW[*]:-normal priority} tpserve-cli load on the same host", "preset": "$PRESET", "dtype": "bf16", "np": $NP, "prompt_len": $PROMPT_LEN,
       "max_new_tokens": $TOKENS, "sweeps": len(sweeps), "points": pts, "median": [median[c] for c in levels],
       "tokens_per_s_c16_over_c1": ratio(median, None), "c16_over_c1_per_sweep": per_sweep, "target_ratio": 8.0}
json.dump(out, open(sys.argv[2], "w"), indent=2)
with open(sys.argv[3], "w") as f:
    for c in levels:
        p = median[c]
        f.write("%d %f %f %f %f %f\n" % (c, p["output_tokens_per_s"], p["ttft_p50_s"] * 1e3,
                                          p["ttft_p99_s"] * 1e3, p["itl_p50_s"] * 1e3, p["itl_p99_s"] * 1e3))
print(json.dumps({k: v for k, v in out.items() if k not in ("points", "median")}))
PY
if command -v gnuplot >/dev/null; then
  gnuplot <<GP
set terminal pngcairo size 1100,450
set output "$OUT.png"
set multiplot layout 1,2 title "tpserve serving: $PRESET bf16, TP $NP, prompt $PROMPT_LEN, $TOKENS new tokens"
set logscale x 2
set xlabel "concurrent streams"
set ylabel "output tokens/s"
set grid
plot "$OUT.dat" using 1:2 with linespoints lw 2 title "throughput"
set ylabel "latency (ms)"
set logscale y
plot "$OUT.dat" using 1:3 with linespoints title "TTFT p50", "" using 1:4 with linespoints title "TTFT p99", \
     "" using 1:5 with linespoints title "ITL p50", "" using 1:6 with linespoints title "ITL p99"
unset multiplot
GP
  rm -f "$OUT.dat"
  echo "wrote $OUT.json and $OUT.png" >&2
else
  echo "gnuplot not installed (apt-get install gnuplot-nox): wrote $OUT.json only" >&2
fi
