#!/usr/bin/env bash
# Bad inputs to the real binaries: each exits non-zero (never hangs) with a message naming the
# problem, also when only some ranks could detect it.
source "$(dirname "$0")/lib.sh"

"$BIN/tpserve-mkmodel" --preset tiny --dtype bf16 --seed 1 --out "$WORK/good" 2>/dev/null
# run NP ARGS...: `tpserve run` on NP ranks (a script, so that `timeout` can start it).
cat >"$WORK/run" <<SH
#!/usr/bin/env bash
exec ${MPIRUN[*]} -np "\$1" "$BIN/tpserve" run --prompt-ids 1,2 --max-new-tokens 4 "\${@:2}"
SH
chmod +x "$WORK/run"
run="$WORK/run"
copy_model() { rm -rf "$WORK/$1"; cp -r "$WORK/good" "$WORK/$1"; }

expect_error "non-existent model path" "does not exist" -- "$run" 2 --model-path "$WORK/nope"
expect_error "unknown KV cache dtype" "kv-cache-dtype: fp8 not in {auto,float32,f32,bfloat16,bf16}" -- \
  "${MPIRUN[@]}" -np 1 "$BIN/tpserve" serve --model-path "$WORK/good" --kv-cache-dtype fp8

copy_model trunc
truncate -s -1000 "$WORK/trunc/model.safetensors"
expect_error "truncated safetensors" "truncated" -- "$run" 2 --model-path "$WORK/trunc"

copy_model hdr
printf '\xff\xff\xff\xff\x00\x00\x00\x00' | dd of="$WORK/hdr/model.safetensors" conv=notrunc status=none
expect_error "header length past the end" "past the end of the file" -- "$run" 2 --model-path "$WORK/hdr"

# Unknown dtype: rewrite one header entry's dtype in place (same length keeps offsets valid).
copy_model dtype
python3 - "$WORK/dtype/model.safetensors" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
n = int.from_bytes(b[:8], 'little')
h = b[8:8 + n].decode()
i = h.index('"model.norm.weight"')
j = h.index('"BF16"', i)
h = h[:j] + '"QQ16"' + h[j + 6:]
b[8:8 + n] = h.encode()
open(p, 'wb').write(b)
PY
expect_error "unknown dtype" "unknown dtype 'QQ16'" -- "$run" 2 --model-path "$WORK/dtype"

# Missing tensor: drop one entry from the header (and keep the file otherwise valid).
copy_model missing
python3 - "$WORK/missing/model.safetensors" <<'PY'
import json, sys
p = sys.argv[1]
b = open(p, 'rb').read()
n = int.from_bytes(b[:8], 'little')
h = json.loads(b[8:8 + n])
del h["model.layers.1.mlp.up_proj.weight"]
s = json.dumps(h).encode()
open(p, 'wb').write(len(s).to_bytes(8, 'little') + s + b[8 + n:])
PY
expect_error "missing tensor" "missing tensor 'model.layers.1.mlp.up_proj.weight'" -- "$run" 2 --model-path "$WORK/missing"

# Plans with a gap and with an overlap (edited from a valid TP-2 plan).
"$BIN/tpserve-partition" --model-path "$WORK/good" --tp 2 -o "$WORK/plan.yaml" 2>/dev/null
python3 - "$WORK/plan.yaml" "$WORK/gap.yaml" "$WORK/overlap.yaml" <<'PY'
import sys
text = open(sys.argv[1]).read()
key = "name: model.layers.2.mlp.up_proj.weight"
i = text.index(key)
j = text.index("ranges: [[0, 172], [172, 344]]", i)
gap = text[:j] + "ranges: [[0, 170], [172, 344]]" + text[j + 30:]
ovl = text[:j] + "ranges: [[0, 180], [172, 344]]" + text[j + 30:]
open(sys.argv[2], "w").write(gap)
open(sys.argv[3], "w").write(ovl)
PY
expect_error "plan with a gap" "model.layers.2.mlp.up_proj.weight': gap: [170, 172)" -- \
  "$run" 2 --model-path "$WORK/good" --partition "$WORK/gap.yaml"
expect_error "plan with an overlap" "rank 1 range [172, 344) overlaps rank 0" -- \
  "$run" 2 --model-path "$WORK/good" --partition "$WORK/overlap.yaml"
expect_error "plan written for another TP" "tp_size is 2 but this job runs --tp 4" -- \
  "$run" 4 --model-path "$WORK/good" --partition "$WORK/plan.yaml"

# TP larger than the attention heads (tiny has 8) cannot work.
expect_error "TP larger than heads" "exceeds num_attention_heads (8)" -- \
  "$BIN/tpserve-partition" --model-path "$WORK/good" --tp 16
expect_error "TP larger than heads (run)" "exceeds num_attention_heads (8)" -- \
  env OMPI_MCA_rmaps_base_oversubscribe=1 "${MPIRUN[@]}" -np 16 "$BIN/tpserve" run --model-path "$WORK/good" \
  --prompt-ids 1 --max-new-tokens 2

# --tp disagreeing with the world: every rank says so and the job exits non-zero.
expect_error "--tp mismatch" "the MPI world has 2 ranks" -- "$run" 2 --model-path "$WORK/good" --tp 3
n=$(grep -c "the MPI world has 2 ranks" "$WORK/err")
[ "$n" = 2 ] && pass "--tp mismatch reported by both ranks" || fail "--tp mismatch reported by $n ranks"
expect_error "--nnodes mismatch" "--nnodes 2 but mpirun started ranks on 1 node" -- \
  "$run" 2 --model-path "$WORK/good" --nnodes 2

# Request errors, caught before any collective.
expect_error "token id out of vocabulary" "outside the vocabulary" -- \
  "${MPIRUN[@]}" -np 2 "$BIN/tpserve" run --model-path "$WORK/good" --prompt-ids 1,5000 --max-new-tokens 2
expect_error "empty --prompt-ids" "a token id must be a non-negative integer, got ''" -- \
  "${MPIRUN[@]}" -np 1 "$BIN/tpserve" run --model-path "$WORK/good" --prompt-ids "" --max-new-tokens 2
expect_error "negative token id (client)" "a token id must be a non-negative integer, got '-2'" -- \
  "$BIN/tpserve-cli" --addr 127.0.0.1:1 generate --prompt-ids 1,-2
# Leading zeros are decimal (CLI11 alone read 010 as octal 8).
a=$("${MPIRUN[@]}" -np 1 "$BIN/tpserve" run --model-path "$WORK/good" --prompt-ids 010,020 --max-new-tokens 4 --json 2>/dev/null | grep -o '"token_ids":\[[0-9,]*\]')
b=$("${MPIRUN[@]}" -np 1 "$BIN/tpserve" run --model-path "$WORK/good" --prompt-ids 10,20 --max-new-tokens 4 --json 2>/dev/null | grep -o '"token_ids":\[[0-9,]*\]')
[ -n "$a" ] && [ "$a" = "$b" ] && pass "--prompt-ids 010,020 reads as 10,20" || fail "--prompt-ids 010,020: '$a' against '$b'"
expect_error "negative temperature" "temperature must be >= 0" -- \
  "$run" 2 --model-path "$WORK/good" --temperature -1
expect_error "top_p outside (0, 1]" "top_p must be in (0, 1]" -- "$run" 2 --model-path "$WORK/good" --top-p 1.5
expect_error "bad config.json" "not valid JSON" -- bash -c "cp -r '$WORK/good' '$WORK/badcfg' && echo '{' > '$WORK/badcfg/config.json' && ${MPIRUN[*]} -np 2 '$BIN/tpserve' run --model-path '$WORK/badcfg' --prompt-ids 1"

# A rank killed mid-generation: the job exits non-zero, names the rank, and does not hang.
"$BIN/tpserve-mkmodel" --preset small --dtype bf16 --seed 1 --out "$WORK/small" 2>/dev/null
start=$(date +%s)
timeout 120 "${MPIRUN[@]}" -np 2 "$BIN/tpserve" run --model-path "$WORK/small" --prompt-ids 1 \
  --max-new-tokens 2000 --ignore-eos >"$WORK/out" 2>"$WORK/err" &
job=$!
victim=""
# Wait until a rank has loaded its weights (each logs "weights loaded"), then kill the second rank
# 0.2 s later: the 2000 tokens take ~3.4 s here (~580 tok/s), so the kill lands mid-generation
# on a machine several times faster too.
for _ in $(seq 1 300); do
  sleep 0.1
  kill -0 "$job" 2>/dev/null || break  # the job ended (the check below reports it)
  victim=$(pgrep -f "tpserve run --model-path $WORK/small" | sort -n | tail -1)
  [ -n "$victim" ] && [ "$(pgrep -f "tpserve run --model-path $WORK/small" | wc -l)" -ge 2 ] &&
    grep -q "weights loaded" "$WORK/err" && break
done
sleep 0.2
kill -9 "$victim" 2>/dev/null
rc=0
wait $job || rc=$?
took=$(($(date +%s) - start))
# mpirun's own report names the rank (every tpserve log line carries "[tpserve rank N]" as well).
dead_rank='process rank [0-9]+ .*(exited|signal|killed)'
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -qiE "$dead_rank" "$WORK/err"; then
  pass "killed rank: job exited $rc after ${took} s: $(grep -iE -m1 "$dead_rank" "$WORK/err" | cut -c1-120)"
else
  fail "killed rank: rc=$rc after ${took} s"
  head -20 "$WORK/err"
fi

# A serving job whose second rank dies: mpirun exits non-zero naming the rank, without a hang, and
# rank 0 does not report a clean shutdown (it logs one only once every rank has confirmed it).
port=$(free_port)
timeout 120 "${MPIRUN[@]}" -np 2 "$BIN/tpserve" serve --model-path "$WORK/small" --port "$port" \
  >"$WORK/sout" 2>"$WORK/serr" &
job=$!
wait_healthy --addr "127.0.0.1:$port" || true  # not up: no gateway pid, and the check below fails
gw=$(gateway_pid --addr "127.0.0.1:$port")
victim=""
for p in $(pgrep -x tpserve); do  # the rank of this job that is not the gateway
  if [ "$p" != "$gw" ] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -q -- "--port $port "; then victim=$p; fi
done
if [ -n "$gw" ] && [ -n "$victim" ]; then kill -9 "$victim"; else kill "$job"; fi
rc=0
wait $job || rc=$?
if [ -z "$victim" ]; then
  fail "killed serving rank: the follower rank was not found (gateway pid '$gw'; rc=$rc)"
elif [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -qiE "$dead_rank" "$WORK/serr" &&
  ! grep -q "shut down cleanly" "$WORK/serr"; then
  pass "killed serving rank: job exited $rc, no clean-shutdown line: $(grep -iE -m1 "$dead_rank" "$WORK/serr" | cut -c1-120)"
else
  fail "killed serving rank: rc=$rc"
  head -30 "$WORK/serr"
fi
finish
