// Deterministic tokenizer test corpus for tpserve golden files.
//
// Exports:
//   corpus      — array of unique, well-formed Unicode strings (what goes to corpus.json)
//   categories  — parallel array: categories[i] is the category tag of corpus[i]
//   entries     — [{category, text}] in the same order
//   mulberry32  — the seeded PRNG used for the long mixed paragraphs (also used by make_bench_corpus.mjs)
//
// No randomness except mulberry32 with fixed seeds, so every run yields the same corpus.

export function mulberry32(seed) {
  let a = seed >>> 0;
  return function () {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const entries = [];
const seen = new Set();
function add(category, ...texts) {
  for (const t of texts) {
    if (typeof t !== "string") throw new Error(`not a string in ${category}`);
    if (!t.isWellFormed()) throw new Error(`lone surrogate in ${category}: ${JSON.stringify(t)}`);
    if (seen.has(t)) continue; // keep the first occurrence only
    seen.add(t);
    entries.push({ category, text: t });
  }
}

// ---------------------------------------------------------------- trivial
add("trivial", "", " ", "a", "A", "Hello", "Hello world", "hello world", "Hello, world!", ".", "\n");

// ---------------------------------------------------------------- English prose
add(
  "prose",
  "The quick brown fox jumps over the lazy dog.",
  "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.",
  "It was a bright cold day in April, and the clocks were striking thirteen.",
  "Call me Ishmael.",
  "To be, or not to be, that is the question.",
  "She sells seashells by the seashore.",
  "Yes.",
  "No!",
  "Why?",
  "Wait... what?!",
  "Mr. and Mrs. Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal, thank you very much.",
  "In the beginning the Universe was created. This has made a lot of people very angry and been widely regarded as a bad move.",
  "Large language models are trained on vast amounts of text; tokenization splits that text into pieces, which are then mapped to integer ids.",
  "The tensor-parallel server shards each attention head group across GPUs, all-reduces the partial outputs, and streams tokens back over HTTP.",
  "A sentence with    several   irregular    spaces between words.",
  "Semicolons; colons: dashes — and en–dashes, plus (parentheses) and [brackets] and {braces}.",
  "\"Quoted text,\" she said, 'and single quotes too.'",
  "\u201cCurly quotes\u201d and \u2018single curly quotes\u2019 look different.",
  "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilisticexpialidocious",
  "camelCaseIdentifier snake_case_identifier kebab-case-identifier SCREAMING_SNAKE_CASE PascalCase",
  "Once upon a time, in a land far, far away, there lived a small dragon who was afraid of the dark. Every night she would curl up beside the embers of the village forge and listen to the blacksmith hum old songs until she fell asleep.",
  "Tokenizers must be byte-exact: a single different id changes every logit that follows, so golden tests compare complete id sequences rather than counts.",
  "hello\u00a0world (with a no-break space)",
);

// ---------------------------------------------------------------- contractions
add(
  "contractions",
  "don't",
  "I'm",
  "they'll",
  "DON'T",
  "I'M",
  "THEY'LL",
  "We're sure you've seen it; she'd say it's fine, and he'll agree.",
  "WE'RE SURE YOU'VE SEEN IT; SHE'D SAY IT'S FINE, AND HE'LL AGREE.",
  "I don't think they'll come, but I'm not sure.",
  "Don't Won't Can't Shouldn't Wouldn't Isn't Aren't",
  "it's its it'S IT's",
  "y'all'd've",
  "'s 't 're 've 'm 'll 'd",
  "'S 'T 'RE 'VE 'M 'LL 'D",
  "o'clock rock'n'roll ma'am",
  "the dog's bone, the dogs' bones",
  "don\u2019t (curly apostrophe)",
  "'quoted'",
  "''",
  "isn 't he 's",
  "Hello , world . I don 't know ! Really ?",
);

// ---------------------------------------------------------------- source code
add(
  "code_cpp",
  "#include <cstdio>\n\nint main() {\n    std::printf(\"Hello, world!\\n\");\n    return 0;\n}\n",
  "template <typename T>\nstruct Vec {\n  T* data = nullptr;\n  size_t n = 0;\n  T& operator[](size_t i) { return data[i]; }\n};",
  "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
  "auto lambda = [&](const std::string& s) -> bool { return !s.empty(); };",
  "__global__ void add(float* __restrict__ out, const float* a, const float* b, int n) {\n\tint i = blockIdx.x * blockDim.x + threadIdx.x;\n\tif (i < n) out[i] = a[i] + b[i];\n}",
  "// comment\n/* block\n   comment */\nx <<= 2; y >>= 3; z = x->y ? a::b : c;",
  "std::unordered_map<std::string, std::vector<int>> m{{\"a\", {1, 2, 3}}};",
);
add(
  "code_python",
  "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
  "class Foo:\n    def __init__(self, x):\n        self.x = x\n\n    def __repr__(self):\n        return f\"Foo({self.x!r})\"\n",
  "import numpy as np\n\nx = np.arange(10)\nprint(x[::2], x.sum())\n",
  "if True:\n\tprint('tab indented')\n\tif False:\n\t\tpass\n",
  "    leading four spaces\n        eight spaces\n            twelve spaces",
  "with open('f.txt') as f:\n    for line in f:\n        line = line.rstrip('\\n')\n        if not line:\n            continue\n        yield line.split(',')\n",
  "lambda x: x ** 2  # square\nresult = [i for i in range(100) if i % 3 == 0]",
  "@decorator\nasync def handler(request):\n    await asyncio.sleep(0.1)\n    return {'status': 'ok'}\n",
);
add(
  "code_json",
  "{\"a\": 1, \"b\": [true, false, null], \"c\": {\"d\": \"e\"}}",
  "{\n  \"model\": \"llama\",\n  \"temperature\": 0.7,\n  \"max_tokens\": 128,\n  \"stop\": [\"</s>\", \"\\n\\n\"]\n}",
  "[]",
  "{}",
  "[{\"id\":1,\"name\":\"x\"},{\"id\":2,\"name\":\"y\"}]",
  "{\"unicode\": \"\\u00e9\\u4e2d\", \"escaped\": \"line\\nbreak\\ttab\\\"quote\\\\\"}",
);
add(
  "code_misc",
  "SELECT id, name FROM users WHERE age >= 18 ORDER BY name ASC LIMIT 10;",
  "<html><head><title>Test</title></head><body><p class=\"x\">Hi &amp; bye</p></body></html>",
  "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\"; done\n",
  "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}",
  "$ git commit -m \"fix: off-by-one in tokenizer\" && git push origin main",
  "x = a && b || !c; y = (p != q) <= (r == s); z = ~t ^ u | v & w;",
  "a += 1; b -= 2; c *= 3; d /= 4; e %= 5; f **= 6; g //= 7;",
);

// ---------------------------------------------------------------- whitespace runs
add(
  "whitespace",
  "  ",
  "   ",
  "    ",
  "        ",
  " ".repeat(16),
  " ".repeat(33),
  " ".repeat(100),
  " a",
  "a ",
  "  a",
  "a  ",
  " a ",
  "  a  ",
  "   leading spaces",
  "trailing spaces   ",
  "a b",
  "a  b",
  "a   b",
  "a    b",
  "a     b c  d   e    f",
  " Hello",
  "  Hello",
  "Hello ",
  " Hello world ",
);

// ---------------------------------------------------------------- tabs and newlines
add(
  "tabs_newlines",
  "\t",
  "\t\t",
  "a\tb",
  "a\t\tb",
  "\ta",
  "a\t",
  "\n\n",
  "\n\n\n",
  "a\nb",
  "a\n\nb",
  "a\n\n\nb",
  "\na",
  "a\n",
  "\r\n",
  "a\r\nb",
  "a\r\n\r\nb",
  "\r",
  "a\rb",
  " \n\t ",
  "a \n\t b",
  "line one\nline two\r\nline three\rline four",
  "  \n  \n  ",
  "\t \t \n \n",
  "end with newline\n",
  "end with spaces and newline  \n",
  "\n\n\n\n\n\n\n\n\n\n\n\n",
  "para one.\n\npara two.\n\n\npara three.",
  "a \nb",
  "a\n b",
  "a \n b",
);

// ---------------------------------------------------------------- CJK
add(
  "cjk",
  "你好",
  "你好，世界！",
  "我爱自然语言处理。",
  "中华人民共和国成立于1949年。",
  "这是一个测试句子，用于检查分词器的行为。",
  "今日は良い天気ですね。",
  "こんにちは",
  "カタカナとひらがなと漢字",
  "東京都渋谷区",
  "ｶﾀｶﾅ（半角）",
  "안녕하세요",
  "한국어 문장을 토큰화합니다.",
  "서울특별시",
  "Hello 你好 こんにちは 안녕하세요 world",
  "中文English混合Mixed文本",
  "１２３ＡＢＣ　全角スペース",
  "「引用」『二重引用』【括弧】",
  "龘靐齉爩",
);

// ---------------------------------------------------------------- emoji
add(
  "emoji",
  "😀",
  "😀😃😄😁",
  "I love 🍕 and 🍣!",
  "👨‍👩‍👧‍👦",
  "family: 👨‍👩‍👧‍👦 done",
  "👍🏻👍🏼👍🏽👍🏾👍🏿",
  "👋🏽 hi",
  "🇺🇸🇯🇵🇩🇪🇫🇷",
  "🏳️‍🌈 🏴‍☠️",
  "❤️ ❤ ♥",
  "☺️",
  "🧑‍💻 coding",
  "1️⃣ 2️⃣ #️⃣",
  "🫠🫡🫶",
  "emoji🙂without🙂spaces",
  "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
);

// ---------------------------------------------------------------- combining marks, scripts, normalization
add(
  "combining",
  "e\u0301",
  "\u00e9",
  "cafe\u0301",
  "caf\u00e9",
  "re\u0301sume\u0301 vs r\u00e9sum\u00e9",
  "A\u030a vs \u00c5 vs \u212b",
  "n\u0303",
  "o\u0308\u0304",
  "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u036b\u0357\u0334\u0362\u0335\u031c\u0330\u0354L\u0368\u0367\u0369\u0358\u0320G\u0311\u0357\u030e\u0305\u035b\u0341\u0334\u033b\u0348\u034d\u0354\u0339O",
  "\u1100\u1161\u11a8 vs \uac01",
  "\ufb01 ligature fi",
  "\u212a Kelvin sign vs K",
  "नमस्ते दुनिया",
  "हिन्दी में लिखा गया वाक्य।",
  "مرحبا بالعالم",
  "السلام عليكم ورحمة الله",
  "שלום עולם",
  "עִבְרִית עם ניקוד",
  "สวัสดีครับ",
  "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
  "Здравствуй, мир!",
  "Γειά σου Κόσμε",
  "Ελληνικά: αβγδεζηθικλμνξοπρστυφχψω",
  "Tiếng Việt có dấu",
  "ქართული ენა",
  "Հայերեն",
  "ᚠᚢᚦᚨᚱᚲ",
  "mixed: English, русский, 中文, العربية, עברית",
  "\u200f\u200eRTL and LTR marks",
);

// ---------------------------------------------------------------- rare code points and controls
for (let c = 0; c <= 0x1f; c++) {
  add("controls", `a${String.fromCharCode(c)}b`);
}
add(
  "controls",
  "\u0000",
  "\u0000\u0000\u0000",
  "\u001b[31mred\u001b[0m",
  "\u0007bell",
  "x\u007fy",
  "\u007f",
  "a\u0085b",
  "\u0085",
  "a\u000bb\u000cc",
);
add(
  "rare",
  "\ufffd",
  "bad \ufffd char",
  "\ue000",
  "private \ue000\uf8ff use",
  "\u{10fffd}",
  "plane16 \u{10fffd} end",
  "\ufffe",
  "\uffff",
  "noncharacters \ufffe\uffff\u{1fffe}",
  "\u{1d400}\u{1d401}\u{1d402} \u{1d538}\u{1d539} \u{1d4d0}",
  "\u{1d49c}\u{1d4b7}\u{1d4c3}",
  "zero\u200bwidth\u200cjoiner\u200dtest",
  "\ufeffBOM at start",
  "soft\u00adhyphen",
  "line\u2028separator\u2029paragraph",
  "ideographic\u3000space",
  "em\u2003space thin\u2009space",
  "\u{e0001}\u{e0020}tag chars",
  "\u{1f600}\u{10000}\u{1d11e}",
  "\u0300 leading combining mark",
);

// ---------------------------------------------------------------- numbers
add(
  "numbers",
  "1",
  "12",
  "123",
  "1234",
  "12345",
  "1234567",
  "1234567890123456789",
  "3.14159",
  "-42",
  "+7",
  "1e10",
  "6.022e23",
  "0.000001",
  "1,000,000",
  "1_000_000",
  "0x1F 0b1010 0o755",
  "+1 (555) 123-4567",
  "+44 20 7946 0958",
  "2024-01-15T12:34:56Z",
  "12:30pm",
  "$1,234.56",
  "€99,99",
  "50%",
  "3/4 and 1/2",
  "v1.2.3-rc.4",
  "192.168.0.1",
  "١٢٣٤٥ (Arabic-Indic digits)",
  "०१२३ (Devanagari digits)",
  "²³¹ ½ ¾ Ⅻ ⑤",
  "1+1=2",
  "year 1999 and 2000 and 20001",
);

// ---------------------------------------------------------------- punctuation clusters
add(
  "punct",
  "!!!",
  "???",
  "?!?!",
  "...",
  "…",
  "--",
  "---",
  "—",
  "!@#$%^&*()_+-=[]{}|;':\",./<>?`~",
  "((()))",
  "[[[]]]",
  "{{{}}}",
  "<<<>>>",
  "====",
  "=".repeat(64),
  "-".repeat(80),
  "*".repeat(40),
  "#".repeat(10) + " Heading",
  "## Markdown heading\n\n- item one\n- item two\n\n**bold** _italic_ `code`",
  "```python\nprint(1)\n```",
  "a.b,c;d:e!f?g",
  "\"\"\"docstring\"\"\"",
  "¿Qué? ¡Sí!",
  "«guillemets» „Anführungszeichen“",
  "、。・「」",
);

// ---------------------------------------------------------------- URLs, paths, emails
add(
  "urls",
  "https://www.example.com",
  "https://example.com/path/to/page?query=1&other=two#fragment",
  "Visit http://localhost:8080/v1/chat/completions for the API.",
  "mailto:someone@example.org",
  "ftp://ftp.example.net/pub/file.tar.gz",
  "/usr/local/bin/tpserve --model /models/llama --tp 8",
  "C:\\Users\\name\\Documents\\file.txt",
  "https://en.wikipedia.org/wiki/Byte_pair_encoding",
  "user.name+tag@sub.domain.co.uk",
);

// ---------------------------------------------------------------- special-token text
add(
  "special_text",
  "<s>",
  "</s>",
  "<unk>",
  "<s>Hello",
  "<s> Hello",
  "Hello</s>",
  "Hello </s>",
  "Hello <s> world",
  "Hello<s>world",
  "<s><s></s></s>",
  "The <unk> token is unknown.",
  "<|begin_of_text|>",
  "<|end_of_text|>",
  "<|eot_id|>",
  "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
  "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>",
  "text before <|eot_id|> text after",
  "<|reserved_special_token_0|>",
  "<|reserved_special_token_250|>",
  "<|im_start|>user",
  "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
  "<|im_end|>",
  "<|endoftext|>",
  "End of doc.<|endoftext|>Start of next.",
  "<think>",
  "</think>",
  "<think>\nreasoning here\n</think>\n\nanswer",
  "Let me <think> about it </think> ok",
  "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
  "<|vision_start|><|image_pad|><|vision_end|>",
  "<|im_start",
  "im_start|>",
  "< s >",
  "<S>",
  "<|EOT_ID|>",
  "<|eot_id|><|eot_id|>",
  "  <|eot_id|>  ",
  "\n<|im_start|>\n",
  "<0x0A>",
  "\u2581",
  "\u2581\u2581 metaspace\u2581char",
  "▁Hello",
);

// ---------------------------------------------------------------- long repetitive
add(
  "repetitive",
  "a".repeat(200),
  "ab".repeat(150),
  "hello ".repeat(60),
  "\n".repeat(64),
  "\t".repeat(32),
  "😀".repeat(30),
  "中".repeat(100),
  "1".repeat(100),
);

// ---------------------------------------------------------------- long mixed paragraphs (1-3 KB), seeded
const FRAGMENTS = [
  "The model was evaluated on a held-out set of documents.",
  "Results improved by 12.5% after tuning the learning rate to 3e-4.",
  "She didn't expect the server to return HTTP 503 so often.",
  "int x = 42; // the answer",
  "def f(a, b):\n    return a + b",
  "{\"key\": \"value\", \"n\": 17}",
  "机器学习模型需要大量的数据。",
  "東京で会いましょう。",
  "데이터가 많을수록 좋습니다.",
  "🚀 launch day! 🎉🎉",
  "👩‍🔬 science",
  "Привет, как дела?",
  "مرحبا",
  "naïve café résumé",
  "x\u0301y\u0308z",
  "    indented line",
  "\ttabbed line",
  "URL: https://example.com/a?b=c",
  "Phone: +1 (800) 555-0199",
  "THEY'LL SEE IT'S DONE.",
  "I'm sure we'll manage; you've done it before.",
  "Numbers: 1 22 333 4444 55555 666666",
  "π ≈ 3.14159, e ≈ 2.71828",
  "∑_{i=1}^{n} i = n(n+1)/2",
  "<s> looks like a special token but this is text",
  "…and then — suddenly — silence.",
];
function paragraph(seed, minBytes, maxBytes) {
  const rnd = mulberry32(seed);
  const enc = new TextEncoder();
  const target = minBytes + Math.floor(rnd() * (maxBytes - minBytes));
  let s = "";
  while (enc.encode(s).length < target) {
    const frag = FRAGMENTS[Math.floor(rnd() * FRAGMENTS.length)];
    const r = rnd();
    const sep = s.length === 0 ? "" : r < 0.6 ? " " : r < 0.8 ? "\n" : r < 0.92 ? "\n\n" : "  ";
    s += sep + frag;
  }
  return s;
}
add(
  "long_mixed",
  paragraph(1, 1000, 1200),
  paragraph(2, 1400, 1600),
  paragraph(3, 1900, 2100),
  paragraph(4, 2400, 2600),
  paragraph(5, 2800, 3000),
  paragraph(6, 1000, 3000),
);
{
  // A long English-only paragraph (~1.5 KB) built from the prose entries above.
  const prose = entries.filter((e) => e.category === "prose").map((e) => e.text);
  let s = "";
  for (let i = 0; s.length < 1500; i++) s += (s ? " " : "") + prose[i % prose.length];
  add("long_prose", s);
}

export { entries };
export const corpus = entries.map((e) => e.text);
export const categories = entries.map((e) => e.category);
export default corpus;

if (import.meta.url === `file://${process.argv[1]}`) {
  const counts = {};
  for (const c of categories) counts[c] = (counts[c] ?? 0) + 1;
  console.log(JSON.stringify({ total: corpus.length, counts }, null, 1));
}
