// --prompt-ids of `tpserve run` and `tpserve-cli generate`: comma-separated token ids, each a
// non-negative integer. (CLI11 alone read an empty list, or an empty item, as token 0.)
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
      ->check(CLI::Validator(
          [](std::string& s) -> std::string {
            const bool digits =
                !s.empty() && s.size() <= 10 && s.find_first_not_of("0123456789") == std::string::npos;
            if (digits && std::stoll(s) <= std::numeric_limits<int32_t>::max()) return "";
            return "a token id must be a non-negative integer, got '" + s + "'";
          },
          "ID,..."));
}

}  // namespace tpserve
