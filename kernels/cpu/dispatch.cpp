// Picks the CPU kernel table once at start-up from a feature probe.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace tpserve::kernels {
namespace {

bool CpuHas(const char* isa) {
  __builtin_cpu_init();
  if (std::string(isa) == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  }
  if (std::string(isa) == "avx2") {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }
  return std::string(isa) == "portable";
}

const CpuKernelTable& Choose() {
  if (const char* forced = std::getenv("TPSERVE_ISA")) {
    if (const CpuKernelTable* t = KernelsForIsa(forced)) return *t;
  }
  return *KernelsForIsa(SupportedIsas().front());
}

}  // namespace

std::vector<std::string> SupportedIsas() {
  std::vector<std::string> out;
  for (const char* isa : {"avx512", "avx2", "portable"}) {
    if (CpuHas(isa)) out.emplace_back(isa);
  }
  return out;
}

const CpuKernelTable* KernelsForIsa(const std::string& isa) {
  if (!CpuHas(isa.c_str())) return nullptr;
  if (isa == "avx512") return Avx512Kernels();
  if (isa == "avx2") return Avx2Kernels();
  return &PortableKernels();
}

const CpuKernelTable& ActiveKernels() {
  static const CpuKernelTable& table = Choose();
  return table;
}

namespace {

// Weight rows per turn when the pool's threads take a matrix's rows in turns (ParallelForDynamic):
// about an eighth of a thread's share, a multiple of 16, and at least 16 rows per stream.
int RowsPerTurn(int rows, int streams) {
  return std::max(16 * streams, rows / (8 * NumThreads()) / 16 * 16);
}

// The rows [begin, end) of a turn as `streams` runs of consecutive rows read side by side (see
// RowsI8Fn and Rows4Fn): group(first, run) for each position in the runs, covering the rows
// first + j * run (j < streams). Returns where the rows left over (fewer than `streams`) begin.
template <typename Group>
int ForRowStreams(int begin, int end, int streams, const Group& group) {
  const int run = (end - begin) / streams;
  for (int r = 0; r < run; ++r) group(begin + r, run);
  return begin + streams * run;
}

void MatmulInt8(const CpuKernelTable& kt, const float* x, int n, const int8_t* w, int m, int k, float* y,
                const float* row_scales) {
  // The quantized rows start on cache lines (ldq: k rounded up to 64 bytes), so that the batch
  // kernel's 64-byte activation loads never straddle two lines.
  const int ldq = (k + 31) / 32 * 32;
  static_assert(kAmxInt8Step % 32 == 0, "MatmulInt8Amx reads the rows at stride k: ldq must equal k there");
  AlignedVector<int16_t> xq(static_cast<size_t>(n) * ldq);
  std::vector<float> xs(n);
  for (int t = 0; t < n; ++t)
    xs[t] = QuantizeRowInt16(x + static_cast<size_t>(t) * k, k, &xq[static_cast<size_t>(t) * ldq]);
  auto store = [&](int t, int o, int64_t dot) {
    y[static_cast<size_t>(t) * m + o] = ScaleInt8Dot(static_cast<double>(dot), xs[t], row_scales[o]);
  };
  // Batches on AMX-INT8 where the table allows it: the output rows in pairs of tiles; the rest below.
  int m0 = 0;
  if (kt.amx_int8 && n >= kAmxInt8MinRows && k % kAmxInt8Step == 0 && k < kAmxInt8MaxK &&
      m >= 2 * kAmxTileRows) {
    MatmulInt8Amx(xq.data(), xs.data(), n, w, row_scales, m, k, y);
    m0 = m / (2 * kAmxTileRows) * (2 * kAmxTileRows);
  }
  if (m0 == m) return;
  const bool batch = kt.rows_i8_batch != nullptr && n >= (kt.rows_i8 != nullptr ? kI8BatchMinRows : 2);
  // The threads take the rows in turns (RowsPerTurn) rather than a fixed half each, which waits
  // for the slower core. (A 48-token bench-1b int8 decode at TP 1 x 2, 8 alternated pairs on the Zen 5 VM:
  // 1.03-1.15x faster in all 8.) Every output is one exact integer dot product, so the split
  // never changes a result.
  ParallelForDynamic(m - m0, RowsPerTurn(m - m0, kRowsI8), [&](int o_begin, int o_end) {
    o_begin += m0, o_end += m0;
    int o = o_begin;
    if (batch) {
      // kI8BatchWeightRows consecutive weight rows against up to kI8BatchRows activation rows
      // per call, each weight widened once per tile of activation rows. A prefill's activations
      // go in chunks of kI8BatchRows rows (~200 KB at k = 2048), which stay in L2 while the
      // turn's weights pass; all 512 rows of a prompt (2 MB) would come from L3 again for every
      // group of weight rows. (At k = 14336 a chunk is 1.4 MB, more than this VM's L2; the
      // kernel's k blocks keep each block's 192 KB in L2 still, and smaller chunks would stream
      // the weights once more per chunk.)
      constexpr int R = kI8BatchWeightRows;
      const int o_full = o_begin + (o_end - o_begin) / R * R;
      for (int c0 = 0; c0 < n; c0 += kI8BatchRows) {
        for (o = o_begin; o < o_full; o += R) {
          kt.rows_i8_batch(&xq[static_cast<size_t>(c0) * ldq], static_cast<size_t>(ldq),
                           std::min(kI8BatchRows, n - c0), &xs[c0], w + static_cast<size_t>(o) * k,
                           static_cast<size_t>(k), row_scales + o, k, y + static_cast<size_t>(c0) * m + o,
                           static_cast<size_t>(m));
        }
      }
      o = o_full;
    } else if (kt.rows_i8 != nullptr) {
      o = ForRowStreams(o_begin, o_end, kRowsI8, [&](int first, int run) {
        for (int t = 0; t < n; ++t) {
          int64_t out[kRowsI8];
          kt.rows_i8(&xq[static_cast<size_t>(t) * ldq], w + static_cast<size_t>(first) * k,
                     static_cast<size_t>(run) * k, k, out);
          for (int j = 0; j < kRowsI8; ++j) store(t, first + j * run, out[j]);
        }
      });
    }
    // The weight rows left over: one dot product each.
    for (; o < o_end; ++o) {
      for (int t = 0; t < n; ++t)
        store(t, o, kt.dot_i8(&xq[static_cast<size_t>(t) * ldq], w + static_cast<size_t>(o) * k, k));
    }
  });
}

}  // namespace

void MatmulNT(const CpuKernelTable& kt, const float* x, int n, const void* w, DType wt, int m, int k,
              float* y, const float* row_scales) {
  if (wt == DType::kI8) return MatmulInt8(kt, x, n, static_cast<const int8_t*>(w), m, k, y, row_scales);
  const DotFn dot = kt.dot[static_cast<int>(wt)];
  const Dot4Fn dot4 = kt.dot4[static_cast<int>(wt)];
  const size_t row_bytes = static_cast<size_t>(k) * DTypeSize(wt);
  const char* wb = static_cast<const char*>(w);
  const Rows4Fn rows4 = kt.rows4[static_cast<int>(wt)];
  if (n < 4 && rows4 != nullptr) {
    // Few activation rows: kRows4 weight streams at once, each over its own run of consecutive
    // rows (as int8's above, see Rows4Fn), the threads taking the rows in turns.
    ParallelForDynamic(m, RowsPerTurn(m, kRows4), [&](int o_begin, int o_end) {
      const int rest = ForRowStreams(o_begin, o_end, kRows4, [&](int first, int run) {
        for (int t = 0; t < n; ++t) {
          float out[kRows4];
          rows4(x + static_cast<size_t>(t) * k, wb + static_cast<size_t>(first) * row_bytes,
                static_cast<size_t>(run) * row_bytes, k, out);
          for (int j = 0; j < kRows4; ++j) y[static_cast<size_t>(t) * m + first + j * run] = out[j];
        }
      });
      for (int o = rest; o < o_end; ++o) {
        for (int t = 0; t < n; ++t)
          y[static_cast<size_t>(t) * m + o] =
              dot(x + static_cast<size_t>(t) * k, wb + static_cast<size_t>(o) * row_bytes, k);
      }
    });
    return;
  }
  // Threads split the weight rows: each reads its own part of w once.
  ParallelFor(m, 16, [&](int o_begin, int o_end) {
    int o = o_begin;
    for (; o < o_end; ++o) {
      const void* row = wb + static_cast<size_t>(o) * row_bytes;
      int t = 0;
      for (; t + 4 <= n; t += 4) {
        const float* xs[4] = {x + static_cast<size_t>(t) * k, x + static_cast<size_t>(t + 1) * k,
                              x + static_cast<size_t>(t + 2) * k, x + static_cast<size_t>(t + 3) * k};
        float out[4];
        // The first activation group prefetches the next weight row; later groups find this one cached.
        dot4(xs, row, k, out, t == 0 ? static_cast<const char*>(row) + row_bytes : nullptr);
        for (int j = 0; j < 4; ++j) y[static_cast<size_t>(t + j) * m + o] = out[j];
      }
      for (; t < n; ++t) y[static_cast<size_t>(t) * m + o] = dot(x + static_cast<size_t>(t) * k, row, k);
    }
  });
}

}  // namespace tpserve::kernels
