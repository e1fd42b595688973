// The kernels' entry points, for the ops that call one another (decode_layer.cpp).
// Each is also registered as torch.ops.llm_gateway.<name>; see its own file.

#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace llm_gateway {

// out [M, N] = x [M, K] @ w [N, K]^T, float32 (skinny_linear.cpp)
void skinny_linear(const at::Tensor& out, const at::Tensor& x, const at::Tensor& w);

// out [M, N] = x [M, K] @ W^T, W as GGUF blocks of ggml type `qtype`; x rounded to int8
// per 32 values unless `exact` (quant_linear.cpp)
void quant_linear(const at::Tensor& out, const at::Tensor& x, const at::Tensor& blocks,
                  int64_t qtype, bool exact);
void dequantize_packed(const at::Tensor& out, const at::Tensor& blocks, int64_t qtype);

// One-query attention rows over the paged KV cache (paged_decode_attention.cpp)
void paged_decode_attention(const at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& block_tables,
                            const at::Tensor& ctx_lens, double scale);

}  // namespace llm_gateway
