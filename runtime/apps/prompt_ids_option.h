// --prompt-ids of `tpserve run` and `tpserve-cli generate`: comma-separated token ids, each a
// non-negative decimal integer. (CLI11 alone read an empty list as token 0, and a leading zero as
// an octal number: 010 as 8.)
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace tpserve {

inline CLI::Option* AddPromptIdsOption(CLI::App* app, std::vector<int32_t>* ids) {
  return app->add_option("--prompt-ids", *ids, "Prompt token ids, e.g. 1,2,3")
      ->delimiter(',')
      ->transform(CLI::Validator(
          [](std::string& s) -> std::string {
            const size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
            const std::string id = b == std::string::npos ? "" : s.substr(b, e - b + 1);
            const bool digits =
                !id.empty() && id.size() <= 10 && id.find_first_not_of("0123456789") == std::string::npos;
            if (!digits || std::stoll(id) > std::numeric_limits<int32_t>::max()) {
              return "a token id must be a non-negative integer, got '" + s + "'";
            }
            s = std::to_string(std::stoll(id));  // decimal, without the leading zeros
            return "";
          },
          "ID,..."));
}

}  // namespace tpserve
