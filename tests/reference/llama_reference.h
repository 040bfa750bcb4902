// An independent float64 reference of the HF Llama-family forward pass (Llama, Mistral,
// Qwen2 bias, Qwen3 qk-norm, llama3 rope scaling), for tests only. It shares no code with the
// engine: its own safetensors and config.json parsing, its own math, everything in double,
// written from the Hugging Face modeling_llama / modeling_qwen3 definitions.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace tpserve::testing {

class ReferenceLlama {
 public:
  explicit ReferenceLlama(const std::string& model_dir);  // throws std::runtime_error

  // Appends one token at the next position and returns the full-vocabulary logits.
  std::vector<double> Step(int32_t token);
  // Greedy continuation: feeds prompt, then generates n tokens (argmax, lowest index on ties).
  // If margins is non-null it receives (top1 - top2) of each step's logits.
  std::vector<int32_t> Greedy(const std::vector<int32_t>& prompt, int n,
                              std::vector<double>* margins = nullptr);
  void Reset() {
    pos_ = 0;
    k_cache_.assign(k_cache_.size(), {});
    v_cache_.assign(v_cache_.size(), {});
  }
  int vocab_size() const { return vocab_; }

 private:
  struct Tensor {
    std::vector<int64_t> shape;
    std::vector<double> data;
  };
  const Tensor& W(const std::string& name) const;
  std::vector<double> Linear(const std::string& name, const std::vector<double>& x) const;
  std::vector<double> Norm(const std::vector<double>& x, const std::vector<double>& w) const;

  std::map<std::string, Tensor> tensors_;
  int hidden_ = 0, layers_ = 0, heads_ = 0, kv_heads_ = 0, head_dim_ = 0, vocab_ = 0, ffn_ = 0;
  double eps_ = 1e-6, theta_ = 10000.0;
  bool tied_ = false, bias_ = false, qk_norm_ = false;
  std::vector<double> inv_freq_;
  int pos_ = 0;
  // [layer] -> per position: (kv_heads * head_dim)
  std::vector<std::vector<std::vector<double>>> k_cache_, v_cache_;
};

}  // namespace tpserve::testing
