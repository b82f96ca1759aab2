// Helpers shared by the C++ CPU ops in csrc/ops/ (header-only).
//
//   EMOFAST_DISPATCH_FLOAT_TYPES   dispatch over the contract's dtypes: float32, bfloat16, float16
//   is_float_type                  the same set, for argument checks
//   check_per_row_index            a [B] int32/int64 tensor argument (row_variant, pos_start)
//   read_row_variants              row_variant values, each in [-1, V)
//   read_pos_start                 pos_start values, each in [0, T] (zeros without pos_start)
//   for_each_edited_row            the parallel loop of a row-edit op over its B*T rows
//   edit_rows                      the out-of-place / in-place wrapper of a row-edit op
//   Elem<scalar_t>                 element <-> fp32 conversions the compiler can vectorise
//   EMOFAST_AVX2, has_avx2, load8, store8
//                                  AVX2/FMA/F16C loads and stores of 8 elements as fp32, for loops
//                                  picked at run time (setup.py builds without -mavx2)
//
// Every error message starts with the calling op's name (the `op` argument).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/bit_cast.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// float32, bfloat16 and float16 only (the contract of every op); kernels compute in fp32.
#define EMOFAST_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)                          \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)     \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)              \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace emofast {

inline bool is_float_type(at::ScalarType dt) {
  return dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf;
}

// ---- row-edit ops (masked_ablate, steer_add): row_variant [B], pos_start [B], the row loop ----

// t must be [B] int32/int64; `name` is the argument's name in the messages.
inline void check_per_row_index(const at::Tensor& t, const char* name, int64_t B, const char* op) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == B, op, ": ", name, " must be [B] = [", B,
              "], got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, op, ": ", name,
              " must be int32 or int64, got ", t.scalar_type());
}

// The variant of each batch row (int64), each -1 (row untouched) or in [0, V). row_variant must
// have passed check_per_row_index and be on CPU.
inline std::vector<int64_t> read_row_variants(const at::Tensor& row_variant, int64_t B, int64_t V,
                                              const char* op) {
  const at::Tensor rv = row_variant.to(at::kLong).contiguous();
  std::vector<int64_t> variant(rv.data_ptr<int64_t>(), rv.data_ptr<int64_t>() + B);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(variant[b] >= -1 && variant[b] < V, op, ": row_variant[", b, "] = ", variant[b],
                " is out of range: use -1 (no edit) or a variant in [0, V = ", V, ")");
  }
  return variant;
}

// The first edited position of each batch row (int64), each in [0, T] (T = no edit); all zeros
// without pos_start. pos_start must have passed check_per_row_index and be on CPU.
inline std::vector<int64_t> read_pos_start(const std::optional<at::Tensor>& pos_start, int64_t B,
                                           int64_t T, const char* op) {
  std::vector<int64_t> first_pos(B, 0);
  if (!pos_start.has_value()) return first_pos;
  const at::Tensor ps = pos_start->to(at::kLong).contiguous();
  for (int64_t b = 0; b < B; ++b) {
    first_pos[b] = ps.data_ptr<int64_t>()[b];
    TORCH_CHECK(first_pos[b] >= 0 && first_pos[b] <= T, op, ": pos_start[", b, "] = ",
                first_pos[b], " must lie in [0, T = ", T, "] (T = no edit)");
  }
  return first_pos;
}

// The loop of a row-edit op over the rows r = b * T + t of contiguous [B, T, F] tensors (raw_t:
// the element type as stored): edit_row(b, r) for each row its batch row edits (variant[b] >= 0 and
// t >= first_pos[b]); out of place, the other rows are copied from src to dst bit for bit.
// at::parallel_for (ATen's OpenMP backend) over the B*T rows.
template <typename raw_t, typename EditRow>
void for_each_edited_row(const raw_t* src, raw_t* dst, int64_t B, int64_t T, int64_t F,
                         const std::vector<int64_t>& variant, const std::vector<int64_t>& first_pos,
                         bool inplace, EditRow&& edit_row) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(F, 1));
  at::parallel_for(0, B * T, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / T, t = r - b * T;
      if (variant[b] < 0 || t < first_pos[b]) {
        if (!inplace) {
          std::memcpy(dst + r * F, src + r * F, static_cast<size_t>(F) * sizeof(raw_t));
        }
        continue;
      }
      edit_row(b, r);
    }
  });
}

// Runs edit(src, dst) on contiguous [B, T, features] tensors. Out of place (inplace false):
// src = x (contiguous), dst a new tensor, which is returned. In place: src = dst = x, or a
// contiguous copy of x written back through x's strides afterwards; returns x.
template <typename Edit>
at::Tensor edit_rows(const at::Tensor& x, bool inplace, Edit&& edit) {
  if (!inplace) {
    const at::Tensor src = x.contiguous();
    at::Tensor out = at::empty_like(src);
    edit(src, out);
    return out;
  }
  if (x.is_contiguous()) {
    edit(x, x);
  } else {
    const at::Tensor work = x.contiguous();
    edit(work, work);
    x.copy_(work);
  }
  return x;
}

// ---- element <-> fp32 ----

// Conversions the compiler can vectorise. bf16 works on its raw bits with the same
// round-to-nearest-even and NaN rule as c10::BFloat16, written branch-free.
template <typename scalar_t> struct Elem {
  using raw_t = scalar_t;
  static float load(raw_t v) { return static_cast<float>(v); }
  static raw_t store(float f) { return static_cast<raw_t>(f); }
};
template <> struct Elem<c10::BFloat16> {
  using raw_t = uint16_t;
  static float load(raw_t v) { return c10::bit_cast<float>(static_cast<uint32_t>(v) << 16); }
  static raw_t store(float f) {
    const uint32_t u = c10::bit_cast<uint32_t>(f);
    const uint16_t r = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    return f != f ? static_cast<uint16_t>(0x7FC0) : r;
  }
};

// ---- AVX2/FMA/F16C: 8 elements at a time as fp32 ----
// The wide loops carry a target attribute and are only called when has_avx2() says the CPU has
// the instructions.
#if defined(__x86_64__)
#define EMOFAST_AVX2 __attribute__((target("avx2,fma,f16c")))

inline bool has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok;
}

EMOFAST_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
EMOFAST_AVX2 inline __m256 load8(const c10::BFloat16* p) {  // bf16 -> fp32 is a 16-bit shift
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
EMOFAST_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

EMOFAST_AVX2 inline void store8(float* p, __m256 x) { _mm256_storeu_ps(p, x); }
EMOFAST_AVX2 inline void store8(c10::BFloat16* p, __m256 x) {
  // round to nearest even, NaN -> quiet NaN: the same rule as c10::BFloat16(float)
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb));
  const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC00000), _mm256_castps_si256(nan));
  r = _mm256_srli_epi32(r, 16);
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}
EMOFAST_AVX2 inline void store8(c10::Half* p, __m256 x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
}
#else
inline bool has_avx2() { return false; }
#endif

}  // namespace emofast
