// Fused paged attention for one-token decodes on CPU.
//
// The pure-PyTorch path gathers every sequence's K/V blocks into a padded
// [B, S, Hkv, D] copy before SDPA; on a CPU that copy costs as much as the
// attention itself. Here each (sequence, KV head) task reads its blocks in place:
// one pass over K for the scores, one over V for the weighted sum.
//
//   q            [B, H, D]                  one query token per sequence
//   k/v_cache    [num_blocks, block_size, Hkv, D]
//   block_tables [B, max_blocks] int64      (rows padded past the context)
//   ctx_lens     [B] int64                  tokens to attend to, this step's included
//   out          [B, H, D]
// The H / Hkv query heads of a group share their KV head (GQA).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

template <typename T>
inline float to_float(T x) {
  return static_cast<float>(x);
}

template <typename T>
void decode_kernel(const at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                   const at::Tensor& v_cache, const at::Tensor& block_tables,
                   const at::Tensor& ctx_lens, double scale) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t block_size = k_cache.size(1), Hkv = k_cache.size(2);
  const int64_t G = H / Hkv;
  const int64_t max_blocks = block_tables.size(1);
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = ctx_lens.data_ptr<int64_t>();
  const int64_t token_stride = Hkv * D;  // between consecutive slots of the cache
  const float fscale = static_cast<float>(scale);

  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(G * D), acc(G * D), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hkv, kh = task % Hkv;
      const int64_t ctx = lens[b];
      const int64_t* table = tables + b * max_blocks;
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d)
          qf[g * D + d] = to_float(qp[(b * H + kh * G + g) * D + d]) * fscale;
      scores.resize(G * ctx);

      // Pass 1: scores[g, t] = q_g . k_t
      for (int64_t t = 0; t < ctx; ++t) {
        const int64_t slot = table[t / block_size] * block_size + t % block_size;
        const T* kt = kp + slot * token_stride + kh * D;
        for (int64_t g = 0; g < G; ++g) {
          const float* qg = qf.data() + g * D;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < D; ++d) dot += qg[d] * to_float(kt[d]);
          scores[g * ctx + t] = dot;
        }
      }
      // Softmax over t, per query head.
      std::vector<float> inv_sum(G);
      for (int64_t g = 0; g < G; ++g) {
        float* s = scores.data() + g * ctx;
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t t = 0; t < ctx; ++t) m = std::max(m, s[t]);
        float sum = 0.f;
        for (int64_t t = 0; t < ctx; ++t) {
          s[t] = std::exp(s[t] - m);
          sum += s[t];
        }
        inv_sum[g] = 1.f / sum;
      }
      // Pass 2: acc[g] = sum_t p[g, t] * v_t
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < ctx; ++t) {
        const int64_t slot = table[t / block_size] * block_size + t % block_size;
        const T* vt = vp + slot * token_stride + kh * D;
        for (int64_t g = 0; g < G; ++g) {
          const float p = scores[g * ctx + t];
          float* a = acc.data() + g * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] += p * to_float(vt[d]);
        }
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d)
          op[(b * H + kh * G + g) * D + d] = static_cast<T>(acc[g * D + d] * inv_sum[g]);
    }
  });
}

}  // namespace

namespace llm_gateway {

void paged_decode_attention(const at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& block_tables,
                            const at::Tensor& ctx_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && out.sizes() == q.sizes(), "q and out must be [B, H, D]");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes(),
              "k_cache and v_cache must be [num_blocks, block_size, Hkv, D]");
  TORCH_CHECK(q.size(2) == k_cache.size(3), "head_dim of q and the cache differ");
  TORCH_CHECK(q.size(1) % k_cache.size(2) == 0, "query heads must be a multiple of KV heads");
  TORCH_CHECK(q.is_contiguous() && out.is_contiguous() && k_cache.is_contiguous() &&
                  v_cache.is_contiguous() && block_tables.is_contiguous() &&
                  ctx_lens.is_contiguous(),
              "inputs must be contiguous");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() &&
                  q.scalar_type() == v_cache.scalar_type() &&
                  q.scalar_type() == out.scalar_type(),
              "q, out and the caches must share a dtype");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && ctx_lens.scalar_type() == at::kLong,
              "block_tables and ctx_lens must be int64");
  TORCH_CHECK(block_tables.size(0) == q.size(0) && ctx_lens.size(0) == q.size(0),
              "one block table and one length per sequence");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode", [&] {
    decode_kernel<scalar_t>(out, q, k_cache, v_cache, block_tables, ctx_lens, scale);
  });
}

}  // namespace llm_gateway

TORCH_LIBRARY_FRAGMENT(llm_gateway, m) {
  m.def(
      "paged_decode_attention(Tensor(a!) out, Tensor q, Tensor k_cache, Tensor v_cache, "
      "Tensor block_tables, Tensor ctx_lens, float scale) -> ()");
}

TORCH_LIBRARY_IMPL(llm_gateway, CPU, m) {
  m.impl("paged_decode_attention", &llm_gateway::paged_decode_attention);
}
