// sae_decode on CPU: the sparse SAE decoder, forward and backward, as torch.ops.emofast.*.
//
//   out[n] = b_dec + sum_j values[n, j] * W_dec[indices[n, j]]           out [N, d_model]
//
// Only the k rows a token uses are read. Accumulation is fp32 for every dtype; the output has the
// dtype of values / W_dec (which must agree). Duplicate indices in a row simply add.
//
// Forward: at::parallel_for (ATen's OpenMP backend) over tokens; per token, 64 output columns
// stay in 8 AVX2 registers across its k rows (AVX2/FMA/F16C loops are picked at run time, since
// setup.py builds without -mavx2; portable loops otherwise).
// Backward (sae_decode_backward, wired up with torch.library.register_autograd in
// kernels/sae_decode.py):
//   grad_values[n, j] = <grad_out[n], W_dec[indices[n, j]]>          parallel over tokens
//   grad_W_dec[i]     = sum_{(n, j): indices[n, j] == i} values[n, j] * grad_out[n]
//                       parallel over column blocks of d_model, so no two threads write the same
//                       element: deterministic, no atomics, duplicates accumulate.
// Either gradient can be skipped (need_values / need_W_dec); a skipped one is returned as an empty
// tensor of shape [0].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common.h"

namespace emofast {
namespace {

constexpr int64_t kColBlock = 64;  // columns per task in the grad_W_dec scatter (256 B of fp32)

void check_decode_args(const at::Tensor& indices, const at::Tensor& values,
                       const at::Tensor& W_dec, const c10::optional<at::Tensor>& b_dec) {
  TORCH_CHECK(indices.dim() == 2, "sae_decode: indices must be [N, k], got shape ", indices.sizes());
  TORCH_CHECK(values.sizes() == indices.sizes(), "sae_decode: values must have the shape of indices ",
              indices.sizes(), ", got ", values.sizes());
  TORCH_CHECK(W_dec.dim() == 2, "sae_decode: W_dec must be [d_sae, d_model], got shape ", W_dec.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt,
              "sae_decode: indices must be int32 or int64, got ", indices.scalar_type());
  TORCH_CHECK(values.scalar_type() == W_dec.scalar_type(),
              "sae_decode: values and W_dec must have the same dtype, got ", values.scalar_type(),
              " and ", W_dec.scalar_type(), "; cast one of them");
  const auto dt = W_dec.scalar_type();
  TORCH_CHECK(is_float_type(dt),
              "sae_decode: W_dec and values must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(indices.device().is_cpu() && values.device().is_cpu() && W_dec.device().is_cpu(),
              "sae_decode (C++ op) runs on CPU tensors; got indices on ", indices.device(),
              ", values on ", values.device(), ", W_dec on ", W_dec.device());
  if (b_dec.has_value()) {
    TORCH_CHECK(b_dec->dim() == 1 && b_dec->size(0) == W_dec.size(1),
                "sae_decode: b_dec must be [d_model] = [", W_dec.size(1), "], got ", b_dec->sizes());
    TORCH_CHECK(b_dec->scalar_type() == W_dec.scalar_type(), "sae_decode: b_dec must have dtype ",
                W_dec.scalar_type(), ", got ", b_dec->scalar_type());
    TORCH_CHECK(b_dec->device().is_cpu(), "sae_decode: b_dec must be on CPU, got ", b_dec->device());
  }
  if (indices.numel() > 0) {
    auto mm = at::aminmax(indices);
    int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < W_dec.size(0), "sae_decode: indices must lie in [0, d_sae = ",
                W_dec.size(0), "), got min ", lo, " max ", hi);
  }
}

// ---- inner loops: portable scalar versions, plus AVX2/FMA/F16C versions picked at run time ----
// (setup.py compiles without -mavx2, so the wide versions carry a target attribute and are only
// called when has_avx2(); load8 / store8 are in common.h.)

// acc[0:n] += v * w[0:n]
template <typename scalar_t>
inline void axpy(float* __restrict acc, const scalar_t* __restrict w, float v, int64_t n) {
  for (int64_t d = 0; d < n; ++d) acc[d] += v * static_cast<float>(w[d]);
}

template <typename scalar_t>
inline float dot(const scalar_t* __restrict a, const scalar_t* __restrict b, int64_t n) {
  float s = 0.f;
  for (int64_t d = 0; d < n; ++d) s += static_cast<float>(a[d]) * static_cast<float>(b[d]);
  return s;
}

// dst[0:D] = b[0:D] (or 0) + sum_j vals[j] * W[rows[j], 0:D]
template <typename scalar_t>
void decode_token(const int64_t* rows, const float* vals, int64_t k, const scalar_t* W,
                  const scalar_t* b, float* dst, int64_t D) {
  for (int64_t d = 0; d < D; ++d) dst[d] = b ? static_cast<float>(b[d]) : 0.f;
  for (int64_t j = 0; j < k; ++j) axpy(dst, W + rows[j] * D, vals[j], D);
}

#if defined(__x86_64__)
// Same as decode_token, writing the output dtype directly: the accumulator for 64 columns stays
// in 8 registers across the k rows.
template <typename scalar_t>
EMOFAST_AVX2 void decode_token_avx2(const int64_t* rows, const float* vals, int64_t k,
                                    const scalar_t* W, const scalar_t* b, scalar_t* dst, int64_t D) {
  int64_t c = 0;
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    // bf16: one 256-bit load holds 16 columns; interleaving with zeros gives their fp32 values
    // without a shift, in lane order {0-3, 8-11} (lo) and {4-7, 12-15} (hi), undone at the store
    const __m256i zero = _mm256_setzero_si256();
    for (; c + 64 <= D; c += 64) {
      __m256 a[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
      for (int64_t j = 0; j < k; ++j) {
        const __m256 v = _mm256_set1_ps(vals[j]);
        const __m256i* r = reinterpret_cast<const __m256i*>(W + rows[j] * D + c);
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          const __m256i w = _mm256_loadu_si256(r + i);
          a[2 * i] = _mm256_fmadd_ps(v, _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, w)), a[2 * i]);
          a[2 * i + 1] =
              _mm256_fmadd_ps(v, _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, w)), a[2 * i + 1]);
        }
      }
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        __m256 c0 = _mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x20);  // columns 0-7
        __m256 c1 = _mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x31);  // columns 8-15
        if (b) {
          c0 = _mm256_add_ps(c0, load8(b + c + 16 * i));
          c1 = _mm256_add_ps(c1, load8(b + c + 16 * i + 8));
        }
        store8(dst + c + 16 * i, c0);
        store8(dst + c + 16 * i + 8, c1);
      }
    }
  }
  for (; c + 64 <= D; c += 64) {
    __m256 a[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) a[i] = b ? load8(b + c + 8 * i) : _mm256_setzero_ps();
    for (int64_t j = 0; j < k; ++j) {
      const __m256 v = _mm256_set1_ps(vals[j]);
      const scalar_t* r = W + rows[j] * D + c;
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) a[i] = _mm256_fmadd_ps(v, load8(r + 8 * i), a[i]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) store8(dst + c + 8 * i, a[i]);
  }
  for (; c + 8 <= D; c += 8) {
    __m256 a = b ? load8(b + c) : _mm256_setzero_ps();
    for (int64_t j = 0; j < k; ++j)
      a = _mm256_fmadd_ps(_mm256_set1_ps(vals[j]), load8(W + rows[j] * D + c), a);
    store8(dst + c, a);
  }
  for (; c < D; ++c) {
    float a = b ? static_cast<float>(b[c]) : 0.f;
    for (int64_t j = 0; j < k; ++j) a += vals[j] * static_cast<float>(W[rows[j] * D + c]);
    dst[c] = static_cast<scalar_t>(a);
  }
}

EMOFAST_AVX2 inline float hsum8(__m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
}

// out[i] = <a, r[i]> for the R rows r[0..R): a is loaded once per 8 columns for all R rows.
template <int R, typename scalar_t>
EMOFAST_AVX2 void dots_avx2(const scalar_t* a, const scalar_t* const* r, float* out, int64_t n) {
  __m256 s[R];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) s[i] = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    const __m256 av = load8(a + d);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) s[i] = _mm256_fmadd_ps(av, load8(r[i] + d), s[i]);
  }
  for (int i = 0; i < R; ++i) {
    float t = hsum8(s[i]);
    for (int64_t e = d; e < n; ++e) t += static_cast<float>(a[e]) * static_cast<float>(r[i][e]);
    out[i] = t;
  }
}

// gv[j] = <g, W[rows[j]]> for j < k, four rows at a time
template <typename scalar_t>
EMOFAST_AVX2 void grad_values_token_avx2(const scalar_t* g, const int64_t* rows, int64_t k,
                                         const scalar_t* W, float* gv, int64_t D) {
  const scalar_t* r[4];
  int64_t j = 0;
  for (; j + 4 <= k; j += 4) {
    for (int i = 0; i < 4; ++i) r[i] = W + rows[j + i] * D;
    dots_avx2<4>(g, r, gv + j, D);
  }
  for (; j < k; ++j) {
    r[0] = W + rows[j] * D;
    dots_avx2<1>(g, r, gv + j, D);
  }
}

template <typename scalar_t>
EMOFAST_AVX2 void axpy_avx2(float* acc, const scalar_t* w, float v, int64_t n) {
  const __m256 vv = _mm256_set1_ps(v);
  int64_t d = 0;
  for (; d + 8 <= n; d += 8)
    _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(vv, load8(w + d), _mm256_loadu_ps(acc + d)));
  for (; d < n; ++d) acc[d] += v * static_cast<float>(w[d]);
}
#else
template <typename scalar_t>
void decode_token_avx2(const int64_t*, const float*, int64_t, const scalar_t*, const scalar_t*,
                       scalar_t*, int64_t) {}
template <typename scalar_t>
void grad_values_token_avx2(const scalar_t*, const int64_t*, int64_t, const scalar_t*, float*,
                            int64_t) {}
template <typename scalar_t>
void axpy_avx2(float*, const scalar_t*, float, int64_t) {}
#endif

// ---- the three loops over tokens / columns ----

template <typename scalar_t, typename index_t>
void decode_forward(const index_t* idx,       // [N, k]
                    const scalar_t* val,      // [N, k]
                    const scalar_t* W,        // [d_sae, d_model]
                    const scalar_t* b,        // [d_model] or nullptr
                    scalar_t* out,            // [N, d_model]
                    int64_t N, int64_t k, int64_t d_model) {
  const bool wide = has_avx2();
  at::parallel_for(0, N, 8, [&](int64_t n0, int64_t n1) {
    std::vector<int64_t> rows(k);
    std::vector<float> vals(k);
    std::vector<float> buf(wide ? 0 : d_model);  // fp32 row for the portable path
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t j = 0; j < k; ++j) {
        rows[j] = static_cast<int64_t>(idx[n * k + j]);
        vals[j] = static_cast<float>(val[n * k + j]);
      }
      scalar_t* o = out + n * d_model;
      if (wide) {
        decode_token_avx2(rows.data(), vals.data(), k, W, b, o, d_model);
      } else {
        decode_token(rows.data(), vals.data(), k, W, b, buf.data(), d_model);
        for (int64_t d = 0; d < d_model; ++d) o[d] = static_cast<scalar_t>(buf[d]);
      }
    }
  });
}

template <typename scalar_t, typename index_t>
void decode_grad_values(const scalar_t* g,    // [N, d_model]
                        const index_t* idx,   // [N, k]
                        const scalar_t* W,    // [d_sae, d_model]
                        scalar_t* gv,         // [N, k]
                        int64_t N, int64_t k, int64_t d_model) {
  const bool wide = has_avx2();
  at::parallel_for(0, N, 8, [&](int64_t n0, int64_t n1) {
    std::vector<int64_t> rows(k);
    std::vector<float> out(k);
    for (int64_t n = n0; n < n1; ++n) {
      const scalar_t* gn = g + n * d_model;
      for (int64_t j = 0; j < k; ++j) rows[j] = static_cast<int64_t>(idx[n * k + j]);
      if (wide) {
        grad_values_token_avx2(gn, rows.data(), k, W, out.data(), d_model);
      } else {
        for (int64_t j = 0; j < k; ++j) out[j] = dot(gn, W + rows[j] * d_model, d_model);
      }
      for (int64_t j = 0; j < k; ++j) gv[n * k + j] = static_cast<scalar_t>(out[j]);
    }
  });
}

template <typename scalar_t, typename index_t>
void decode_grad_W(const scalar_t* g,         // [N, d_model]
                   const index_t* idx,        // [N, k]
                   const scalar_t* val,       // [N, k]
                   float* gW,                 // [d_sae, d_model] fp32, zeroed
                   int64_t N, int64_t k, int64_t d_model) {
  const bool wide = has_avx2();
  const int64_t n_blocks = (d_model + kColBlock - 1) / kColBlock;
  at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    const int64_t c0 = b0 * kColBlock, c1 = std::min(d_model, b1 * kColBlock), w = c1 - c0;
    for (int64_t n = 0; n < N; ++n) {
      const scalar_t* gn = g + n * d_model + c0;
      for (int64_t j = 0; j < k; ++j) {
        float* dst = gW + static_cast<int64_t>(idx[n * k + j]) * d_model + c0;
        const float v = static_cast<float>(val[n * k + j]);
        if (wide) axpy_avx2(dst, gn, v, w);
        else axpy(dst, gn, v, w);
      }
    }
  });
}

at::Tensor sae_decode_cpu(const at::Tensor& indices, const at::Tensor& values,
                          const at::Tensor& W_dec, const c10::optional<at::Tensor>& b_dec) {
  check_decode_args(indices, values, W_dec, b_dec);
  auto idx = indices.contiguous();
  auto val = values.contiguous();
  auto W = W_dec.contiguous();
  at::Tensor b = b_dec.has_value() ? b_dec->contiguous() : at::Tensor();
  const int64_t N = idx.size(0), k = idx.size(1), d_model = W.size(1);
  auto out = at::empty({N, d_model}, W.options());
  EMOFAST_DISPATCH_FLOAT_TYPES(W.scalar_type(), "sae_decode", [&] {
    using s_t = scalar_t;
    const s_t* bp = b.defined() ? b.const_data_ptr<s_t>() : nullptr;
    if (idx.scalar_type() == at::kInt)
      decode_forward<s_t, int32_t>(idx.const_data_ptr<int32_t>(), val.const_data_ptr<s_t>(),
                                   W.const_data_ptr<s_t>(), bp, out.mutable_data_ptr<s_t>(), N, k, d_model);
    else
      decode_forward<s_t, int64_t>(idx.const_data_ptr<int64_t>(), val.const_data_ptr<s_t>(),
                                   W.const_data_ptr<s_t>(), bp, out.mutable_data_ptr<s_t>(), N, k, d_model);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sae_decode_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& indices, const at::Tensor& values,
    const at::Tensor& W_dec, bool need_values, bool need_W_dec) {
  check_decode_args(indices, values, W_dec, c10::nullopt);
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == indices.size(0) &&
                  grad_out.size(1) == W_dec.size(1),
              "sae_decode_backward: grad_out must be [N, d_model] = [", indices.size(0), ", ",
              W_dec.size(1), "], got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == W_dec.scalar_type(), "sae_decode_backward: grad_out must have dtype ",
              W_dec.scalar_type(), ", got ", grad_out.scalar_type());
  auto g = grad_out.contiguous();
  auto idx = indices.contiguous();
  auto val = values.contiguous();
  // W is read only for grad values: the encoder's W_enc gradient passes a shape-only tensor
  auto W = need_values ? W_dec.contiguous() : W_dec;
  const int64_t N = idx.size(0), k = idx.size(1), d_model = W.size(1);
  at::Tensor gv = need_values ? at::empty({N, k}, val.options()) : at::empty({0}, val.options());
  at::Tensor gW32;  // fp32 accumulator: grad_W_dec itself for fp32, converted after for half types
  if (need_W_dec) gW32 = at::zeros(W.sizes(), W.options().dtype(at::kFloat));
  EMOFAST_DISPATCH_FLOAT_TYPES(W.scalar_type(), "sae_decode_backward", [&] {
    using s_t = scalar_t;
    auto run = [&](auto* ip) {
      using i_t = std::remove_const_t<std::remove_pointer_t<decltype(ip)>>;
      if (need_values)
        decode_grad_values<s_t, i_t>(g.const_data_ptr<s_t>(), ip, W.const_data_ptr<s_t>(),
                                     gv.mutable_data_ptr<s_t>(), N, k, d_model);
      if (need_W_dec)
        decode_grad_W<s_t, i_t>(g.const_data_ptr<s_t>(), ip, val.const_data_ptr<s_t>(),
                                gW32.mutable_data_ptr<float>(), N, k, d_model);
    };
    if (idx.scalar_type() == at::kInt) run(idx.const_data_ptr<int32_t>());
    else run(idx.const_data_ptr<int64_t>());
  });
  at::Tensor gW = need_W_dec ? gW32.to(W.scalar_type()) : at::empty({0}, W.options());
  return {gv, gW};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(emofast, m) {
  m.set_python_module("emofast.kernels.cpp");  // registers the fake kernels and autograd
  m.def("sae_decode(Tensor indices, Tensor values, Tensor W_dec, Tensor? b_dec) -> Tensor");
  m.def("sae_decode_backward(Tensor grad_out, Tensor indices, Tensor values, Tensor W_dec, "
        "bool need_values, bool need_W_dec) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(emofast, CPU, m) {
  m.impl("sae_decode", &sae_decode_cpu);
  m.impl("sae_decode_backward", &sae_decode_backward_cpu);
}

}  // namespace emofast
