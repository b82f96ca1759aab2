// masked_ablate on CPU: edit the units each batch row's variant selects, as torch.ops.emofast.*.
//
//   x [B, T, W]; row_variant [B] (-1 = row untouched); mask [V, n_words] int32, packed bits;
//   unit u (features u*group .. u*group+group-1) of variant v is bit (u % 32) of mask[v, u / 32].
//   edited feature := 0 (zero) | fill[w] (mean) | fill[b, t, w] (patch) | x * scale (scale)
//   at positions t >= pos_start[b] (all positions without pos_start). Mask bits past the last
//   unit are ignored.
//
// masked_ablate returns a new tensor; masked_ablate_ edits x in place. fill must already have
// x's dtype (the Python wrapper casts it). The scale product is computed in fp32 and rounded once.
//
// Plan: expand each batch row's variant into a per-feature select mask (all-ones / all-zeros
// bits of the element width, [B, W], 1/T of the work), then one branch-free pass per row
// (at::parallel_for = ATen's OpenMP backend over B*T rows):
//   out = (x & ~sel) | (new & sel)
// which the compiler vectorises; rows with no edit are a memcpy (or nothing, in place).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"

namespace emofast {
namespace {

enum class Mode { kZero, kMean, kPatch, kScale };

Mode parse_mode(c10::string_view mode) {
  if (mode == "zero") return Mode::kZero;
  if (mode == "mean") return Mode::kMean;
  if (mode == "patch") return Mode::kPatch;
  if (mode == "scale") return Mode::kScale;
  TORCH_CHECK(false, "masked_ablate: mode must be one of 'zero', 'mean', 'patch', 'scale'; got '",
              std::string(mode), "'");
}

// Unsigned integer of the element's width: selects are done on raw bits, so they are exact.
template <size_t N> struct Bits;
template <> struct Bits<2> { using type = uint16_t; };
template <> struct Bits<4> { using type = uint32_t; };
template <> struct Bits<8> { using type = uint64_t; };

// Checks every argument and returns the per-batch-row variant (int64) and first edited position.
Mode check_args(const at::Tensor& x, const at::Tensor& row_variant, const at::Tensor& mask,
                c10::string_view mode_name, const std::optional<at::Tensor>& fill, int64_t group,
                const std::optional<at::Tensor>& pos_start, std::vector<int64_t>& variant,
                std::vector<int64_t>& first_pos) {
  const Mode mode = parse_mode(mode_name);
  TORCH_CHECK(x.dim() == 3, "masked_ablate: x must be [B, T, W], got shape ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(is_float_type(dt), "masked_ablate: x must be float32, bfloat16 or float16, got ", dt);
  const int64_t B = x.size(0), T = x.size(1), W = x.size(2);
  check_per_row_index(row_variant, "row_variant", B, "masked_ablate");
  TORCH_CHECK(mask.dim() == 2, "masked_ablate: mask must be [V, n_words], got shape ",
              mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kInt,
              "masked_ablate: mask must be int32 (packed bits), got ", mask.scalar_type());
  TORCH_CHECK(group >= 1, "masked_ablate: group must be >= 1, got ", group);
  TORCH_CHECK(W % group == 0, "masked_ablate: W = ", W, " is not divisible by group = ", group);
  const int64_t n_units = W / group, need_words = (n_units + 31) / 32;
  TORCH_CHECK(mask.size(1) >= need_words, "masked_ablate: mask has ", mask.size(1),
              " words per variant but W / group = ", n_units, " units need ", need_words);
  bool all_cpu = x.is_cpu() && row_variant.is_cpu() && mask.is_cpu();
  if (mode == Mode::kMean || mode == Mode::kPatch) {
    TORCH_CHECK(fill.has_value(), "masked_ablate: mode '", std::string(mode_name),
                "' needs a fill tensor");
    const auto want = mode == Mode::kMean ? std::vector<int64_t>{W} : std::vector<int64_t>{B, T, W};
    TORCH_CHECK(fill->sizes().vec() == want, "masked_ablate: fill for mode '",
                std::string(mode_name), "' must have shape ", at::IntArrayRef(want), ", got ",
                fill->sizes());
    TORCH_CHECK(fill->scalar_type() == dt, "masked_ablate: fill must have x's dtype ", dt, ", got ",
                fill->scalar_type(), " (the Python wrapper casts it)");
    all_cpu = all_cpu && fill->is_cpu();
  } else {
    TORCH_CHECK(!fill.has_value(), "masked_ablate: mode '", std::string(mode_name),
                "' takes no fill tensor (scale passes its factor as `scale`)");
  }
  if (pos_start.has_value()) {
    check_per_row_index(*pos_start, "pos_start", B, "masked_ablate");
    all_cpu = all_cpu && pos_start->is_cpu();
  }
  TORCH_CHECK(all_cpu, "masked_ablate (C++ op) runs on CPU tensors; move every argument to CPU");

  variant = read_row_variants(row_variant, B, mask.size(0), "masked_ablate");
  first_pos = read_pos_start(pos_start, B, T, "masked_ablate");
  return mode;
}

// x * scale on raw element bits: fp32 product, rounded once (Elem: bf16 rounds branch-free, so
// the loop vectorises).
template <typename scalar_t>
typename Bits<sizeof(scalar_t)>::type scaled_bits(typename Bits<sizeof(scalar_t)>::type s,
                                                  float scale) {
  using E = Elem<scalar_t>;
  using raw_t = typename E::raw_t;
  return c10::bit_cast<typename Bits<sizeof(scalar_t)>::type>(
      E::store(E::load(c10::bit_cast<raw_t>(s)) * scale));
}

// One row: dst = (src & ~sel) | (new & sel), new given by the mode. Branch-free over features.
template <typename scalar_t, Mode M>
void blend_row(const scalar_t* src, scalar_t* dst, const scalar_t* fill_row,
               const typename Bits<sizeof(scalar_t)>::type* sel, int64_t W, float scale) {
  using bits_t = typename Bits<sizeof(scalar_t)>::type;
  const bits_t* s = reinterpret_cast<const bits_t*>(src);
  bits_t* d = reinterpret_cast<bits_t*>(dst);
  const bits_t* f = reinterpret_cast<const bits_t*>(fill_row);
  for (int64_t i = 0; i < W; ++i) {
    bits_t nv = 0;
    if constexpr (M == Mode::kMean || M == Mode::kPatch) nv = f[i];
    if constexpr (M == Mode::kScale) nv = scaled_bits<scalar_t>(s[i], scale);
    d[i] = (s[i] & static_cast<bits_t>(~sel[i])) | (nv & sel[i]);
  }
}

template <typename scalar_t, Mode M>
void run_rows(const at::Tensor& src, const at::Tensor& dst, const std::optional<at::Tensor>& fill,
              const at::Tensor& mask, int64_t group, const std::vector<int64_t>& variant,
              const std::vector<int64_t>& first_pos, float scale, bool inplace) {
  using bits_t = typename Bits<sizeof(scalar_t)>::type;
  const int64_t B = src.size(0), T = src.size(1), W = src.size(2);
  const int64_t n_words = mask.size(1);
  const int32_t* mask_p = mask.data_ptr<int32_t>();

  // Per batch row: the feature select mask of its variant (all ones = edited). [B, W]
  std::vector<bits_t> sel(static_cast<size_t>(B * W), 0);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (variant[b] < 0 || first_pos[b] >= T) continue;
      const int32_t* words = mask_p + variant[b] * n_words;
      bits_t* sb = sel.data() + b * W;
      for (int64_t w = 0; w < W; ++w) {
        const int64_t u = w / group;
        const uint32_t word = static_cast<uint32_t>(words[u >> 5]);
        sb[w] = ((word >> (u & 31)) & 1u) ? static_cast<bits_t>(~bits_t(0)) : bits_t(0);
      }
    }
  });

  const scalar_t* src_p = src.data_ptr<scalar_t>();
  scalar_t* dst_p = dst.data_ptr<scalar_t>();
  const scalar_t* fill_p = fill.has_value() ? fill->data_ptr<scalar_t>() : nullptr;
  auto edit_row = [&](int64_t b, int64_t r) {
    const scalar_t* fr = nullptr;
    if constexpr (M == Mode::kMean) fr = fill_p;
    if constexpr (M == Mode::kPatch) fr = fill_p + r * W;
    blend_row<scalar_t, M>(src_p + r * W, dst_p + r * W, fr, sel.data() + b * W, W, scale);
  };
  for_each_edited_row(src_p, dst_p, B, T, W, variant, first_pos, inplace, edit_row);
}

void dispatch(const at::Tensor& src, const at::Tensor& dst, Mode mode,
              const std::optional<at::Tensor>& fill, const at::Tensor& mask, int64_t group,
              const std::vector<int64_t>& variant, const std::vector<int64_t>& first_pos,
              double scale, bool inplace) {
  if (src.numel() == 0) return;
  const auto dt = src.scalar_type();
  EMOFAST_DISPATCH_FLOAT_TYPES(dt, "masked_ablate", [&] {
    auto run = [&](auto m) {  // m: std::integral_constant<Mode, ...>
      run_rows<scalar_t, decltype(m)::value>(src, dst, fill, mask, group, variant, first_pos,
                                             static_cast<float>(scale), inplace);
    };
    switch (mode) {
      case Mode::kZero: run(std::integral_constant<Mode, Mode::kZero>{}); break;
      case Mode::kMean: run(std::integral_constant<Mode, Mode::kMean>{}); break;
      case Mode::kPatch: run(std::integral_constant<Mode, Mode::kPatch>{}); break;
      case Mode::kScale: run(std::integral_constant<Mode, Mode::kScale>{}); break;
    }
  });
}

// Both ops: checks, then the edit out of place (returns the new tensor) or in place (returns x).
at::Tensor checked_edit(const at::Tensor& x, const at::Tensor& row_variant, const at::Tensor& mask,
                        c10::string_view mode, const std::optional<at::Tensor>& fill, double scale,
                        int64_t group, const std::optional<at::Tensor>& pos_start, bool inplace) {
  std::vector<int64_t> variant, first_pos;
  const Mode m = check_args(x, row_variant, mask, mode, fill, group, pos_start, variant, first_pos);
  std::optional<at::Tensor> f;
  if (fill.has_value()) f = fill->contiguous();
  const at::Tensor mask_c = mask.contiguous();
  return edit_rows(x, inplace, [&](const at::Tensor& src, const at::Tensor& dst) {
    dispatch(src, dst, m, f, mask_c, group, variant, first_pos, scale, inplace);
  });
}

at::Tensor masked_ablate_cpu(const at::Tensor& x, const at::Tensor& row_variant,
                             const at::Tensor& mask, c10::string_view mode,
                             const std::optional<at::Tensor>& fill, double scale, int64_t group,
                             const std::optional<at::Tensor>& pos_start) {
  return checked_edit(x, row_variant, mask, mode, fill, scale, group, pos_start, false);
}

void masked_ablate__cpu(at::Tensor& x, const at::Tensor& row_variant, const at::Tensor& mask,
                        c10::string_view mode, const std::optional<at::Tensor>& fill, double scale,
                        int64_t group, const std::optional<at::Tensor>& pos_start) {
  checked_edit(x, row_variant, mask, mode, fill, scale, group, pos_start, true);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(emofast, m) {
  m.set_python_module("emofast.kernels.cpp");  // registers the fake kernels and autograd
  // The mode argument is named edit_mode: an argument named `mode` collides with a parameter of
  // torch's own dispatch helpers (redirect_to_mode) under torch.compile / AOT dispatch.
  m.def("masked_ablate(Tensor x, Tensor row_variant, Tensor mask, str edit_mode, Tensor? fill, "
        "float scale, int group, Tensor? pos_start) -> Tensor");
  m.def("masked_ablate_(Tensor(a!) x, Tensor row_variant, Tensor mask, str edit_mode, "
        "Tensor? fill, float scale, int group, Tensor? pos_start) -> ()");
}

TORCH_LIBRARY_IMPL(emofast, CPU, m) {
  m.impl("masked_ablate", &masked_ablate_cpu);
  m.impl("masked_ablate_", &masked_ablate__cpu);
}

}  // namespace emofast
