#!/usr/bin/env bash
# Prefill throughput against the peak matrix throughput measured in the same run: the prefill
# time of a PROMPT-token prompt (`tpserve run`, time to first token) on a bench-1b model, and
# perf/peak_flops at the same thread count before and after (AVX-512 FMA f32 and AMX bf16
# register-resident microkernels). flops = 2 x matrix parameters x tokens + causal attention.
#   perf/prefill_bench.sh [BUILD_DIR] [OUT_JSON]   env: CASES="1x2" FORMATS="bf16" PROMPT=512 MODEL=DIR
set -euo pipefail
BUILD="${1:-build}"
OUT="${2:-perf/results/prefill_bench.json}"
CASES="${CASES:-1x2}"
FORMATS="${FORMATS:-bf16}"
PROMPT="${PROMPT:-512}"
source "$(dirname "$0")/bench_1b_model.sh"
ids=$(python3 -c "print(','.join(str(3 + (i * 37) % 31000) for i in range($PROMPT)))")
rows=()
for fmt in $FORMATS; do
  for c in $CASES; do
    tp="${c%x*}"; th="${c#*x}"
    p0=$("$BUILD/perf/peak_flops" --threads $((tp * th)))
    run=$(mpirun --allow-run-as-root --bind-to none -np "$tp" "$BIN/tpserve" run --model-path "$MODEL" --dtype "$fmt" \
            --threads "$th" --prompt-ids "$ids" --max-new-tokens 1 --json 2>/dev/null | tail -1)
    p1=$("$BUILD/perf/peak_flops" --threads $((tp * th)))
    rows+=("{\"format\":\"$fmt\",\"tp\":$tp,\"threads\":$th,\"peak_before\":$p0,\"run\":$run,\"peak_after\":$p1}")
    echo "$fmt TP$tp x$th: $(echo "$run" | grep -o '"time_to_first_token_s":[0-9.e+-]*')" >&2
  done
done
python3 - "$OUT" "$MODEL/config.json" "$PROMPT" "${rows[@]}" <<'PY'
import json, sys
out, config_path, n, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), [json.loads(r) for r in sys.argv[4:]]
c = json.load(open(config_path))
h, f, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
matrix_params = L * (2 * h * h + 2 * kv * h + 3 * f * h)  # lm_head runs for the last token only
flops = 2 * matrix_params * n + 2 * V * h + L * 2 * 2 * h * n * (n + 1) / 2  # + QK^T and PV, causal
results = []
for r in rows:
    s = r["run"]["usage"]["time_to_first_token_s"]
    achieved = flops / s / 1e9
    def peak(key):
        vals = [p.get(key) for p in (r["peak_before"], r["peak_after"]) if p.get(key)]
        return sum(vals) / len(vals) if vals else None
    fma, amx = peak("avx512_fma_f32_gflops"), peak("amx_bf16_gflops")
    results.append({"format": r["format"], "tp": r["tp"], "threads_per_rank": r["threads"], "prompt_tokens": n,
                    "prefill_s": s, "tokens_per_s": n / s, "gflops": achieved,
                    "avx512_fma_peak_gflops": fma, "fraction_of_fma_peak": achieved / fma if fma else None,
                    "amx_bf16_peak_gflops": amx, "fraction_of_amx_peak": achieved / amx if amx else None})
    print(f'{r["format"]} TP{r["tp"]}x{r["threads"]}: {n / s:.1f} tok/s, {achieved:.1f} GFLOP/s = '
          f'{100 * achieved / fma:.1f}% of AVX-512 FMA peak ({fma:.0f})'
          + (f', {100 * achieved / amx:.2f}% of AMX bf16 peak ({amx:.0f})' if amx else ''))
json.dump({"bench": "prefill vs measured peak matrix throughput", "targets": {"amx_bf16": 0.5, "avx512_fma": 0.7},
           "results": results}, open(out, "w"), indent=2)
PY
