// Pieces shared by the tokenizer implementations (not part of the Tokenizer interface).
#pragma once

#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "model/tokenizer/utf8.h"

namespace tpserve::tokenizer_internal {

// Parses a JSON file; errors name the file and say what to do about a broken one.
Result<nlohmann::json> ReadJsonFile(const std::string& path, const std::string& fix);

// A bounded, thread-safe cache of BPE results per word (words up to kMaxWord bytes; cleared when
// full): text repeats words, and Encode runs on many gateway threads at once.
class WordCache {
 public:
  static constexpr size_t kMaxWord = 128, kMaxEntries = size_t{1} << 17;
  // Appends the cached ids of `word` to *out and returns true, or returns false.
  bool Lookup(std::string_view word, std::vector<int32_t>* out) const;
  void Store(std::string_view word, const int32_t* ids, size_t n) const;  // a cache: logically const

 private:
  mutable std::mutex mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, utf8::StringHash, std::equal_to<>> map_;
};

}  // namespace tpserve::tokenizer_internal
