#!/usr/bin/env bash
# Gateway overhead: decode tok/s of one greedy request through gRPC (tpserve serve + tpserve-cli)
# against `tpserve run` (no server), same model, same TP size, same machine, in one run.
# Decode tok/s = (completion_tokens - 1) / decode_time_s, both sides measured by tpserve itself
# (first token to last token). The two sides run back to back, in alternating order, REPEATS
# times; the reported ratio is the median of the per-pair ratios, so machine-speed drift (large
# on shared 2-core VMs) cancels.
#
# Each TP size in NPS is a layout of its own (--threads 1 on each rank): with fewer ranks than
# cores the gateway threads and the client have a core of their own; with as many, every token's
# gRPC work must come out of the ranks' cores. So the bench also measures the CPU time per token
# of rank 0's gRPC threads and of the client, and reports the best ratio that this CPU time allows
# when the ranks fill every core (their time spread perfectly over all cores).
# Writes JSON (and prints it).
#   perf/gateway_bench.sh [BUILD_DIR] [OUT_JSON]    env: PRESET=small NPS="1 2" TOKENS=384 REPEATS=15
set -euo pipefail
BUILD="${1:-build}"
OUT="${2:-perf/results/gateway_bench.json}"
PRESET="${PRESET:-small}"
NPS="${NPS:-1 2}"
TOKENS="${TOKENS:-384}"
REPEATS="${REPEATS:-15}"
BIN="$BUILD/runtime"
WORK="$(mktemp -d)"
server=""
trap '[ -z "$server" ] || kill "$server" 2>/dev/null || true; rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$BIN/tpserve-mkmodel" --preset "$PRESET" --dtype bf16 --seed 0 --out "$WORK/model" 2>/dev/null
rate() { python3 -c 'import json,sys; u=json.load(sys.stdin)["usage"]; print((u["completion_tokens"]-1)/u["decode_time_s"])'; }

# The client runs at low priority beside the ranks (LOW, server_lib.sh).
source "$(dirname "$0")/server_lib.sh"

one_run() {
  "${MPIRUN[@]}" "$BIN/tpserve" run --model-path "$WORK/model" --threads 1 --prompt-ids 1,2,3 \
    --max-new-tokens "$TOKENS" --ignore-eos --json 2>/dev/null | rate
}

# Prints: decode tok/s, rank 0's gRPC-thread CPU ms per token, the client's CPU ms per token
# (both over the whole request, prefill included).
one_grpc() {
  python3 - "$port" "$gw_pid" "$TOKENS" "${LOW[@]}" "$BIN/tpserve-cli" <<'PY'
import json, os, resource, subprocess, sys
port, pid, tokens, client = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
def grpc_threads_cpu_s():
    # Rank 0's whole process (it counts threads that have ended too: gRPC ends idle pollers on its
    # own; 10 ms ticks) less the engine's long-lived threads (named "tpserve"; ns).
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    process = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    engine = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            if open(f"/proc/{pid}/task/{t}/comm").read().strip() == "tpserve":
                engine += int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
        except OSError:
            pass
    return process - engine / 1e9
def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
# The client's start-up (process, channel, connection) is not part of the stream: measured with
# a health check and subtracted.
c0 = children_cpu_s()
subprocess.run(client + ["--addr", f"127.0.0.1:{port}", "health"], check=True, capture_output=True)
startup = children_cpu_s() - c0
g0, c0 = grpc_threads_cpu_s(), children_cpu_s()
out = subprocess.run(client + ["--addr", f"127.0.0.1:{port}", "generate", "--prompt-ids", "1,2,3",
                     "--max-new-tokens", str(tokens), "--ignore-eos", "--json"],
                     check=True, capture_output=True, text=True).stdout
g1, c1 = grpc_threads_cpu_s(), children_cpu_s()
u = json.loads(out)["usage"]
n = u["completion_tokens"]
print((n - 1) / u["decode_time_s"], max(0.0, g1 - g0) * 1e3 / n, max(0.0, c1 - c0 - startup) * 1e3 / n)
PY
}

: >"$WORK/pairs.txt"
for np in $NPS; do
  MPIRUN=(mpirun --oversubscribe --allow-run-as-root -np "$np")
  port=$(free_port)
  "${MPIRUN[@]}" "$BIN/tpserve" serve --model-path "$WORK/model" --threads 1 --port "$port" 2>"$WORK/server-$np.log" &
  server=$!
  wait_healthy --addr "127.0.0.1:$port" || { echo "gateway_bench: the server did not start" >&2; cat "$WORK/server-$np.log" >&2; exit 1; }
  gw_pid=$(gateway_pid --addr "127.0.0.1:$port")
  for i in $(seq 1 "$REPEATS"); do
    if [ $((i % 2)) -eq 1 ]; then r=$(one_run); g=$(one_grpc); else g=$(one_grpc); r=$(one_run); fi
    read -r gr gcpu ccpu <<<"$g"
    echo "TP $np, repeat $i: tpserve run $r tok/s, gRPC $gr tok/s (gRPC threads $gcpu ms/token, client $ccpu ms/token)" >&2
    echo "$np $r $gr $gcpu $ccpu" >>"$WORK/pairs.txt"
  done
  kill -TERM "$gw_pid"
  wait $server || true
  server=""
done
mkdir -p "$(dirname "$OUT")"
python3 - "$OUT" "$WORK/pairs.txt" "$PRESET" "$TOKENS" "$REPEATS" "$(nproc)" "${LOW[*]:-normal priority}" <<'PY'
import json, statistics, sys
out_path, pairs_path, preset, tokens, repeats, cores, client = sys.argv[1:8]
cores = int(cores)
rows = [l.split() for l in open(pairs_path)]
layouts = []
for np in sorted({int(r[0]) for r in rows}):
    mine = [[float(x) for x in r[1:]] for r in rows if int(r[0]) == np]
    ratios = [g / r for r, g, _, _ in mine]
    step_ms = statistics.median(1e3 / r for r, _, _, _ in mine)
    gateway_ms = statistics.median(m[2] for m in mine)
    client_ms = statistics.median(m[3] for m in mine)
    # Ranks fill every core: the extra CPU time at best spreads over all of them.
    saturated = np >= cores
    bound = step_ms / (step_ms + (gateway_ms + client_ms) / cores) if saturated else 1.0
    layouts.append({"np": np, "threads_per_rank": 1, "ranks_fill_every_core": saturated,
                    "run_decode_tok_s": [m[0] for m in mine], "grpc_decode_tok_s": [m[1] for m in mine],
                    "pair_ratios": ratios, "ratio_grpc_over_run_median": statistics.median(ratios),
                    "run_step_ms_median": step_ms, "grpc_threads_cpu_ms_per_token_median": gateway_ms,
                    "client_cpu_ms_per_token_median": client_ms, "best_ratio_this_cpu_time_allows": bound})
out = {"bench": "gateway_overhead", "preset": preset, "dtype": "bf16", "tokens": int(tokens),
       "repeats": int(repeats), "host_cores": cores, "client": f"{client} tpserve-cli on the same host",
       "layouts": layouts, "target_ratio": 0.95}
json.dump(out, open(out_path, "w"), indent=2)
print(json.dumps(out))
PY
