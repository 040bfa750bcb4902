#!/usr/bin/env bash
# All-reduce latency and bus bandwidth (MpiComm, 4 B .. 64 MB) at NP ranks, through shared memory and
# through MPI in turn: JSON + PNG.
#   perf/allreduce_bench.sh [BUILD_DIR] [OUT_PREFIX]   env: NP=2 MAX_MIB=64 ITERS=20
set -euo pipefail
BUILD="${1:-build}"
OUT="${2:-perf/results/allreduce_bench}"
NP="${NP:-2}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun --allow-run-as-root --oversubscribe -np "$NP" "$BUILD/perf/allreduce_bench" --max-mib "${MAX_MIB:-64}" \
  --iters "${ITERS:-20}" > "$OUT.json"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
doc = json.load(open(out + ".json"))
for t in ("shared_memory", "mpi"):
    with open(f"{out}.{t}.dat", "w") as d:
        for p in doc["points"]:
            if p["transport"] != t:
                continue
            d.write(f'{p["bytes"]} {p["latency_us"]:.3f} {p["busbw_gb_s"]:.4f}\n')
            ratio = f'  {p["speedup_over_mpi"]:.2f}x MPI' if "speedup_over_mpi" in p else ""
            print(f'{t:>13} {p["bytes"]:>10d} B  {p["latency_us"]:10.1f} us  busbw {p["busbw_gb_s"]:7.3f} GB/s{ratio}')
PY
if command -v gnuplot >/dev/null; then
  gnuplot <<GP
set terminal pngcairo size 1100,450
set output "$OUT.png"
set multiplot layout 1,2 title "MpiComm all-reduce, $NP ranks"
set logscale x 2
set xlabel "message bytes"
set grid
set logscale y
set ylabel "latency (us)"
plot "$OUT.shared_memory.dat" using 1:2 with linespoints lw 2 title "shared memory", \
     "$OUT.mpi.dat" using 1:2 with linespoints lw 2 title "MPI all-reduce"
unset logscale y
set ylabel "bus bandwidth (GB/s)"
plot "$OUT.shared_memory.dat" using 1:3 with linespoints lw 2 title "shared memory", \
     "$OUT.mpi.dat" using 1:3 with linespoints lw 2 title "MPI all-reduce"
unset multiplot
GP
  echo "wrote $OUT.json and $OUT.png" >&2
fi
rm -f "$OUT.shared_memory.dat" "$OUT.mpi.dat"
