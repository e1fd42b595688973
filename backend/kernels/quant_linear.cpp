// y = x @ W^T with W kept in GGUF's packed blocks (Q8_0, Q4_0, Q4_1), on CPU.
//
// Decoding a few sequences streams every weight once per step: from packed 4-bit blocks
// that is 0.625 bytes a weight instead of float32's 4. Each weight row is read from its
// blocks, decoded 32 values at a time into registers exactly as ggml's (and
// loading/dequant.py's) float32 dequantization computes them, and multiplied by every
// row of x while it sits there. `dequantize_packed` writes the same values out as a
// dense float32 matrix, for steps with many rows (prefill) that MKL's GEMM does best.
//
//   x       [M, K] float32, contiguous
//   blocks  [N, K / 32 * block_bytes] uint8, contiguous: row n's blocks, in K order
//   out     [M, N] float32 (quant_linear) / [N, K] float32 (dequantize_packed)
//   qtype   ggml's type number: 8 = Q8_0, 2 = Q4_0, 3 = Q4_1
//   exact   false: x rounded to int8 per 32 values (fast, as llama.cpp); true: float32 x
//
// As in skinny_linear.cpp, each output element is one dot product summed in a fixed order
// that does not depend on M or on the rows beside it in the call.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__) || defined(__FMA__)
#include <immintrin.h>
#endif

namespace {

typedef float v8 __attribute__((vector_size(32)));

constexpr int64_t kBlock = 32;  // values per block
constexpr int64_t kRowsW = 4;   // weight rows per tile
constexpr int64_t kRowsX = 2;   // x rows per tile
constexpr int kWideW = 2;       // the wide tile, for four or more x rows: weight rows...
constexpr int64_t kWideX = 4;   // ...and x rows

inline v8 load(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline float hsum(v8 v) {
  float s = 0.f;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

inline float f16(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return c10::detail::fp16_ieee_to_fp32_value(bits);
}

inline v8 splat(float f) { return v8{f, f, f, f, f, f, f, f}; }

// a * b + c, fused, spelled out: left to the compiler, whether a product is contracted
// into an FMA can differ between the 1-row and 2-row tiles, and a row's result would
// then depend on the rows beside it.
inline v8 fmadd(v8 a, v8 b, v8 c) {
#if defined(__FMA__)
  return (v8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  for (int i = 0; i < 8; ++i) c[i] = std::fma(a[i], b[i], c[i]);
  return c;
#endif
}

// 8 bytes -> 8 floats. GCC's generic vector conversions come out as scalar code for
// these, so x86 with AVX2 gets the two instructions it needs spelled out.
#if defined(__AVX2__)
inline v8 widen(__m128i q) { return (v8)_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)); }
inline v8 widen_signed(__m128i q) { return (v8)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)); }
inline __m128i load8(const uint8_t* p) { return _mm_loadl_epi64((const __m128i*)p); }
#endif

// One block -> its 32 values in four vectors (elements 0-7, 8-15, 16-23, 24-31).
struct Q8_0 {
  static constexpr int64_t kBytes = 34;  // f16 d | int8 qs[32];  w = d * q
  static inline void decode(const uint8_t* b, v8 w[4]) {
    const v8 d = splat(f16(b));
#if defined(__AVX2__)
    for (int i = 0; i < 4; ++i) w[i] = widen_signed(load8(b + 2 + 8 * i)) * d;
#else
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 8; ++j) w[i][j] = static_cast<int8_t>(b[2 + 8 * i + j]);
    for (int i = 0; i < 4; ++i) w[i] *= d;
#endif
  }
};

// A block's 32 weight values as bytes, in element order. Q4 nibbles: element j < 16 is
// qs[j] & 0xF, element 16 + j is qs[j] >> 4.
#if defined(__AVX2__)
typedef __m256i Ints;
inline Ints q4_values(const uint8_t* qs) {
  const __m128i packed = _mm_loadu_si128((const __m128i*)qs), mask = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_and_si128(packed, mask);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
  return _mm256_set_m128i(hi, lo);
}
inline Ints q8_values(const uint8_t* qs) { return _mm256_loadu_si256((const __m256i*)qs); }
#else
struct Ints {
  int8_t v[32];
};
inline Ints q4_values(const uint8_t* qs) {
  Ints w;
  for (int j = 0; j < 16; ++j) {
    w.v[j] = qs[j] & 0x0F;
    w.v[16 + j] = qs[j] >> 4;
  }
  return w;
}
inline Ints q8_values(const uint8_t* qs) {
  Ints w;
  std::memcpy(w.v, qs, 32);
  return w;
}
#endif

// A Q4 block's 32 nibbles as floats, in four vectors (elements 0-7, 8-15, 16-23, 24-31).
inline void nibbles(const uint8_t* qs, v8 q[4]) {
  const Ints w = q4_values(qs);
#if defined(__AVX2__)
  const __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
  q[0] = widen(lo);
  q[1] = widen(_mm_unpackhi_epi64(lo, lo));
  q[2] = widen(hi);
  q[3] = widen(_mm_unpackhi_epi64(hi, hi));
#else
  for (int j = 0; j < 32; ++j) q[j / 8][j % 8] = w.v[j];
#endif
}

struct Q4_0 {
  static constexpr int64_t kBytes = 18;  // f16 d | qs[16];  w = d * (q - 8)
  static inline void decode(const uint8_t* b, v8 w[4]) {
    const v8 d = splat(f16(b));
    nibbles(b + 2, w);
    for (int i = 0; i < 4; ++i) w[i] = (w[i] - 8.f) * d;
  }
};

struct Q4_1 {
  static constexpr int64_t kBytes = 20;  // f16 d | f16 m | qs[16];  w = d * q + m
  static inline void decode(const uint8_t* b, v8 w[4]) {
    const v8 d = splat(f16(b)), m = splat(f16(b + 2));
    nibbles(b + 4, w);
    for (int i = 0; i < 4; ++i) {
      const v8 dq = w[i] * d;  // two roundings, as the reference: (d * q) + m
      w[i] = dq + m;
    }
  }
};

// ---- few-row matmul: x quantized to int8 blocks, integer dot products -----------------
//
// As llama.cpp does: each 32-value block of x is scaled to int8 (dx = max|x| / 127), so a
// block's dot product with a weight block is one integer sum, Σ q·xq, then scaled:
//   Q8_0:  d·dx·Σ q·xq
//   Q4_0:  d·dx·Σ q·xq - 8d·dx·Σ xq        (q the unsigned nibble, w = d(q - 8))
//   Q4_1:  d·dx·Σ q·xq +  m·dx·Σ xq        (w = dq + m)
// AVX2 does 32 multiply-adds of a block in two instructions (vpmaddubsw, vpmaddwd), where
// expanding to float32 takes a dozen: the step is bound by memory again, not arithmetic.
// The price is x's rounding to 8 bits per block (relative error ~0.4% a block), measured
// against the float32 reference by bench/quantized.py (greedy agreement, perplexity).

struct XBlocks {  // x [M, K] quantized: xq [M, K], dx and sx = dx * Σ xq [M, K / 32]
  std::vector<int8_t> xq;
  std::vector<float> dx, sx;
};

XBlocks quantize_x(const float* x, int64_t M, int64_t K) {
  const int64_t nb = K / kBlock;
  XBlocks q{std::vector<int8_t>(M * K), std::vector<float>(M * nb), std::vector<float>(M * nb)};
  for (int64_t i = 0; i < M * nb; ++i) {
    const float* xb = x + i * kBlock;
    float amax = 0.f;
    for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.f, id = d > 0.f ? 1.f / d : 0.f;
    int sum = 0;
    for (int j = 0; j < kBlock; ++j) {
      const int v = static_cast<int>(std::nearbyint(xb[j] * id));
      q.xq[i * kBlock + j] = static_cast<int8_t>(v);
      sum += v;
    }
    q.dx[i] = d;
    q.sx[i] = d * static_cast<float>(sum);
  }
  return q;
}

#if defined(__AVX2__)
// Σ over the block, as 8 partial int32 sums: w unsigned (Q4) or signed (Q8) bytes.
inline __m256i dot_unsigned(Ints w, const int8_t* x) {
  const __m256i xv = _mm256_loadu_si256((const __m256i*)x);
  return _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), _mm256_set1_epi16(1));
}
inline __m256i dot_signed(Ints w, const int8_t* x) {
  const __m256i xv = _mm256_loadu_si256((const __m256i*)x);
  const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}
inline v8 to_float(__m256i v) { return (v8)_mm256_cvtepi32_ps(v); }
#else
inline v8 dot_lanes(const Ints& w, const int8_t* x) {
  v8 out;
  for (int i = 0; i < 8; ++i) {
    int s = 0;
    for (int j = 0; j < 4; ++j) s += w.v[4 * i + j] * x[4 * i + j];
    out[i] = static_cast<float>(s);
  }
  return out;
}
inline v8 dot_unsigned(const Ints& w, const int8_t* x) { return dot_lanes(w, x); }
inline v8 dot_signed(const Ints& w, const int8_t* x) { return dot_lanes(w, x); }
inline v8 to_float(v8 v) { return v; }
#endif

struct Q8_0Dot {
  static constexpr int64_t kBytes = Q8_0::kBytes;
  static inline Ints values(const uint8_t* b) { return q8_values(b + 2); }
  static inline float d(const uint8_t* b) { return f16(b); }
  static inline float c(const uint8_t*) { return 0.f; }
  static inline auto dot(const Ints& w, const int8_t* x) { return dot_signed(w, x); }
};
struct Q4_0Dot {
  static constexpr int64_t kBytes = Q4_0::kBytes;
  static inline Ints values(const uint8_t* b) { return q4_values(b + 2); }
  static inline float d(const uint8_t* b) { return f16(b); }
  static inline float c(const uint8_t* b) { return -8.f * f16(b); }
  static inline auto dot(const Ints& w, const int8_t* x) { return dot_unsigned(w, x); }
};
struct Q4_1Dot {
  static constexpr int64_t kBytes = Q4_1::kBytes;
  static inline Ints values(const uint8_t* b) { return q4_values(b + 4); }
  static inline float d(const uint8_t* b) { return f16(b); }
  static inline float c(const uint8_t* b) { return f16(b + 2); }
  static inline auto dot(const Ints& w, const int8_t* x) { return dot_unsigned(w, x); }
};

// out[m0 .. m0+RX, n0 .. n0+RW) from RW weight rows, block by block.
template <typename Q, int RW, int RX>
inline void tile(const XBlocks& x, const uint8_t* w, float* out, int64_t K, int64_t N,
                 int64_t row_bytes, int64_t m0, int64_t n0) {
  v8 acc[RW][RX] = {};
  float offset[RW][RX] = {};
  const int64_t nb = K / kBlock;
  for (int64_t b = 0; b < nb; ++b) {
    Ints wv[RW];
    float d[RW], c[RW];
    for (int r = 0; r < RW; ++r) {
      const uint8_t* block = w + (n0 + r) * row_bytes + b * Q::kBytes;
      wv[r] = Q::values(block);
      d[r] = Q::d(block);
      c[r] = Q::c(block);
    }
    for (int m = 0; m < RX; ++m) {
      const int64_t xb = (m0 + m) * nb + b;
      const int8_t* xq = x.xq.data() + xb * kBlock;
      for (int r = 0; r < RW; ++r) {
        acc[r][m] = fmadd(to_float(Q::dot(wv[r], xq)), splat(d[r] * x.dx[xb]), acc[r][m]);
        offset[r][m] = std::fma(c[r], x.sx[xb], offset[r][m]);
      }
    }
  }
  for (int r = 0; r < RW; ++r)
    for (int m = 0; m < RX; ++m) out[(m0 + m) * N + n0 + r] = hsum(acc[r][m]) + offset[r][m];
}

// Float32 x, for the layer whose every logit matters (the LM head: on a borderline first
// token, x's rounding to int8 picks another word): each weight block is expanded in
// registers exactly as dequantize() does and multiplied by x as it is, the float
// reference's arithmetic at about twice the instructions of the int8 dot products.
template <typename Q, int RW, int RX>
inline void tile(const float* x, const uint8_t* w, float* out, int64_t K, int64_t N,
                 int64_t row_bytes, int64_t m0, int64_t n0) {
  v8 acc[RW][RX] = {};
  const int64_t nb = K / kBlock;
  for (int64_t b = 0; b < nb; ++b) {
    v8 wv[RW][4];
    for (int r = 0; r < RW; ++r) Q::decode(w + (n0 + r) * row_bytes + b * Q::kBytes, wv[r]);
    for (int m = 0; m < RX; ++m) {
      const float* xb = x + (m0 + m) * K + b * kBlock;
      for (int i = 0; i < 4; ++i) {
        const v8 xv = load(xb + 8 * i);
        for (int r = 0; r < RW; ++r) acc[r][m] = fmadd(wv[r][i], xv, acc[r][m]);
      }
    }
  }
  for (int r = 0; r < RW; ++r)
    for (int m = 0; m < RX; ++m) out[(m0 + m) * N + n0 + r] = hsum(acc[r][m]);
}

// X: XBlocks (int8 x, Q a *Dot type) or const float* (float32 x, Q a block decoder).
// Four or more x rows (verify rows, small batches) go four at a time against half as many
// weight rows: each weight block is loaded and unpacked once per four x rows instead of
// two, and the accumulators still fit in registers. Every output is the same sum in the
// same order whichever tile computes it.
template <typename Q, int RW, typename X>
inline void row_tile(const X& x, const uint8_t* w, float* out, int64_t M, int64_t K, int64_t N,
                     int64_t row_bytes, int64_t n0) {
  int64_t m = 0;
  if constexpr (RW % kWideW == 0) {
    for (; m + kWideX <= M; m += kWideX)
      for (int r = 0; r < RW; r += kWideW)
        tile<Q, kWideW, kWideX>(x, w, out, K, N, row_bytes, m, n0 + r);
  }
  for (; m + kRowsX <= M; m += kRowsX) tile<Q, RW, kRowsX>(x, w, out, K, N, row_bytes, m, n0);
  for (; m < M; ++m) tile<Q, RW, 1>(x, w, out, K, N, row_bytes, m, n0);
}

template <typename Q, typename X>
void run_tiles(const X& x, const uint8_t* w, float* out, int64_t M, int64_t K, int64_t N) {
  const int64_t row_bytes = K / kBlock * Q::kBytes;
  const int64_t tiles = (N + kRowsW - 1) / kRowsW;
  at::parallel_for(0, tiles, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = t * kRowsW;
      if (n0 + kRowsW <= N) {
        row_tile<Q, kRowsW>(x, w, out, M, K, N, row_bytes, n0);
      } else {
        for (int64_t n = n0; n < N; ++n) row_tile<Q, 1>(x, w, out, M, K, N, row_bytes, n);
      }
    }
  });
}

template <typename QDot, typename Q>
void matmul(const float* x, const uint8_t* w, float* out, int64_t M, int64_t K, int64_t N,
            bool exact) {
  if (exact) return run_tiles<Q>(x, w, out, M, K, N);
  run_tiles<QDot>(quantize_x(x, M, K), w, out, M, K, N);
}

template <typename Q>
void dequantize(const uint8_t* w, float* out, int64_t N, int64_t K) {
  const int64_t nb = K / kBlock;
  at::parallel_for(0, N, 8, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t b = 0; b < nb; ++b) {
        v8 wv[4];
        Q::decode(w + (n * nb + b) * Q::kBytes, wv);
        std::memcpy(out + n * K + b * kBlock, wv, sizeof(wv));
      }
  });
}

int64_t block_bytes(int64_t qtype) {
  switch (qtype) {
    case 8: return Q8_0::kBytes;
    case 2: return Q4_0::kBytes;
    case 3: return Q4_1::kBytes;
  }
  TORCH_CHECK(false, "packed weights: unsupported ggml type ", qtype, " (Q8_0, Q4_0, Q4_1 are)");
}

void check_blocks(const at::Tensor& blocks, int64_t qtype, int64_t K) {
  TORCH_CHECK(blocks.dim() == 2 && blocks.scalar_type() == at::kByte && blocks.is_contiguous(),
              "blocks must be a contiguous 2-D uint8 tensor");
  TORCH_CHECK(K % kBlock == 0, "K must be a multiple of 32");
  TORCH_CHECK(blocks.size(1) == K / kBlock * block_bytes(qtype),
              "blocks [N, row_bytes] do not hold K = ", K, " values a row");
}

}  // namespace

namespace llm_gateway {

void quant_linear(const at::Tensor& out, const at::Tensor& x, const at::Tensor& blocks,
                  int64_t qtype, bool exact) {
  TORCH_CHECK(x.dim() == 2 && out.dim() == 2, "x and out must be 2-D");
  TORCH_CHECK(x.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              "quant_linear takes float32 x and out");
  TORCH_CHECK(x.is_contiguous() && out.is_contiguous(), "x and out must be contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = blocks.size(0);
  check_blocks(blocks, qtype, K);
  TORCH_CHECK(out.size(0) == M && out.size(1) == N, "out must be [M, N]");
  const float* xp = x.data_ptr<float>();
  const uint8_t* wp = blocks.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  switch (qtype) {
    case 8: return matmul<Q8_0Dot, Q8_0>(xp, wp, op, M, K, N, exact);
    case 2: return matmul<Q4_0Dot, Q4_0>(xp, wp, op, M, K, N, exact);
    case 3: return matmul<Q4_1Dot, Q4_1>(xp, wp, op, M, K, N, exact);
  }
}

void dequantize_packed(const at::Tensor& out, const at::Tensor& blocks, int64_t qtype) {
  TORCH_CHECK(out.dim() == 2 && out.scalar_type() == at::kFloat && out.is_contiguous(),
              "out must be a contiguous 2-D float32 tensor");
  const int64_t N = out.size(0), K = out.size(1);
  check_blocks(blocks, qtype, K);
  TORCH_CHECK(blocks.size(0) == N, "blocks and out disagree on N");
  const uint8_t* wp = blocks.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  switch (qtype) {
    case 8: return dequantize<Q8_0>(wp, op, N, K);
    case 2: return dequantize<Q4_0>(wp, op, N, K);
    case 3: return dequantize<Q4_1>(wp, op, N, K);
  }
}

}  // namespace llm_gateway

TORCH_LIBRARY_FRAGMENT(llm_gateway, m) {
  m.def("quant_linear(Tensor(a!) out, Tensor x, Tensor blocks, int qtype, bool exact) -> ()");
  m.def("dequantize_packed(Tensor(a!) out, Tensor blocks, int qtype) -> ()");
}

TORCH_LIBRARY_IMPL(llm_gateway, CPU, m) {
  m.impl("quant_linear", &llm_gateway::quant_linear);
  m.impl("dequantize_packed", &llm_gateway::dequantize_packed);
}
