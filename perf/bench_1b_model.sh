# Sourced by decode_bench.sh and prefill_bench.sh (after they set BUILD): the binaries, a scratch
# folder removed on exit, mpirun as root, and MODEL: the given directory, or a bf16 bench-1b model
# (TinyLlama-1.1B shape) made in the scratch folder.
BIN="$BUILD/runtime"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MODEL="${MODEL:-$WORK/bench-1b}"
[ -f "$MODEL/config.json" ] || "$BIN/tpserve-mkmodel" --preset bench-1b --dtype bf16 --seed 0 --out "$MODEL" 2>/dev/null
