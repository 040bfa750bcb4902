#!/usr/bin/env bash
# Fresh Debian 12 to a 2-rank tensor-parallel generation: install dependencies, build, write
# the demo model, run it on 2 MPI ranks (one weight shard each).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install-deps.sh
cmake --preset release
cmake --build build -j2
./build/runtime/tpserve-mkmodel --preset tiny --dtype bf16 --seed 0 --out models/tiny
./build/runtime/tpserve-partition --model-path models/tiny --tp 2 -o models/tiny/plan-tp2.yaml
launch/tpserve-mpirun.sh 2 run --model-path models/tiny --partition models/tiny/plan-tp2.yaml \
  --prompt-ids 1,15,27,300 --max-new-tokens 32 --json
