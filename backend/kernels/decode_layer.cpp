// One decoder layer for a step of one-query rows (decodes, speculative verify rows), fused.
//
// At batch 1 a layer is ~15 small operations on a [T, 576] activation; as separate PyTorch
// calls each costs several microseconds of dispatch, ~0.3 ms a layer in all, as much as
// the layer's arithmetic once its weights are packed. Here the whole layer runs in one
// call: the matmuls are our kernels (skinny_linear for float32 weights, quant_linear for
// packed ones), attention is paged_decode_attention, and the element-wise work between
// them is plain loops. The math is model.py's DecoderLayer, step for step:
//
//   h = rmsnorm(x) * w_in;  q, k, v = h @ Wqkv^T;  rotate q, k (RoPE, rotate-half);
//   write k, v at their slots;  a = attention(q, cache);  x += a @ Wo^T
//   h = rmsnorm(x) * w_post;  g, u = h @ Wgu^T;  x += (silu(g) * u) @ Wdown^T
//
//   x             [T, hidden] float32, updated in place
//   cos, sin      [T, D / 2] float32: each row's rotation at its position
//   k/v_cache     [num_blocks, block_size, Hkv, D] float32 (this layer's)
//   slots         [T] int64: where each row's K/V goes
//   block_tables  [T, max_blocks] int64, ctx_lens [T] int64: what each row attends to
//   weights       per projection a tensor and its type: -1 float32 [N, K], else the ggml
//                 type of uint8 blocks [N, row_bytes]

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels.h"

namespace {

void project(const at::Tensor& out, const at::Tensor& x, const at::Tensor& w, int64_t wtype) {
  if (wtype < 0) {
    llm_gateway::skinny_linear(out, x, w);
  } else {
    llm_gateway::quant_linear(out, x, w, wtype, /*exact=*/false);
  }
}

// out[t] = x[t] * rsqrt(mean(x[t]^2) + eps) * w, as RMSNorm.forward in float32.
void rms_norm(float* out, const float* x, const float* w, int64_t T, int64_t C, double eps) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * C;
    float sum = 0.f;
    for (int64_t c = 0; c < C; ++c) sum += xr[c] * xr[c];
    const float r = 1.f / std::sqrt(sum / static_cast<float>(C) + static_cast<float>(eps));
    for (int64_t c = 0; c < C; ++c) out[t * C + c] = w[c] * (xr[c] * r);
  }
}

// Rotates pairs (i, i + D/2) of `heads` heads of row t, in place.
void rotate(float* row, const float* cos, const float* sin, int64_t heads, int64_t D) {
  const int64_t half = D / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* x = row + h * D;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = x[i], x2 = x[i + half];
      x[i] = x1 * cos[i] - x2 * sin[i];
      x[i + half] = x2 * cos[i] + x1 * sin[i];
    }
  }
}

void decode_layer(const at::Tensor& x, const at::Tensor& in_norm, const at::Tensor& post_norm,
                  double eps, const at::Tensor& qkv, int64_t qkv_type, const at::Tensor& o,
                  int64_t o_type, const at::Tensor& gate_up, int64_t gate_up_type,
                  const at::Tensor& down, int64_t down_type, const at::Tensor& cos,
                  const at::Tensor& sin, const at::Tensor& k_cache, const at::Tensor& v_cache,
                  const at::Tensor& slots, const at::Tensor& block_tables,
                  const at::Tensor& ctx_lens, int64_t num_heads) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be a contiguous [T, hidden] float32 tensor");
  TORCH_CHECK(k_cache.scalar_type() == at::kFloat && k_cache.is_contiguous() &&
                  v_cache.is_contiguous() && k_cache.dim() == 4,
              "the caches must be contiguous float32 [num_blocks, block_size, Hkv, D]");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous(), "slots must be int64");
  const int64_t T = x.size(0), C = x.size(1);
  const int64_t Hkv = k_cache.size(2), D = k_cache.size(3);
  const int64_t q_size = num_heads * D, kv_size = Hkv * D;
  const int64_t intermediate = gate_up.size(0) / 2;  // [2I, K] or [2I, row_bytes]
  TORCH_CHECK(cos.size(0) == T && cos.size(1) == D / 2 && sin.sizes() == cos.sizes() &&
                  cos.is_contiguous() && sin.is_contiguous(),
              "cos and sin must be contiguous [T, D / 2]");
  TORCH_CHECK(slots.size(0) == T, "one slot per row");
  const auto opts = x.options();
  float* xp = x.data_ptr<float>();

  // --- attention ---
  at::Tensor h = at::empty({T, C}, opts);
  rms_norm(h.data_ptr<float>(), xp, in_norm.data_ptr<float>(), T, C, eps);
  at::Tensor qkv_out = at::empty({T, q_size + 2 * kv_size}, opts);
  project(qkv_out, h, qkv, qkv_type);
  at::Tensor q = at::empty({T, num_heads, D}, opts);
  float* qp = q.data_ptr<float>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t capacity = k_cache.size(0) * k_cache.size(1);
  for (int64_t t = 0; t < T; ++t) {
    float* row = qkv_out.data_ptr<float>() + t * (q_size + 2 * kv_size);
    rotate(row, cp + t * (D / 2), sp + t * (D / 2), num_heads, D);
    rotate(row + q_size, cp + t * (D / 2), sp + t * (D / 2), Hkv, D);
    TORCH_CHECK(slot[t] >= 0 && slot[t] < capacity, "slot out of the cache");
    std::memcpy(qp + t * q_size, row, q_size * sizeof(float));
    std::memcpy(kc + slot[t] * kv_size, row + q_size, kv_size * sizeof(float));
    std::memcpy(vc + slot[t] * kv_size, row + q_size + kv_size, kv_size * sizeof(float));
  }
  at::Tensor attn = at::empty({T, num_heads, D}, opts);
  llm_gateway::paged_decode_attention(attn, q, k_cache, v_cache, block_tables, ctx_lens,
                                      1.0 / std::sqrt(static_cast<double>(D)));
  at::Tensor o_out = at::empty({T, C}, opts);
  project(o_out, attn.view({T, q_size}), o, o_type);
  const float* op = o_out.data_ptr<float>();
  for (int64_t i = 0; i < T * C; ++i) xp[i] += op[i];

  // --- MLP ---
  rms_norm(h.data_ptr<float>(), xp, post_norm.data_ptr<float>(), T, C, eps);
  at::Tensor gu = at::empty({T, 2 * intermediate}, opts);
  project(gu, h, gate_up, gate_up_type);
  at::Tensor act = at::empty({T, intermediate}, opts);
  float* ap = act.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    const float* g = gu.data_ptr<float>() + t * 2 * intermediate;
    const float* u = g + intermediate;
    for (int64_t i = 0; i < intermediate; ++i) {
      const float silu = g[i] / (1.f + std::exp(-g[i]));
      ap[t * intermediate + i] = silu * u[i];
    }
  }
  project(o_out, act, down, down_type);
  for (int64_t i = 0; i < T * C; ++i) xp[i] += op[i];
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llm_gateway, m) {
  m.def(
      "decode_layer(Tensor(a!) x, Tensor in_norm, Tensor post_norm, float eps, Tensor qkv, "
      "int qkv_type, Tensor o, int o_type, Tensor gate_up, int gate_up_type, Tensor down, "
      "int down_type, Tensor cos, Tensor sin, Tensor(b!) k_cache, Tensor(c!) v_cache, "
      "Tensor slots, Tensor block_tables, Tensor ctx_lens, int num_heads) -> ()");
}

TORCH_LIBRARY_IMPL(llm_gateway, CPU, m) { m.impl("decode_layer", &decode_layer); }
