#!/usr/bin/env bash
# What the prefix cache saves when every prompt starts with the same tokens (a shared system
# prompt): two servers of the same model, one with the prefix cache and one with
# --disable-prefix-cache, both started first and loaded in turn REPEATS times (idle ranks sleep,
# and alternating lets both see the same phases of this VM's drifting speed). Each level reports
# the median of its runs per server, and the ratios cache / no cache of TTFT p50 and of requests/s.
# Output: JSON and a PNG (TTFT p50 and requests/s against concurrency, both servers).
#   perf/prefix_cache_bench.sh [BUILD_DIR] [OUT_PREFIX]   env: PRESET=small NP=2 LEVELS="1 8"
#                                                                PROMPT_LEN=512 SHARED=448 TOKENS=16
#                                                                ROUNDS=4 REPEATS=3 SERVE_ARGS MPI_ARGS
set -euo pipefail
BUILD="${1:-build}"
OUT="${2:-perf/results/prefix_cache_bench}"
PRESET="${PRESET:-small}"
NP="${NP:-2}"
LEVELS="${LEVELS:-1 8}"
PROMPT_LEN="${PROMPT_LEN:-512}"
SHARED="${SHARED:-448}"
TOKENS="${TOKENS:-16}"
ROUNDS="${ROUNDS:-4}"
REPEATS="${REPEATS:-3}"
BIN="$BUILD/runtime"
WORK="$(mktemp -d)"
servers=()
trap 'for s in "${servers[@]}"; do kill "$s" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$BIN/tpserve-mkmodel" --preset "$PRESET" --dtype bf16 --seed 0 --out "$WORK/model" 2>/dev/null
source "$(dirname "$0")/server_lib.sh"
declare -A port
for mode in cache nocache; do
  port[$mode]=$(free_port)
  extra=""
  [ "$mode" = nocache ] && extra="--disable-prefix-cache"
  mpirun ${MPI_ARGS:-} --oversubscribe --allow-run-as-root -np "$NP" "$BIN/tpserve" serve --model-path "$WORK/model" \
    --port "${port[$mode]}" --max-running-requests 64 $extra ${SERVE_ARGS:-} 2>"$WORK/$mode.log" &
  servers+=($!)
  wait_healthy --addr "127.0.0.1:${port[$mode]}" ||
    { echo "prefix_cache_bench: the $mode server did not start" >&2; cat "$WORK/$mode.log" >&2; exit 1; }
done
: >"$WORK/points.jsonl"
for rep in $(seq 1 "$REPEATS"); do
  for c in $LEVELS; do
    for mode in cache nocache; do
      # The same prompts for both servers (same seed); a new seed per repeat and level, so that no
      # level's prompts (shared prefix and private tails) are cached by another's.
      "${LOW[@]}" "$BIN/tpserve-cli" --addr "127.0.0.1:${port[$mode]}" load --concurrency "$c" \
        --requests $((c * ROUNDS)) --prompt-len "$PROMPT_LEN" --shared-prefix-len "$SHARED" \
        --max-new-tokens "$TOKENS" --seed $((rep * 1000 + c)) |
        sed "s/^{/{\"repeat\":$rep,\"mode\":\"$mode\",/" | tee -a "$WORK/points.jsonl" >&2
    done
  done
done
for mode in cache nocache; do
  "$BIN/tpserve-cli" --addr "127.0.0.1:${port[$mode]}" info >"$WORK/$mode.info.json"
  kill -TERM "$(gateway_pid --addr "127.0.0.1:${port[$mode]}")"
done
for s in "${servers[@]}"; do wait "$s" || true; done
servers=()
mkdir -p "$(dirname "$OUT")"
python3 - "$WORK" "$OUT.json" "$OUT.dat" <<PY
import json, statistics, sys
work = sys.argv[1]
pts = [json.loads(l) for l in open(work + "/points.jsonl") if l.strip()]
levels = sorted({p["concurrency"] for p in pts})
keys = ("ttft_p50_s", "ttft_p99_s", "itl_p50_s", "requests_per_s", "output_tokens_per_s")
median = {m: {c: {k: statistics.median(p[k] for p in pts if p["mode"] == m and p["concurrency"] == c)
                  for k in keys} for c in levels} for m in ("cache", "nocache")}
def server(m):
    s = json.load(open(work + "/%s.info.json" % m))["server"]
    return {"prefix_cache_query_tokens": int(s["prefixCacheQueryTokens"]),
            "prefix_cache_hit_tokens": int(s["prefixCacheHitTokens"])}
ratios = [{"concurrency": c,
           "ttft_p50_cache_over_nocache": median["cache"][c]["ttft_p50_s"] / median["nocache"][c]["ttft_p50_s"],
           "requests_per_s_cache_over_nocache":
               median["cache"][c]["requests_per_s"] / median["nocache"][c]["requests_per_s"]} for c in levels]
out = {"bench": "prefix_cache", "preset": "$PRESET", "dtype": "bf16", "np": $NP, "serve_args": "${SERVE_ARGS:-}",
       "prompt_len": $PROMPT_LEN, "shared_prefix_len": $SHARED, "max_new_tokens": $TOKENS, "repeats": $REPEATS,
       "points": pts, "median": {m: [dict(concurrency=c, **median[m][c]) for c in levels] for m in median},
       "server_counters": {m: server(m) for m in ("cache", "nocache")}, "ratios": ratios}
json.dump(out, open(sys.argv[2], "w"), indent=2)
with open(sys.argv[3], "w") as f:
    for c in levels:
        f.write("%d %f %f %f %f\n" % (c, median["cache"][c]["ttft_p50_s"] * 1e3, median["nocache"][c]["ttft_p50_s"] * 1e3,
                                      median["cache"][c]["requests_per_s"], median["nocache"][c]["requests_per_s"]))
print(json.dumps({"ratios": ratios, "server_counters": out["server_counters"]}))
PY
if command -v gnuplot >/dev/null; then
  gnuplot <<GP
set terminal pngcairo size 1100,450
set output "$OUT.png"
set multiplot layout 1,2 title "tpserve prefix cache: $PRESET bf16, TP $NP, prompt $PROMPT_LEN ($SHARED shared), $TOKENS new tokens"
set logscale x 2
set xlabel "concurrent streams"
set grid
set ylabel "TTFT p50 (ms)"
plot "$OUT.dat" using 1:2 with linespoints lw 2 title "prefix cache", "" using 1:3 with linespoints lw 2 title "--disable-prefix-cache"
set ylabel "requests/s"
plot "$OUT.dat" using 1:4 with linespoints lw 2 title "prefix cache", "" using 1:5 with linespoints lw 2 title "--disable-prefix-cache"
unset multiplot
GP
  rm -f "$OUT.dat"
  echo "wrote $OUT.json and $OUT.png" >&2
else
  echo "gnuplot not installed (apt-get install gnuplot-nox): wrote $OUT.json only" >&2
fi
