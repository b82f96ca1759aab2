// steer_add on CPU: add each batch row's steering direction, as torch.ops.emofast.*.
//
//   h [B, T, d_model]; row_variant [B] (-1 = row untouched); directions [V, d_model];
//   alpha [B]; at positions t >= pos_start[b] (all positions without pos_start):
//     c        = alpha[b]                      (rms = false)
//     c        = alpha[b] * sqrt(mean(h[b, t]**2))   over d_model, of the ORIGINAL h (rms;
//                the sum of squares is accumulated in fp64, c is fp32)
//     h[b, t] += c * directions[row_variant[b]]
// The sum is computed in fp32 and rounded once to h's dtype; directions and alpha may be any
// floating dtype (they are read as fp32). steer_add returns a new tensor; steer_add_ edits h.
//
// at::parallel_for (ATen's OpenMP backend) over the B*T rows; per row one optional
// sum-of-squares pass and one add pass, both `omp simd` loops over contiguous features.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace emofast {
namespace {

void check_args(const at::Tensor& h, const at::Tensor& row_variant, const at::Tensor& directions,
                const at::Tensor& alpha, const std::optional<at::Tensor>& pos_start,
                std::vector<int64_t>& variant, std::vector<int64_t>& first_pos) {
  TORCH_CHECK(h.dim() == 3, "steer_add: h must be [B, T, d_model], got shape ", h.sizes());
  const auto dt = h.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "steer_add: h must be float32, bfloat16 or float16, got ", dt);
  const int64_t B = h.size(0), T = h.size(1), D = h.size(2);
  TORCH_CHECK(row_variant.dim() == 1 && row_variant.size(0) == B,
              "steer_add: row_variant must be [B] = [", B, "], got shape ", row_variant.sizes());
  TORCH_CHECK(row_variant.scalar_type() == at::kInt || row_variant.scalar_type() == at::kLong,
              "steer_add: row_variant must be int32 or int64, got ", row_variant.scalar_type());
  TORCH_CHECK(directions.dim() == 2 && directions.size(1) == D,
              "steer_add: directions must be [V, d_model] with d_model = ", D, ", got shape ",
              directions.sizes());
  TORCH_CHECK(at::isFloatingType(directions.scalar_type()),
              "steer_add: directions must be floating point, got ", directions.scalar_type());
  TORCH_CHECK(alpha.dim() == 1 && alpha.size(0) == B, "steer_add: alpha must be [B] = [", B,
              "], got shape ", alpha.sizes());
  TORCH_CHECK(at::isFloatingType(alpha.scalar_type()),
              "steer_add: alpha must be floating point, got ", alpha.scalar_type());
  bool all_cpu = h.is_cpu() && row_variant.is_cpu() && directions.is_cpu() && alpha.is_cpu();
  if (pos_start.has_value()) {
    TORCH_CHECK(pos_start->dim() == 1 && pos_start->size(0) == B,
                "steer_add: pos_start must be [B] = [", B, "], got shape ", pos_start->sizes());
    TORCH_CHECK(pos_start->scalar_type() == at::kInt || pos_start->scalar_type() == at::kLong,
                "steer_add: pos_start must be int32 or int64, got ", pos_start->scalar_type());
    all_cpu = all_cpu && pos_start->is_cpu();
  }
  TORCH_CHECK(all_cpu, "steer_add (C++ op) runs on CPU tensors; move every argument to CPU");

  const int64_t V = directions.size(0);
  const at::Tensor rv = row_variant.to(at::kLong).contiguous();
  variant.assign(rv.data_ptr<int64_t>(), rv.data_ptr<int64_t>() + B);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(variant[b] >= -1 && variant[b] < V, "steer_add: row_variant[", b, "] = ",
                variant[b], " is out of range: use -1 (no edit) or a variant in [0, V = ", V, ")");
  }
  first_pos.assign(B, 0);
  if (pos_start.has_value()) {
    const at::Tensor ps = pos_start->to(at::kLong).contiguous();
    for (int64_t b = 0; b < B; ++b) {
      first_pos[b] = ps.data_ptr<int64_t>()[b];
      TORCH_CHECK(first_pos[b] >= 0 && first_pos[b] <= T, "steer_add: pos_start[", b, "] = ",
                  first_pos[b], " must lie in [0, T = ", T, "] (T = no edit)");
    }
  }
}

// Element <-> fp32 conversions the compiler can vectorise. bf16 works on its raw bits with the
// same round-to-nearest-even and NaN rule as c10::BFloat16, written branch-free.
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

template <typename scalar_t>
void run_rows(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& dirs,
              const at::Tensor& alpha, const std::vector<int64_t>& variant,
              const std::vector<int64_t>& first_pos, bool rms, bool inplace) {
  const int64_t B = src.size(0), T = src.size(1), D = src.size(2);
  using E = Elem<scalar_t>;
  using raw_t = typename E::raw_t;
  const raw_t* src_p = reinterpret_cast<const raw_t*>(src.data_ptr<scalar_t>());
  raw_t* dst_p = reinterpret_cast<raw_t*>(dst.data_ptr<scalar_t>());
  const float* dir_p = dirs.data_ptr<float>();
  const float* alpha_p = alpha.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1));
  at::parallel_for(0, B * T, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / T, t = r - b * T;
      const raw_t* hs = src_p + r * D;
      raw_t* hd = dst_p + r * D;
      if (variant[b] < 0 || t < first_pos[b]) {
        if (!inplace) std::memcpy(hd, hs, static_cast<size_t>(D) * sizeof(raw_t));
        continue;
      }
      float c = alpha_p[b];
      if (rms) {
        double ss = 0.0;  // fp64 sum: accurate for any d_model (a row is small; still SIMD)
#pragma omp simd reduction(+ : ss)
        for (int64_t i = 0; i < D; ++i) {
          const double v = E::load(hs[i]);
          ss += v * v;
        }
        c = c * static_cast<float>(std::sqrt(ss / static_cast<double>(D)));
      }
      const float* dv = dir_p + variant[b] * D;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) {
        hd[i] = E::store(E::load(hs[i]) + c * dv[i]);
      }
    }
  });
}

void dispatch(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& directions,
              const at::Tensor& alpha, const std::vector<int64_t>& variant,
              const std::vector<int64_t>& first_pos, bool rms, bool inplace) {
  if (src.numel() == 0) return;
  const at::Tensor dirs = directions.to(at::kFloat).contiguous();  // [V, d_model], no-op if fp32
  const at::Tensor a = alpha.to(at::kFloat).contiguous();          // [B]
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "steer_add", [&] {
    run_rows<scalar_t>(src, dst, dirs, a, variant, first_pos, rms, inplace);
  });
}

at::Tensor steer_add_cpu(const at::Tensor& h, const at::Tensor& row_variant,
                         const at::Tensor& directions, const at::Tensor& alpha,
                         const std::optional<at::Tensor>& pos_start, bool rms) {
  std::vector<int64_t> variant, first_pos;
  check_args(h, row_variant, directions, alpha, pos_start, variant, first_pos);
  const at::Tensor src = h.contiguous();
  at::Tensor out = at::empty_like(src);
  dispatch(src, out, directions, alpha, variant, first_pos, rms, false);
  return out;
}

void steer_add__cpu(at::Tensor& h, const at::Tensor& row_variant, const at::Tensor& directions,
                    const at::Tensor& alpha, const std::optional<at::Tensor>& pos_start, bool rms) {
  std::vector<int64_t> variant, first_pos;
  check_args(h, row_variant, directions, alpha, pos_start, variant, first_pos);
  if (h.is_contiguous()) {
    dispatch(h, h, directions, alpha, variant, first_pos, rms, true);
  } else {  // edit a contiguous copy, then write it back through h's strides
    at::Tensor work = h.contiguous();
    dispatch(work, work, directions, alpha, variant, first_pos, rms, true);
    h.copy_(work);
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(emofast, m) {
  m.set_python_module("emofast.kernels.steer_add");  // holds the fake (meta) kernels
  m.def("steer_add(Tensor h, Tensor row_variant, Tensor directions, Tensor alpha, "
        "Tensor? pos_start, bool rms) -> Tensor");
  m.def("steer_add_(Tensor(a!) h, Tensor row_variant, Tensor directions, Tensor alpha, "
        "Tensor? pos_start, bool rms) -> ()");
}

TORCH_LIBRARY_IMPL(emofast, CPU, m) {
  m.impl("steer_add", &steer_add_cpu);
  m.impl("steer_add_", &steer_add__cpu);
}

}  // namespace emofast
