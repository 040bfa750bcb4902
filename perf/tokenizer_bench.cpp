// Encode throughput of tpserve's tokenizer, mirroring tools/tokenizer-reference/bench_encode.mjs
// exactly (split on "\n\n", each piece encoded without special tokens, one warm-up pass, then
// one timed pass), so perf/tokenizer_bench.sh can set the two side by side in one run.
//   tokenizer_bench FILE TOKENIZER_PATH NAME   -> one JSON line
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "model/tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: tokenizer_bench FILE TOKENIZER_PATH NAME\n";
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();
  std::vector<std::string> pieces;
  for (size_t pos = 0;;) {
    const size_t hit = text.find("\n\n", pos);
    pieces.push_back(text.substr(pos, hit == std::string::npos ? std::string::npos : hit - pos));
    if (hit == std::string::npos) break;
    pos = hit + 2;
  }
  auto tok = tpserve::LoadTokenizer(argv[2]);
  if (!tok.ok()) {
    std::cerr << tok.status().message() << "\n";
    return 1;
  }
  auto pass = [&] {
    size_t tokens = 0;
    for (const std::string& p : pieces) tokens += (*tok)->Encode(p, false)->size();
    return tokens;
  };
  pass();  // warm-up (fills the BPE cache, as the reference's warm pass does)
  const auto t0 = std::chrono::steady_clock::now();
  const size_t tokens = pass();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout
      << nlohmann::json{{"tokenizer", argv[3]}, {"implementation", "tpserve"},       {"bytes", text.size()},
                        {"seconds", s},         {"mb_per_s", text.size() / 1e6 / s}, {"tokens", tokens}}
             .dump()
      << std::endl;
  return 0;
}
