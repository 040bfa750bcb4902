#include "engine/step_plan.h"

#include <cstring>
#include <type_traits>

namespace tpserve {
namespace {

// Plain little-endian field stream; both ends are the same binary on the same kind of host.
class Writer {
 public:
  template <typename T>
  void Put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    out.insert(out.end(), p, p + sizeof(T));
  }
  template <typename T>
  void PutVector(const std::vector<T>& v) {
    Put<uint64_t>(v.size());
    for (const T& x : v) Put(x);
  }
  std::vector<uint8_t> out;
};

class Reader {
 public:
  explicit Reader(const std::vector<uint8_t>& b) : b_(b) {}
  template <typename T>
  bool Get(T* v) {
    if (pos_ + sizeof(T) > b_.size()) return false;
    std::memcpy(v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  template <typename T>
  bool GetVector(std::vector<T>* v) {
    uint64_t n = 0;
    if (!Get(&n) || n > (b_.size() - pos_) / sizeof(T)) return false;
    v->resize(n);
    for (auto& x : *v) Get(&x);
    return true;
  }
  bool done() const { return pos_ == b_.size(); }

 private:
  const std::vector<uint8_t>& b_;
  size_t pos_ = 0;
};

}  // namespace

std::vector<uint8_t> SerializeStepPlan(const StepPlan& plan) {
  Writer w;
  w.Put<uint8_t>(plan.shutdown);
  w.PutVector(plan.cancel);
  w.Put<uint64_t>(plan.add.size());
  for (const RequestSpec& r : plan.add) {
    w.Put(r.id);
    w.PutVector(r.prompt);
    w.Put(r.sampling);
    w.Put(r.max_new_tokens);
    w.Put<uint8_t>(r.ignore_eos);
    w.Put<uint8_t>(r.logprobs);
    w.PutVector(r.stop_token_ids);
  }
  return std::move(w.out);
}

Result<StepPlan> DeserializeStepPlan(const std::vector<uint8_t>& bytes) {
  static_assert(std::is_trivially_copyable_v<SamplingParams>, "SamplingParams is sent as raw bytes");
  Reader r(bytes);
  StepPlan plan;
  uint8_t flag = 0;
  uint64_t n = 0;
  bool ok = r.Get(&flag) && r.GetVector(&plan.cancel) && r.Get(&n);
  plan.shutdown = flag != 0;
  for (uint64_t i = 0; ok && i < n; ++i) {
    RequestSpec s;
    uint8_t ignore_eos = 0, logprobs = 0;
    ok = r.Get(&s.id) && r.GetVector(&s.prompt) && r.Get(&s.sampling) && r.Get(&s.max_new_tokens) &&
         r.Get(&ignore_eos) && r.Get(&logprobs) && r.GetVector(&s.stop_token_ids);
    s.ignore_eos = ignore_eos != 0;
    s.logprobs = logprobs != 0;
    plan.add.push_back(std::move(s));
  }
  if (!ok || !r.done()) return TPS_ERROR("malformed step plan ({} bytes)", bytes.size());
  return plan;
}

}  // namespace tpserve
