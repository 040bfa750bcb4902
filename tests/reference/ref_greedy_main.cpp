// Prints the float64 reference's greedy continuation of a prompt (comma-separated ids), and the
// smallest top-1/top-2 logit margin on stderr. Used to produce and re-check the recorded
// sequences of the tests: ref_greedy MODEL_DIR N [prompt ids...]
#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "reference/llama_reference.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: ref_greedy MODEL_DIR N [prompt ids...]\n");
    return 2;
  }
  std::vector<int32_t> prompt;
  for (int i = 3; i < argc; ++i) prompt.push_back(std::atoi(argv[i]));
  if (prompt.empty()) prompt.push_back(1);
  tpserve::testing::ReferenceLlama ref(argv[1]);
  std::vector<double> margins;
  const auto ids = ref.Greedy(prompt, std::atoi(argv[2]), &margins);
  for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? ", " : "", ids[i]);
  std::printf("\n");
  std::fprintf(stderr, "min margin %.3g\n", *std::min_element(margins.begin(), margins.end()));
  return 0;
}
