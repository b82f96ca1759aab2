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
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"

namespace emofast {
namespace {

void check_args(const at::Tensor& h, const at::Tensor& row_variant, const at::Tensor& directions,
                const at::Tensor& alpha, const std::optional<at::Tensor>& pos_start,
                std::vector<int64_t>& variant, std::vector<int64_t>& first_pos) {
  TORCH_CHECK(h.dim() == 3, "steer_add: h must be [B, T, d_model], got shape ", h.sizes());
  const auto dt = h.scalar_type();
  TORCH_CHECK(is_float_type(dt), "steer_add: h must be float32, bfloat16 or float16, got ", dt);
  const int64_t B = h.size(0), T = h.size(1), D = h.size(2);
  check_per_row_index(row_variant, "row_variant", B, "steer_add");
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
    check_per_row_index(*pos_start, "pos_start", B, "steer_add");
    all_cpu = all_cpu && pos_start->is_cpu();
  }
  TORCH_CHECK(all_cpu, "steer_add (C++ op) runs on CPU tensors; move every argument to CPU");

  variant = read_row_variants(row_variant, B, directions.size(0), "steer_add");
  first_pos = read_pos_start(pos_start, B, T, "steer_add");
}

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
  auto edit_row = [&](int64_t b, int64_t r) {
    const raw_t* hs = src_p + r * D;
    raw_t* hd = dst_p + r * D;
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
  };
  for_each_edited_row(src_p, dst_p, B, T, D, variant, first_pos, inplace, edit_row);
}

void dispatch(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& directions,
              const at::Tensor& alpha, const std::vector<int64_t>& variant,
              const std::vector<int64_t>& first_pos, bool rms, bool inplace) {
  if (src.numel() == 0) return;
  const at::Tensor dirs = directions.to(at::kFloat).contiguous();  // [V, d_model], no-op if fp32
  const at::Tensor a = alpha.to(at::kFloat).contiguous();          // [B]
  EMOFAST_DISPATCH_FLOAT_TYPES(src.scalar_type(), "steer_add", [&] {
    run_rows<scalar_t>(src, dst, dirs, a, variant, first_pos, rms, inplace);
  });
}

// Both ops: checks, then the edit out of place (returns the new tensor) or in place (returns h).
at::Tensor checked_edit(const at::Tensor& h, const at::Tensor& row_variant,
                        const at::Tensor& directions, const at::Tensor& alpha,
                        const std::optional<at::Tensor>& pos_start, bool rms, bool inplace) {
  std::vector<int64_t> variant, first_pos;
  check_args(h, row_variant, directions, alpha, pos_start, variant, first_pos);
  return edit_rows(h, inplace, [&](const at::Tensor& src, const at::Tensor& dst) {
    dispatch(src, dst, directions, alpha, variant, first_pos, rms, inplace);
  });
}

at::Tensor steer_add_cpu(const at::Tensor& h, const at::Tensor& row_variant,
                         const at::Tensor& directions, const at::Tensor& alpha,
                         const std::optional<at::Tensor>& pos_start, bool rms) {
  return checked_edit(h, row_variant, directions, alpha, pos_start, rms, false);
}

void steer_add__cpu(at::Tensor& h, const at::Tensor& row_variant, const at::Tensor& directions,
                    const at::Tensor& alpha, const std::optional<at::Tensor>& pos_start, bool rms) {
  checked_edit(h, row_variant, directions, alpha, pos_start, rms, true);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(emofast, m) {
  m.set_python_module("emofast.kernels.cpp");  // registers the fake kernels and autograd
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
