#include "reference/llama_reference.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace tpserve::testing {
namespace {

using nlohmann::json;

double HalfToDouble(uint16_t h) {
  const int sign = (h >> 15) & 1, exp = (h >> 10) & 31, mant = h & 1023;
  double v;
  if (exp == 0) {
    v = std::ldexp(mant, -24);
  } else if (exp == 31) {
    v = mant ? NAN : INFINITY;
  } else {
    v = std::ldexp(1024 + mant, exp - 25);
  }
  return sign ? -v : v;
}

double Bf16ToDouble(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void ReadFile(const std::filesystem::path& file, std::map<std::string, std::vector<int64_t>>& shapes,
              std::map<std::string, std::vector<double>>& data) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error("reference: cannot open " + file.string());
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  std::string header(n, '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  const json h = json::parse(header);
  const std::streamoff base = 8 + static_cast<std::streamoff>(n);
  for (const auto& [name, e] : h.items()) {
    if (name == "__metadata__") continue;
    const std::string dtype = e["dtype"];
    const auto offs = e["data_offsets"].get<std::vector<uint64_t>>();
    std::vector<char> raw(offs[1] - offs[0]);
    in.seekg(base + static_cast<std::streamoff>(offs[0]));
    in.read(raw.data(), static_cast<std::streamsize>(raw.size()));
    std::vector<double> v;
    if (dtype == "F32") {
      for (size_t i = 0; i < raw.size(); i += 4) {
        float f;
        std::memcpy(&f, &raw[i], 4);
        v.push_back(f);
      }
    } else if (dtype == "F16" || dtype == "BF16") {
      for (size_t i = 0; i < raw.size(); i += 2) {
        uint16_t u;
        std::memcpy(&u, &raw[i], 2);
        v.push_back(dtype == "F16" ? HalfToDouble(u) : Bf16ToDouble(u));
      }
    } else {
      throw std::runtime_error("reference: unsupported dtype " + dtype);
    }
    shapes[name] = e["shape"].get<std::vector<int64_t>>();
    data[name] = std::move(v);
  }
}

}  // namespace

ReferenceLlama::ReferenceLlama(const std::string& dir) {
  namespace fs = std::filesystem;
  json cfg;
  std::ifstream(fs::path(dir) / "config.json") >> cfg;
  hidden_ = cfg["hidden_size"];
  layers_ = cfg["num_hidden_layers"];
  heads_ = cfg["num_attention_heads"];
  kv_heads_ = cfg.value("num_key_value_heads", heads_);
  head_dim_ = cfg.contains("head_dim") ? cfg["head_dim"].get<int>() : hidden_ / heads_;
  vocab_ = cfg["vocab_size"];
  ffn_ = cfg["intermediate_size"];
  eps_ = cfg.value("rms_norm_eps", 1e-6);
  theta_ = cfg.value("rope_theta", 10000.0);
  tied_ = cfg.value("tie_word_embeddings", false);
  const std::string type = cfg.value("model_type", "llama");
  bias_ = cfg.value("attention_bias", type == "qwen2");
  qk_norm_ = type == "qwen3";

  // inv_freq[i] = theta^(-2i/d); llama3 rope_scaling per HF _compute_llama3_parameters.
  for (int i = 0; i < head_dim_ / 2; ++i) inv_freq_.push_back(std::pow(theta_, -2.0 * i / head_dim_));
  if (cfg.contains("rope_scaling") && !cfg["rope_scaling"].is_null()) {
    const json& rs = cfg["rope_scaling"];
    const std::string rt = rs.value("rope_type", rs.value("type", std::string("default")));
    if (rt == "llama3") {
      const double factor = rs["factor"], lo = rs["low_freq_factor"], hi = rs["high_freq_factor"];
      const double old = rs["original_max_position_embeddings"];
      for (double& f : inv_freq_) {
        const double wl = 2 * M_PI / f;
        if (wl > old / lo) {
          f = f / factor;
        } else if (wl >= old / hi) {
          const double s = (old / wl - lo) / (hi - lo);
          f = (1 - s) * f / factor + s * f;
        }
      }
    } else if (rt == "linear") {
      for (double& f : inv_freq_) f /= rs["factor"].get<double>();
    }
  }

  std::map<std::string, std::vector<int64_t>> shapes;
  std::map<std::string, std::vector<double>> data;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    json j;
    std::ifstream(index) >> j;
    std::map<std::string, bool> files;
    for (const auto& [name, file] : j["weight_map"].items()) files[file.get<std::string>()] = true;
    for (const auto& [file, unused] : files) ReadFile(fs::path(dir) / file, shapes, data);
  } else {
    ReadFile(fs::path(dir) / "model.safetensors", shapes, data);
  }
  for (auto& [name, v] : data) tensors_[name] = Tensor{shapes[name], std::move(v)};
  k_cache_.resize(layers_);
  v_cache_.resize(layers_);
}

const ReferenceLlama::Tensor& ReferenceLlama::W(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::runtime_error("reference: missing tensor " + name);
  return it->second;
}

// y = W x (+ b), W: (out, in)
std::vector<double> ReferenceLlama::Linear(const std::string& name, const std::vector<double>& x) const {
  const Tensor& w = W(name + ".weight");
  const int64_t out = w.shape[0], in = w.shape[1];
  std::vector<double> y(out, 0.0);
  for (int64_t o = 0; o < out; ++o) {
    double s = 0;
    for (int64_t i = 0; i < in; ++i) s += w.data[o * in + i] * x[i];
    y[o] = s;
  }
  if (auto it = tensors_.find(name + ".bias"); it != tensors_.end()) {
    for (int64_t o = 0; o < out; ++o) y[o] += it->second.data[o];
  }
  return y;
}

std::vector<double> ReferenceLlama::Norm(const std::vector<double>& x, const std::vector<double>& w) const {
  double ms = 0;
  for (double v : x) ms += v * v;
  ms /= static_cast<double>(x.size());
  const double r = 1.0 / std::sqrt(ms + eps_);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * w[i];
  return y;
}

std::vector<double> ReferenceLlama::Step(int32_t token) {
  const Tensor& emb = W("model.embed_tokens.weight");
  std::vector<double> x(emb.data.begin() + static_cast<int64_t>(token) * hidden_,
                        emb.data.begin() + static_cast<int64_t>(token + 1) * hidden_);
  const int hd = head_dim_, half = hd / 2, group = heads_ / kv_heads_;
  auto rope = [&](double* v) {  // rotate_half: out = v*cos + rotate_half(v)*sin
    for (int i = 0; i < half; ++i) {
      const double a = pos_ * inv_freq_[i], c = std::cos(a), s = std::sin(a);
      const double x1 = v[i], x2 = v[i + half];
      v[i] = x1 * c - x2 * s;
      v[i + half] = x2 * c + x1 * s;
    }
  };
  for (int l = 0; l < layers_; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<double> h = Norm(x, W(p + "input_layernorm.weight").data);
    std::vector<double> q = Linear(p + "self_attn.q_proj", h);
    std::vector<double> k = Linear(p + "self_attn.k_proj", h);
    std::vector<double> v = Linear(p + "self_attn.v_proj", h);
    for (int hh = 0; hh < heads_; ++hh) {
      if (qk_norm_) {
        std::vector<double> seg(q.begin() + hh * hd, q.begin() + (hh + 1) * hd);
        seg = Norm(seg, W(p + "self_attn.q_norm.weight").data);
        std::copy(seg.begin(), seg.end(), q.begin() + hh * hd);
      }
      rope(&q[hh * hd]);
    }
    for (int hh = 0; hh < kv_heads_; ++hh) {
      if (qk_norm_) {
        std::vector<double> seg(k.begin() + hh * hd, k.begin() + (hh + 1) * hd);
        seg = Norm(seg, W(p + "self_attn.k_norm.weight").data);
        std::copy(seg.begin(), seg.end(), k.begin() + hh * hd);
      }
      rope(&k[hh * hd]);
    }
    k_cache_[l].push_back(k);
    v_cache_[l].push_back(v);
    std::vector<double> attn(heads_ * hd, 0.0);
    for (int hh = 0; hh < heads_; ++hh) {
      const int kvh = hh / group;
      std::vector<double> scores(pos_ + 1);
      double mx = -INFINITY;
      for (int t = 0; t <= pos_; ++t) {
        double s = 0;
        for (int i = 0; i < hd; ++i) s += q[hh * hd + i] * k_cache_[l][t][kvh * hd + i];
        scores[t] = s / std::sqrt(static_cast<double>(hd));
        mx = std::max(mx, scores[t]);
      }
      double z = 0;
      for (double& s : scores) z += (s = std::exp(s - mx));
      for (int t = 0; t <= pos_; ++t) {
        for (int i = 0; i < hd; ++i) attn[hh * hd + i] += scores[t] / z * v_cache_[l][t][kvh * hd + i];
      }
    }
    std::vector<double> o = Linear(p + "self_attn.o_proj", attn);
    for (int i = 0; i < hidden_; ++i) x[i] += o[i];
    h = Norm(x, W(p + "post_attention_layernorm.weight").data);
    std::vector<double> g = Linear(p + "mlp.gate_proj", h), u = Linear(p + "mlp.up_proj", h);
    for (int i = 0; i < ffn_; ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
    std::vector<double> d = Linear(p + "mlp.down_proj", g);
    for (int i = 0; i < hidden_; ++i) x[i] += d[i];
  }
  ++pos_;
  std::vector<double> h = Norm(x, W("model.norm.weight").data);
  return Linear(tied_ ? "model.embed_tokens" : "lm_head", h);
}

std::vector<int32_t> ReferenceLlama::Greedy(const std::vector<int32_t>& prompt, int n,
                                            std::vector<double>* margins) {
  std::vector<double> logits;
  for (int32_t t : prompt) logits = Step(t);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    int best = 0;
    for (int j = 1; j < vocab_; ++j) {
      if (logits[j] > logits[best]) best = j;
    }
    if (margins) {
      double second = -INFINITY;
      for (int j = 0; j < vocab_; ++j) {
        if (j != best) second = std::max(second, logits[j]);
      }
      margins->push_back(logits[best] - second);
    }
    out.push_back(best);
    if (i + 1 < n) logits = Step(best);
  }
  return out;
}

}  // namespace tpserve::testing
