// UTF-8 helpers shared by the tokenizers: validation, lossy decoding of byte strings, and the
// GPT-2 byte <-> character map used by byte-level BPE.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace tpserve::utf8 {

// Length of the valid UTF-8 sequence starting at s[i], or 0 if none starts there (Unicode's
// well-formed table: no overlongs, no surrogates, nothing above U+10FFFF).
int ValidSequenceLength(std::string_view s, size_t i);
// Index of the first byte that starts no valid sequence, or npos when all of s is valid.
size_t FirstInvalid(std::string_view s);
// Replaces every maximal ill-formed subpart with U+FFFD (as WHATWG TextDecoder and Rust's
// from_utf8_lossy do).
std::string Lossy(std::string_view bytes);
// Appends the UTF-8 encoding of code point cp.
void Append(std::string* out, uint32_t cp);
// Byte length of the character whose lead byte is c (1 for bytes that cannot lead).
int LeadLength(unsigned char c);

// Hash for unordered_map<std::string, V, StringHash, std::equal_to<>>: lookups by string_view
// without building a std::string (the BPE loops look up every character and pair).
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// SentencePiece-style vocabularies whose pieces never hold a whitespace mark after another
// character: no merge can cross the start of a "▁word", so BPE may run word by word (and cache).
bool MarkOnlyLeads(std::string_view piece, std::string_view mark);
// Calls fn(word) for the pieces of s cut before every mark that follows a non-mark character.
template <typename Fn>
void ForEachMarkWord(std::string_view s, std::string_view mark, Fn&& fn) {
  size_t begin = 0;
  for (size_t p = s.find(mark, 1); p != std::string_view::npos; p = s.find(mark, p + 1)) {
    if (p >= mark.size() && s.compare(p - mark.size(), mark.size(), mark) == 0) continue;  // a run of marks
    fn(s.substr(begin, p - begin));
    begin = p;
  }
  if (begin < s.size()) fn(s.substr(begin));
}

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// GPT-2's reversible byte -> printable character map (bytes_to_unicode).
struct ByteLevelMap {
  ByteLevelMap();
  std::array<std::string, 256> byte_to_char;  // UTF-8 of the mapped character
  // Inverse, indexed by code point (< 324); -1 where a code point is not a mapped byte.
  std::array<int16_t, 324> char_to_byte;
};
const ByteLevelMap& GetByteLevelMap();

}  // namespace tpserve::utf8
