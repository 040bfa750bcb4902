#!/usr/bin/env bash
# Batch-1 decode against the memory-bandwidth roofline, measured in one run: for every case
# (TP x threads per rank, weight format) it measures the read bandwidth with perf/membw at the
# same total thread count right before and after the decode, then the decode tok/s of a
# bench-1b model (TinyLlama-1.1B shape) through `tpserve run`. Roofline tok/s = bandwidth / bytes
# of weights read per token; each case is repeated and the median ratio reported, with the
# all-reduce share of rank 0's decode time. Output: JSON + PNG bar chart (achieved vs roofline).
#   perf/decode_bench.sh [BUILD_DIR] [OUT_PREFIX]   env: CASES="1x2 2x1 1x1" FORMATS="f32 bf16 int8"
#                                                        TOKENS=32 REPEATS=3 MODEL=DIR (bf16 bench-1b)
set -euo pipefail
BUILD="${1:-build}"
OUT="${2:-perf/results/decode_bench}"
CASES="${CASES:-1x2 2x1 1x1}"
FORMATS="${FORMATS:-f32 bf16 int8}"
TOKENS="${TOKENS:-32}"
REPEATS="${REPEATS:-3}"
source "$(dirname "$0")/bench_1b_model.sh"
rows=()
for fmt in $FORMATS; do
  case "$fmt" in
    int8) load=(--dtype bf16 --quantization int8) ;;
    *) load=(--dtype "$fmt") ;;
  esac
  for c in $CASES; do
    tp="${c%x*}"; th="${c#*x}"
    for rep in $(seq 1 "$REPEATS"); do
      bw0=$("$BUILD/perf/membw" --threads $((tp * th)) --mib 1024 --passes 3)
      run=$(mpirun --allow-run-as-root --bind-to none -np "$tp" "$BIN/tpserve" run --model-path "$MODEL" "${load[@]}" \
              --threads "$th" --prompt-ids 1,2,3 --max-new-tokens "$TOKENS" --ignore-eos --json 2>/dev/null | tail -1)
      bw1=$("$BUILD/perf/membw" --threads $((tp * th)) --mib 1024 --passes 3)
      rows+=("{\"format\":\"$fmt\",\"tp\":$tp,\"threads\":$th,\"rep\":$rep,\"bw_before\":$bw0,\"run\":$run,\"bw_after\":$bw1}")
      echo "$fmt TP$tp x$th rep $rep: $(echo "$run" | grep -o '"decode_time_s":[0-9.e+-]*')" >&2
    done
  done
done
python3 - "$OUT" "$MODEL/config.json" "${rows[@]}" <<'PY'
import json, statistics, sys
out, config_path, rows = sys.argv[1], sys.argv[2], [json.loads(r) for r in sys.argv[3:]]
c = json.load(open(config_path))
h, f, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
matrix_params = L * (2 * h * h + 2 * kv * h + 3 * f * h) + V * h  # projections + lm_head
rows_count = L * (h + 2 * kv + h + 2 * f + h) + V                  # int8: one f32 scale per row
bytes_per_elem = {"f32": 4, "bf16": 2, "int8": 1}
def bytes_per_token(fmt):
    b = matrix_params * bytes_per_elem[fmt] + h * bytes_per_elem[fmt] + 2 * L * h * 4  # + one embedding row, norms
    return b + (rows_count * 4 if fmt == "int8" else 0)
cases = {}
for r in rows:
    u = r["run"]["usage"]
    tok_s = (u["completion_tokens"] - 1) / u["decode_time_s"]
    bw = (r["bw_before"]["gb_per_s"] + r["bw_after"]["gb_per_s"]) / 2
    roof = bw * 1e9 / bytes_per_token(r["format"])
    key = (r["format"], r["tp"], r["threads"])
    cases.setdefault(key, []).append({"tok_s": tok_s, "bw_gb_s": bw, "roofline_tok_s": roof, "ratio": tok_s / roof,
                                      "allreduce_share": u.get("allreduce_s", 0) / (u["decode_time_s"] + 1e-12)})
results = []
for (fmt, tp, th), reps in cases.items():
    med = lambda k: statistics.median(x[k] for x in reps)
    results.append({"format": fmt, "tp": tp, "threads_per_rank": th, "bytes_per_token": bytes_per_token(fmt),
                    "tok_s": med("tok_s"), "roofline_tok_s": med("roofline_tok_s"), "bw_gb_s": med("bw_gb_s"),
                    "fraction_of_roofline": med("ratio"), "allreduce_share": med("allreduce_share"),
                    "repeats": reps})
def frac(fmt, tp, th):
    return next((r["fraction_of_roofline"] for r in results if (r["format"], r["tp"], r["threads_per_rank"]) == (fmt, tp, th)), None)
summary = {}
for fmt in bytes_per_elem:
    a, b = frac(fmt, 1, 2), frac(fmt, 2, 1)
    if a and b:
        summary[fmt] = {"tp1x2_fraction": a, "tp2x1_fraction": b, "tp2x1_vs_tp1x2": b / a}
doc = {"bench": "batch-1 decode vs measured read-bandwidth roofline, bench-1b (TinyLlama-1.1B shape)",
       "targets": {"fraction_of_roofline_tp1x2": 0.9, "tp2x1_within": 0.05}, "summary": summary, "results": results}
json.dump(doc, open(out + ".json", "w"), indent=2)
with open(out + ".dat", "w") as d:
    for r in results:
        d.write(f'"{r["format"]} TP{r["tp"]}x{r["threads_per_rank"]}" {r["tok_s"]:.3f} {r["roofline_tok_s"]:.3f}\n')
for r in results:
    print(f'{r["format"]:5s} TP{r["tp"]} x {r["threads_per_rank"]} thr: {r["tok_s"]:6.2f} tok/s, roofline {r["roofline_tok_s"]:6.2f} '
          f'({r["bw_gb_s"]:.1f} GB/s) -> {100 * r["fraction_of_roofline"]:5.1f}%  all-reduce {100 * r["allreduce_share"]:.1f}%')
for fmt, s in summary.items():
    print(f'{fmt}: TP2x1 / TP1x2 = {s["tp2x1_vs_tp1x2"]:.3f}')
PY
if command -v gnuplot >/dev/null; then
  gnuplot <<GP
set terminal pngcairo size 1000,450
set output "$OUT.png"
set title "tpserve batch-1 decode vs measured-bandwidth roofline (bench-1b)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel "tokens/s"
set xtics rotate by -30
set grid ytics
set key top left
plot "$OUT.dat" using 2:xtic(1) title "achieved", "" using 3 title "roofline (bandwidth / bytes per token)"
GP
  echo "wrote $OUT.json and $OUT.png" >&2
else
  echo "gnuplot not installed (apt-get install gnuplot-nox): wrote $OUT.json only" >&2
fi
rm -f "$OUT.dat"
