// y = x @ W^T for a few rows of x ("skinny" GEMM), fp32, on CPU.
//
// A decode step, or a speculative verify step of 1 + k tokens, multiplies a handful of
// rows by every weight matrix. That is bound by streaming the weights from memory:
// the cost of one row should be the cost of sixteen. MKL's GEMM does not behave so on
// every CPU (on the AMD EPYC we test on, 2 rows cost twice 1 row and 9 rows 2.5x).
// Here each weight row is read from memory once and, while it sits in L1, multiplied
// by every row of x.
//
//   x    [M, K] float32, contiguous     (M small: the caller picks the kernel for M <= 16)
//   w    [N, K] float32, contiguous     (nn.Linear layout: out_features x in_features)
//   out  [M, N] float32, contiguous
//
// Each output element is one dot product summed in a fixed order that does not depend
// on M or on which rows share the call: a row's result is the same whatever batch it
// is in (a verify step reproduces plain decoding bit for bit).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "kernels.h"

#include <cstring>

namespace {

// 8 floats: one AVX2 register where the CPU has it, two NEON ones on ARM, scalar code
// elsewhere (GCC/Clang vector extensions).
typedef float v8 __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;
constexpr int64_t kRowsW = 4;  // weight rows per tile
constexpr int64_t kRowsX = 2;  // x rows per tile: 4 x 2 accumulators + 4 + 1 loads fit 16 registers

inline v8 load(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));  // unaligned load
  return v;
}

inline float hsum(v8 v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// out[m, n0 .. n0+RW) for x rows m0 .. m0+RX, one dot product per (weight row, x row).
template <int RW, int RX>
inline void tile(const float* x, const float* w, float* out, int64_t K, int64_t N, int64_t m0,
                 int64_t n0) {
  v8 acc[RW][RX] = {};
  const int64_t kv = K - K % kLanes;
  for (int64_t k = 0; k < kv; k += kLanes) {
    v8 wv[RW];
    for (int r = 0; r < RW; ++r) wv[r] = load(w + (n0 + r) * K + k);
    for (int m = 0; m < RX; ++m) {
      const v8 xv = load(x + (m0 + m) * K + k);
      for (int r = 0; r < RW; ++r) acc[r][m] += wv[r] * xv;
    }
  }
  for (int r = 0; r < RW; ++r)
    for (int m = 0; m < RX; ++m) {
      float s = hsum(acc[r][m]);
      for (int64_t k = kv; k < K; ++k) s += w[(n0 + r) * K + k] * x[(m0 + m) * K + k];
      out[(m0 + m) * N + n0 + r] = s;
    }
}

template <int RW>
inline void row_tile(const float* x, const float* w, float* out, int64_t M, int64_t K, int64_t N,
                     int64_t n0) {
  int64_t m = 0;
  for (; m + kRowsX <= M; m += kRowsX) tile<RW, kRowsX>(x, w, out, K, N, m, n0);
  for (; m < M; ++m) tile<RW, 1>(x, w, out, K, N, m, n0);
}

}  // namespace

namespace llm_gateway {

void skinny_linear(const at::Tensor& out, const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && out.dim() == 2, "x, w, out must be 2-D");
  TORCH_CHECK(x.size(1) == w.size(1), "x [M, K] and w [N, K] disagree on K");
  TORCH_CHECK(out.size(0) == x.size(0) && out.size(1) == w.size(0), "out must be [M, N]");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
                  out.scalar_type() == at::kFloat,
              "skinny_linear is float32 only");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && out.is_contiguous(),
              "inputs must be contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  // Split the weight rows between threads; each tile reads its rows once.
  const int64_t tiles = (N + kRowsW - 1) / kRowsW;
  at::parallel_for(0, tiles, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = t * kRowsW;
      if (n0 + kRowsW <= N) {
        row_tile<kRowsW>(xp, wp, op, M, K, N, n0);
      } else {
        for (int64_t n = n0; n < N; ++n) row_tile<1>(xp, wp, op, M, K, N, n);
      }
    }
  });
}

}  // namespace llm_gateway

TORCH_LIBRARY_FRAGMENT(llm_gateway, m) {
  m.def("skinny_linear(Tensor(a!) out, Tensor x, Tensor w) -> ()");
}

TORCH_LIBRARY_IMPL(llm_gateway, CPU, m) { m.impl("skinny_linear", &llm_gateway::skinny_linear); }
