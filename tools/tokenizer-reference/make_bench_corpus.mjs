// Writes a deterministic ~1 MB mixed-content benchmark corpus (prose, code, CJK, emoji,
// numbers, whitespace) to the path given as the first argument.
//
//   node make_bench_corpus.mjs /tmp/bench.txt [target_bytes]   (default 1000000)
//
// Paragraphs are separated by "\n\n" (bench_encode.mjs encodes paragraph by paragraph).
// Same output on every run: the only randomness is mulberry32 with a fixed seed.
import fs from "node:fs";
import { mulberry32 } from "./corpus.mjs";

const out = process.argv[2];
const target = Number(process.argv[3] ?? 1_000_000);
if (!out || !(target > 0)) {
  console.error("usage: node make_bench_corpus.mjs OUT_PATH [target_bytes]");
  process.exit(2);
}
const rnd = mulberry32(0x5eed1234);
const pick = (a) => a[Math.floor(rnd() * a.length)];
const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));

const WORDS = ("the of and to in is was that for on with as by at from it be this which or an are " +
  "model server token request batch latency throughput memory kernel tensor parallel attention cache " +
  "layer weight gradient prefill decode stream queue scheduler worker shard reduce gather scatter " +
  "quick brown fox lazy dog river mountain city morning evening history science music language " +
  "don't can't won't it's they'll I'm we've she'd you're isn't").split(" ");
const CJK = ["我们", "模型", "服务器", "推理", "语言", "数据", "时间", "今日", "東京", "学習", "天気", "한국어", "데이터", "서버", "の", "は", "が", "。", "，", "、"];
const EMOJI = ["😀", "🚀", "🎉", "👍🏽", "👨‍👩‍👧‍👦", "🇯🇵", "❤️", "🔥", "🤖", "✅", "🧑‍💻"];
const CODE = [
  () => `def f_${int(0, 999)}(x, y=${int(0, 99)}):\n    if x > y:\n        return x - y\n    return [i * ${int(2, 9)} for i in range(y)]`,
  () => `for (int i = 0; i < ${int(1, 4096)}; ++i) {\n    out[i] = a[i] * ${int(1, 9)}.${int(0, 99)}f + b[i];\n}`,
  () => `{"id": ${int(1, 99999)}, "name": "item_${int(0, 999)}", "tags": ["a", "b"], "price": ${int(1, 999)}.${int(0, 99)}}`,
  () => `SELECT * FROM t${int(1, 9)} WHERE x = ${int(0, 1000)} AND y LIKE '%${pick(WORDS)}%';`,
  () => `\tif (err != nil) {\n\t\treturn fmt.Errorf("failed: %w", err)\n\t}`,
];

function sentence() {
  const n = int(5, 22);
  const w = [];
  for (let i = 0; i < n; i++) w.push(pick(WORDS));
  w[0] = w[0][0].toUpperCase() + w[0].slice(1);
  return w.join(" ") + pick([".", ".", ".", "!", "?", ";", ","]);
}
function paragraph() {
  const r = rnd();
  if (r < 0.45) return Array.from({ length: int(2, 8) }, sentence).join(" ");
  if (r < 0.60) return pick(CODE)();
  if (r < 0.72) return Array.from({ length: int(8, 40) }, () => pick(CJK)).join("");
  if (r < 0.80) return Array.from({ length: int(3, 12) }, () => pick(rnd() < 0.5 ? EMOJI : WORDS)).join(" ");
  if (r < 0.90) return Array.from({ length: int(4, 16) }, () => pick([
    String(int(0, 9)), String(int(10, 999)), String(int(1000, 9999999)), `${int(0, 99)}.${int(0, 99999)}`,
    `-${int(1, 500)}`, `${int(1, 9)}e${int(1, 20)}`, `+1 (${int(200, 999)}) ${int(100, 999)}-${int(1000, 9999)}`])).join(" ");
  // whitespace-heavy / mixed
  return `  ${sentence()}\n\t${sentence()}   ${pick(EMOJI)}\n    ${pick(CJK)}${pick(CJK)} ${int(0, 99999)}  `;
}

const enc = new TextEncoder();
const parts = [];
let bytes = 0;
while (bytes < target) {
  const p = paragraph();
  parts.push(p);
  bytes += enc.encode(p).length + 2;
}
const text = parts.join("\n\n") + "\n";
fs.writeFileSync(out, text);
console.log(JSON.stringify({ path: out, bytes: Buffer.byteLength(text), paragraphs: parts.length }));
