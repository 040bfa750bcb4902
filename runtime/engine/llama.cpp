#include "engine/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace tpserve {

namespace k = kernels;

namespace {
// Rows per pool chunk for the per-row work (norms, RoPE, KV writes): a few, so a decode batch of
// a handful of rows stays on one thread.
constexpr int kRowGrain = 4;

// v's storage for at least `size` elements: grown, never shrunk (see LlamaModel::Scratch).
float* Grow(kernels::AlignedVector<float>& v, size_t size) {
  if (v.size() < size) v.resize(size);
  return v.data();
}
}  // namespace

LlamaModel::LlamaModel(ModelConfig config, ModelWeights weights, Communicator& tp)
    : config_(std::move(config)), weights_(std::move(weights)), tp_(tp), inv_freq_(RopeInvFreq(config_)) {
  PackWeightsForGemm(&weights_, /*pack=*/true);
}

void LlamaModel::SetDeterministic(bool on) {
  if (on != deterministic_) PackWeightsForGemm(&weights_, /*pack=*/!on);
  deterministic_ = on;
  tp_.SetDeterministic(on);
}

void LlamaModel::RopeTable(int pos, float* cos_sin) const {
  const int half = config_.head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const double angle = pos * inv_freq_[i];
    cos_sin[i] = static_cast<float>(std::cos(angle));
    cos_sin[half + i] = static_cast<float>(std::sin(angle));
  }
}

Status LlamaModel::Embed(const int32_t* ids, int n, float* x) {
  const int hidden = config_.hidden_size;
  const HostTensor& e = weights_.embed;
  const Range vr = weights_.shard.embed_vocab;
  std::memset(x, 0, sizeof(float) * n * hidden);
  for (int t = 0; t < n; ++t) {
    if (ids[t] < 0 || ids[t] >= config_.vocab_size) {
      return TPS_ERROR("token id {} is outside the vocabulary [0, {})", ids[t], config_.vocab_size);
    }
    if (ids[t] >= vr.begin && ids[t] < vr.end)
      e.RowToF32(ids[t] - vr.begin, x + static_cast<size_t>(t) * hidden);
  }
  // Exactly one rank holds each row and the others add zeros, so the sum is exact.
  return tp_.AllReduceSum(x, static_cast<size_t>(n) * hidden);
}

void LlamaModel::Linear(const HostTensor& w, const float* x, int n, float* y) const {
  if (w.packed() != nullptr) return k::MatmulPacked(x, n, *w.packed(), y);
  k::Matmul(x, n, w.data(), w.dtype(), static_cast<int>(w.rows()), static_cast<int>(w.cols()), y,
            w.row_scales(), deterministic_);
}

Status LlamaModel::Attention(int layer, const Batch& batch, KvCachePool& pool, const float* h, float* out) {
  const int n = batch.rows(), bs = pool.block_size();
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[layer];
  const LayerShard& s = weights_.shard.layers[layer];
  const int hd = c.head_dim, hidden = c.hidden_size;
  const int nq = static_cast<int>(s.q_heads.size()), nkv = static_cast<int>(s.kv_heads.size());
  const size_t q_dim = static_cast<size_t>(nq) * hd, kv_dim = static_cast<size_t>(nkv) * hd;
  const size_t qkv_dim = q_dim + 2 * kv_dim;
  // (n, q | k | v): one matmul over the stacked rows; the three parts are used in place.
  float* qkv = Grow(scratch_.qkv, n * qkv_dim);
  Linear(L.qkv, h, n, qkv);
  auto q_at = [&](int t, int hq) { return &qkv[t * qkv_dim + static_cast<size_t>(hq) * hd]; };
  auto k_at = [&](int t, int hk) { return &qkv[t * qkv_dim + q_dim + static_cast<size_t>(hk) * hd]; };
  auto v_at = [&](int t, int hk) {
    return &qkv[t * qkv_dim + q_dim + kv_dim + static_cast<size_t>(hk) * hd];
  };
  auto add_bias = [&](size_t part, const HostTensor& b) {  // part: where q, k or v starts in a row
    if (b.empty()) return;
    for (int t = 0; t < n; ++t) {
      for (int64_t i = 0; i < b.rows(); ++i) qkv[t * qkv_dim + part + i] += b.f32()[i];
    }
  };
  add_bias(0, L.q_bias);
  add_bias(q_dim, L.k_bias);
  add_bias(q_dim + kv_dim, L.v_bias);

  // Per row: qk-norm, RoPE at the row's position, and K/V into its sequence's blocks (rows are
  // independent, and each writes its own cache slots: the pool splits them).
  const float eps = static_cast<float>(c.rms_norm_eps);
  k::ParallelFor(n, kRowGrain, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) {
      const int pos = batch.pos[t];
      SequenceKv& seq = *batch.items[batch.item[t]].seq;
      const float* cos_sin = &batch.rope[static_cast<size_t>(t) * hd];
      for (int hq = 0; hq < nq; ++hq) {
        float* v = q_at(t, hq);
        if (!L.q_norm.empty()) k::RmsNorm(v, L.q_norm.f32(), hd, eps, v);
        k::RopeRotateHalf(v, hd, cos_sin);
      }
      for (int hk = 0; hk < nkv; ++hk) {
        float* v = k_at(t, hk);
        if (!L.k_norm.empty()) k::RmsNorm(v, L.k_norm.f32(), hd, eps, v);
        k::RopeRotateHalf(v, hd, cos_sin);
        const int32_t block = seq.blocks[pos / bs];
        // Into the cache's dtype (a plain copy for an f32 cache).
        k::ConvertDType(v, k::DType::kF32, pool.k(layer, block, hk, pos % bs), pool.dtype(), hd);
        k::ConvertDType(v_at(t, hk), k::DType::kF32, pool.v(layer, block, hk, pos % bs), pool.dtype(), hd);
      }
    }
  });

  // Query head h (global) reads KV head h / group_size (global); both ranges are this rank's.
  const int g = c.group_size();
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  auto kv_of = [&](int hq) { return static_cast<int>((s.q_heads.begin + hq) / g - s.kv_heads.begin); };
  float* attn = Grow(scratch_.attn, static_cast<size_t>(n) * nq * hd);  // (n, nq, hd)
  // Prefill attention on AMX where the projections run there (packed bf16 weights): it rounds
  // queries, keys, values and probabilities to bf16, as those GEMMs round their activations
  // (flushing denormal queries and probabilities to zero, which they do not).
  const bool amx_attention =
      L.qkv.packed() != nullptr && k::AmxForPackedGemm() && k::AmxAttentionSupports(hd);
  // Decode rows (every row in deterministic mode) are gathered here and run in one pool dispatch
  // after the loop; `table` is where their sequence's block pointers start in kb/vb.
  struct DecodeRow {
    int t;
    size_t table;
    int nblocks;
  };
  std::vector<DecodeRow> decode_rows;
  // Per decode sequence: (nkv, its blocks), in the f32 or the bf16 pair as the cache holds.
  const bool kv_bf16 = pool.dtype() == k::DType::kBF16;
  std::vector<const float*> kb, vb;
  std::vector<const uint16_t*> kb16, vb16;
  int decode_npos_max = 0;
  for (size_t it = 0; it < batch.items.size(); ++it) {
    const SequenceKv& seq = *batch.items[it].seq;
    const int first = batch.first_row[it], rows = batch.items[it].n;
    const int pos0 = batch.pos[first], npos_max = pos0 + rows;
    const int nblocks = static_cast<int>(KvCachePool::BlocksFor(npos_max, bs));
    if (!deterministic_ && rows >= k::kGemmMinRows) {
      if (amx_attention) {
        // As the projections' AMX GEMMs, in bf16 (f32 scores and softmax): each KV head's tiles
        // once, straight from its cache blocks, then the query heads.
        std::vector<k::AmxKvTiles> tiles(nkv);
        k::ParallelFor(nkv, 1, [&](int h0, int h1) {
          std::vector<const void*> kblocks(nblocks), vblocks(nblocks);
          for (int hk = h0; hk < h1; ++hk) {
            for (int b = 0; b < nblocks; ++b) {
              kblocks[b] = pool.k(layer, seq.blocks[b], hk, 0);
              vblocks[b] = pool.v(layer, seq.blocks[b], hk, 0);
            }
            k::PrepareAmxKv(kblocks.data(), vblocks.data(), pool.dtype(), bs, npos_max, hd, &tiles[hk]);
          }
        });
        k::ParallelForDynamic(nq, 1, [&](int h0, int h1) {
          for (int hq = h0; hq < h1; ++hq) {
            k::AttentionPrefillAmx(q_at(first, hq), static_cast<int>(qkv_dim), rows, pos0, tiles[kv_of(hq)],
                                   scale, &attn[(static_cast<size_t>(first) * nq + hq) * hd], nq * hd);
          }
        });
        continue;
      }
      // Prefill chunk: per local KV head, its keys/values made contiguous in f32, then each query
      // head's causal attention as GEMMs. Threads split the query heads.
      std::vector<float> keys(static_cast<size_t>(nkv) * npos_max * hd), vals(keys.size());
      for (int hk = 0; hk < nkv; ++hk) {
        for (int b = 0; b < nblocks; ++b) {
          const int n_in = std::min(bs, npos_max - b * bs);
          const size_t at = (static_cast<size_t>(hk) * npos_max + static_cast<size_t>(b) * bs) * hd;
          const size_t count = static_cast<size_t>(n_in) * hd;
          k::ConvertDType(pool.k(layer, seq.blocks[b], hk, 0), pool.dtype(), &keys[at], k::DType::kF32,
                          count);
          k::ConvertDType(pool.v(layer, seq.blocks[b], hk, 0), pool.dtype(), &vals[at], k::DType::kF32,
                          count);
        }
      }
      k::ParallelForDynamic(nq, 1, [&](int h0, int h1) {  // heads taken one at a time
        // One scratch per pool thread, kept across calls (AttentionPrefill writes it before reading).
        thread_local std::vector<float> scratch;
        const size_t need = static_cast<size_t>(k::kAttentionTileRows) * npos_max;
        if (scratch.size() < need) scratch.resize(need);
        for (int hq = h0; hq < h1; ++hq) {
          const size_t kv_at = static_cast<size_t>(kv_of(hq)) * npos_max * hd;
          k::AttentionPrefill(q_at(first, hq), static_cast<int>(qkv_dim), rows, pos0, &keys[kv_at],
                              &vals[kv_at], hd, scale, &attn[(static_cast<size_t>(first) * nq + hq) * hd],
                              nq * hd, scratch.data());
        }
      });
      continue;
    }
    const size_t table = kv_bf16 ? kb16.size() : kb.size();
    for (int hk = 0; hk < nkv; ++hk) {
      for (int b = 0; b < nblocks; ++b) {
        if (kv_bf16) {
          kb16.push_back(pool.k<uint16_t>(layer, seq.blocks[b], hk, 0));
          vb16.push_back(pool.v<uint16_t>(layer, seq.blocks[b], hk, 0));
        } else {
          kb.push_back(pool.k<float>(layer, seq.blocks[b], hk, 0));
          vb.push_back(pool.v<float>(layer, seq.blocks[b], hk, 0));
        }
      }
    }
    for (int r = 0; r < rows; ++r) decode_rows.push_back({first + r, table, nblocks});
    decode_npos_max = std::max(decode_npos_max, npos_max);
  }
  // Per decode row and local KV head, the query heads that share it in one call (each key and value
  // block read once for them), each over its sequence's paged blocks: bitwise what it would be
  // alone, so independent of the batch.
  std::vector<std::vector<int>> heads_of(nkv);  // local query heads per local KV head
  for (int hq = 0; hq < nq; ++hq) heads_of[kv_of(hq)].push_back(hq);
  int g_max = 0;
  for (const auto& h : heads_of) g_max = std::max(g_max, static_cast<int>(h.size()));
  k::ParallelFor(static_cast<int>(decode_rows.size()) * nkv, 2, [&](int j0, int j1) {
    std::vector<float> scratch(k::AttentionScratchFloats(g_max, decode_npos_max, hd));
    std::vector<const float*> qs(g_max);
    std::vector<float*> outs(g_max);
    for (int j = j0; j < j1; ++j) {
      const DecodeRow& d = decode_rows[j / nkv];
      const int hk = j % nkv, g_here = static_cast<int>(heads_of[hk].size());
      if (g_here == 0) continue;  // only where this rank holds no query head at all
      for (int i = 0; i < g_here; ++i) {
        qs[i] = q_at(d.t, heads_of[hk][i]);
        outs[i] = &attn[(static_cast<size_t>(d.t) * nq + heads_of[hk][i]) * hd];
      }
      const int npos = batch.pos[d.t] + 1;  // causal: keys 0..pos of its own sequence
      const size_t kv_at = d.table + static_cast<size_t>(hk) * d.nblocks;
      if (kv_bf16) {
        k::AttentionHeads(qs.data(), g_here, &kb16[kv_at], &vb16[kv_at], npos, bs, hd, scale, scratch.data(),
                          outs.data());
      } else {
        k::AttentionHeads(qs.data(), g_here, &kb[kv_at], &vb[kv_at], npos, bs, hd, scale, scratch.data(),
                          outs.data());
      }
    }
  });
  // Row-parallel o_proj: partial sums over this rank's heads, then the all-reduce.
  Linear(L.o, attn, n, out);
  return tp_.AllReduceSum(out, static_cast<size_t>(n) * hidden);
}

Status LlamaModel::Mlp(int layer, int n, const float* h, float* out) {
  const LayerWeights& L = weights_.layers[layer];
  const int f = static_cast<int>(weights_.shard.layers[layer].ffn.size()), hidden = config_.hidden_size;
  float* gate_up = Grow(scratch_.gate_up, static_cast<size_t>(n) * 2 * f);  // (n, gate | up), one matmul
  Linear(L.gate_up, h, n, gate_up);
  float* act = Grow(scratch_.act, static_cast<size_t>(n) * f);  // (n, local ffn)
  k::ParallelFor(n, 1, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) {
      const float* row = &gate_up[static_cast<size_t>(t) * 2 * f];
      k::SiluMul(row, row + f, f, &act[static_cast<size_t>(t) * f]);
    }
  });
  // Row-parallel down_proj: partial sums over this rank's FFN rows, then the all-reduce.
  Linear(L.down, act, n, out);
  return tp_.AllReduceSum(out, static_cast<size_t>(n) * hidden);
}

Status LlamaModel::Forward(const int32_t* ids, int n, SequenceKv& seq, KvCachePool& pool,
                           float* logits_local) {
  return ForwardBatch({{ids, n, &seq}}, pool, logits_local);
}

Status LlamaModel::ForwardBatch(const std::vector<ForwardItem>& items, KvCachePool& pool,
                                float* logits_local) {
  const ModelConfig& c = config_;
  Batch batch;
  batch.items = items;
  std::vector<int32_t> ids;
  for (size_t it = 0; it < items.size(); ++it) {
    const ForwardItem& f = items[it];
    if (f.n <= 0) return TPS_ERROR("forward needs at least one token per sequence");
    if (f.seq->length + f.n > f.seq->capacity(pool.block_size())) {
      return TPS_ERROR("a sequence of {} tokens exceeds its {} reserved KV tokens", f.seq->length + f.n,
                       f.seq->capacity(pool.block_size()));
    }
    batch.first_row.push_back(static_cast<int>(ids.size()));
    for (int j = 0; j < f.n; ++j) {
      ids.push_back(f.ids[j]);
      batch.item.push_back(static_cast<int>(it));
      batch.pos.push_back(f.seq->length + j);
    }
  }
  const int n = batch.rows();
  if (n == 0) return TPS_ERROR("forward needs at least one sequence");
  // Rotary tables once per row for all layers (a prompt's rows would otherwise compute the same
  // cos/sin in every layer).
  batch.rope.resize(static_cast<size_t>(n) * c.head_dim);
  k::ParallelFor(n, kRowGrain, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) RopeTable(batch.pos[t], &batch.rope[static_cast<size_t>(t) * c.head_dim]);
  });
  const int hidden = c.hidden_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  // (n, hidden) each, kept between calls (every use writes them in full): the embeddings and
  // residual stream, the normed rows, and each attention's or MLP's output.
  const size_t rows_x_hidden = static_cast<size_t>(n) * hidden;
  float* x = Grow(scratch_.x, rows_x_hidden);
  float* h = Grow(scratch_.h, rows_x_hidden);
  float* delta = Grow(scratch_.delta, rows_x_hidden);
  TPS_RETURN_IF_ERROR(Embed(ids.data(), n, x));
  // h = norm(x), after x += delta where given: row by row, split over the pool.
  auto residual_norm = [&](const float* add, const HostTensor& weight) {
    k::ParallelFor(n, kRowGrain, [&](int t0, int t1) {
      for (int t = t0; t < t1; ++t) {
        float* xt = &x[static_cast<size_t>(t) * hidden];
        if (add != nullptr) k::AddInPlace(xt, add + static_cast<size_t>(t) * hidden, hidden);
        k::RmsNorm(xt, weight.f32(), hidden, eps, &h[static_cast<size_t>(t) * hidden]);
      }
    });
  };
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = weights_.layers[l];
    residual_norm(l == 0 ? nullptr : delta, L.attn_norm);  // delta: the previous MLP's
    TPS_RETURN_IF_ERROR(Attention(l, batch, pool, h, delta));
    residual_norm(delta, L.mlp_norm);
    TPS_RETURN_IF_ERROR(Mlp(l, n, h, delta));
  }
  // Logits of each sequence's last token only, for this rank's vocab range: (items, local_vocab).
  // Only those rows need the last MLP's output added.
  std::vector<float> last(items.size() * static_cast<size_t>(hidden));
  for (size_t it = 0; it < items.size(); ++it) {
    items[it].seq->length += items[it].n;
    const size_t row = static_cast<size_t>(batch.first_row[it] + items[it].n - 1) * hidden;
    k::AddInPlace(&x[row], &delta[row], hidden);
    k::RmsNorm(&x[row], weights_.final_norm.f32(), hidden, eps, &last[it * hidden]);
  }
  const HostTensor& lm = weights_.logits_weight();
  Linear(lm, last.data(), static_cast<int>(items.size()), logits_local);
  return Status();
}

Result<std::vector<float>> LlamaModel::GatherLogits(const float* logits_local) {
  const std::vector<Range>& ranges = all_vocab_ranges();
  std::vector<size_t> bytes(tp_.size());
  for (int r = 0; r < tp_.size(); ++r) bytes[r] = ranges[r].size() * sizeof(float);
  std::vector<float> full(tp_.rank() == 0 ? config_.vocab_size : 0);
  TPS_RETURN_IF_ERROR(tp_.Gather(logits_local, bytes[tp_.rank()], full.data(), bytes, 0));
  return full;
}

}  // namespace tpserve
