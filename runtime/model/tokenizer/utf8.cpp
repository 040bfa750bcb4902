#include "model/tokenizer/utf8.h"

namespace tpserve::utf8 {

int LeadLength(unsigned char c) {
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) return 3;
  if (c >= 0xF0 && c <= 0xF4) return 4;
  return 1;
}

// Returns how many bytes of a well-formed prefix start at s[i]: the full length when valid,
// otherwise the length of the maximal subpart (>= 1) negated.
static int Scan(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return 1;
  int len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int k = 1; k < len; ++k) {
    if (i + k >= s.size()) return -k;
    const auto b = static_cast<unsigned char>(s[i + k]);
    const unsigned char klo = k == 1 ? lo : 0x80, khi = k == 1 ? hi : 0xBF;
    if (b < klo || b > khi) return -k;
  }
  return len;
}

int ValidSequenceLength(std::string_view s, size_t i) {
  const int n = Scan(s, i);
  return n > 0 ? n : 0;
}

size_t FirstInvalid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const int n = Scan(s, i);
    if (n < 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

std::string Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const int n = Scan(bytes, i);
    if (n > 0) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      out.append(kReplacementChar);
      i += -n;
    }
  }
  return out;
}

void Append(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool MarkOnlyLeads(std::string_view piece, std::string_view mark) {
  for (size_t p = piece.find(mark, 1); p != std::string_view::npos; p = piece.find(mark, p + 1)) {
    if (p < mark.size() || piece.compare(p - mark.size(), mark.size(), mark) != 0) return false;
  }
  return true;
}

ByteLevelMap::ByteLevelMap() {
  char_to_byte.fill(-1);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const uint32_t cp = printable ? b : 256 + extra++;
    Append(&byte_to_char[b], cp);
    char_to_byte[cp] = static_cast<int16_t>(b);
  }
}

const ByteLevelMap& GetByteLevelMap() {
  static const ByteLevelMap map;
  return map;
}

}  // namespace tpserve::utf8
