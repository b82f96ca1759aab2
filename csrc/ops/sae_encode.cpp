// sae_encode on CPU: SAE encoder pre-activations, bias and activation, as torch.ops.emofast.*.
//
//   pre = (x - b_dec) @ W_enc + b_enc        x [N, d_model], W_enc [d_model, d_sae] -> [N, d_sae]
//
//   sae_encode(x, W_enc, b_enc, b_dec?, threshold?, activation) -> Tensor [N, d_sae]
//       activation "relu": relu(pre); "jumprelu": pre * (pre > threshold), threshold [d_sae].
//   sae_encode_topk(x, W_enc, b_enc, b_dec?, threshold?, activation, k) -> (values [N, k], indices [N, k])
//       the k largest entries per row, descending by value (ties: lower latent index first):
//       "topk": of pre, then ReLU on the kept values (Gao et al., sparsify);
//       "relu" / "jumprelu": of the activations.
//
// The GEMM is at::matmul (MKL / oneDNN). b_dec is subtracted from x first (an [N, d_model] pass,
// rounded like the reference), not folded into the bias: for bf16/fp16 the GEMM output is rounded
// to the dtype before the epilogue, and a folded x @ W_enc - b_dec @ W_enc would then cancel
// catastrophically when |b_dec| >> |x - b_dec|. One fused epilogue pass per row (at::parallel_for,
// ATen's OpenMP backend) adds b_enc in fp32, applies the activation and, for the top-k op, selects
// the k largest with a threshold filter (see RowSelect), so the dense [N, d_sae] result is never
// written again or sorted.
// Gradients are registered from Python (kernels/sae_encode.py) with torch.library.register_autograd.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common.h"

namespace emofast {
namespace {

enum class Act { kNone, kRelu, kJumpRelu };

void check_param(const char* op, const char* name, const at::Tensor& t, int64_t size,
                 const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == size, op, ": ", name, " must be [", size, "], got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have the dtype of x (",
              x.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be on CPU, got ", t.device());
}

// Validates the arguments; returns the activation of the epilogue.
Act check_encode_args(const char* op, const at::Tensor& x, const at::Tensor& W_enc,
                      const at::Tensor& b_enc, const c10::optional<at::Tensor>& b_dec,
                      const c10::optional<at::Tensor>& threshold, c10::string_view activation,
                      bool allow_topk) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be [N, d_model], got ", x.sizes());
  TORCH_CHECK(W_enc.dim() == 2 && W_enc.size(0) == x.size(1), op,
              ": W_enc must be [d_model, d_sae] with d_model = ", x.size(1), ", got ", W_enc.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(is_float_type(dt), op, ": x must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(W_enc.scalar_type() == dt, op, ": W_enc must have the dtype of x (", dt, "), got ",
              W_enc.scalar_type());
  TORCH_CHECK(x.device().is_cpu() && W_enc.device().is_cpu(), op,
              " (C++ op) runs on CPU tensors; got x on ", x.device(), ", W_enc on ", W_enc.device());
  const int64_t d_sae = W_enc.size(1);
  check_param(op, "b_enc", b_enc, d_sae, x);
  if (b_dec.has_value()) check_param(op, "b_dec", *b_dec, x.size(1), x);
  Act act;
  if (activation == "relu") act = Act::kRelu;
  else if (activation == "jumprelu") act = Act::kJumpRelu;
  else if (activation == "topk" && allow_topk) act = Act::kNone;
  else
    TORCH_CHECK(false, op, ": activation must be 'relu' or 'jumprelu'",
                allow_topk ? " or 'topk'" : "", ", got '", std::string(activation), "'");
  TORCH_CHECK((act == Act::kJumpRelu) == threshold.has_value(), op,
              act == Act::kJumpRelu ? ": jumprelu needs threshold [d_sae]"
                                    : ": threshold is only used by jumprelu");
  if (threshold.has_value()) check_param(op, "threshold", *threshold, d_sae, x);
  return act;
}

at::Tensor pre_gemm(const at::Tensor& x, const at::Tensor& W_enc,
                    const c10::optional<at::Tensor>& b_dec) {
  at::Tensor xc = b_dec.has_value() ? x - *b_dec : x;
  return at::matmul(xc.contiguous(), W_enc.contiguous());  // [N, d_sae], bias not yet added
}

inline float activate(float v, Act act, const float* thr, int64_t j) {
  if (act == Act::kRelu) return v > 0.f ? v : 0.f;
  if (act == Act::kJumpRelu) return v > thr[j] ? v : 0.f;
  return v;
}

// Per-latent fp32 copies of b_enc and threshold, read once per row by the epilogue.
std::vector<float> to_float_vec(const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return {};
  at::Tensor f = t->to(at::kFloat).contiguous();
  return std::vector<float>(f.const_data_ptr<float>(), f.const_data_ptr<float>() + f.numel());
}

// ---- per-row top-k ----
// Output order: larger value first, then smaller latent; `better` is that total order, so ties
// resolve deterministically. Candidates strictly better than a threshold tau (the k-th best seen
// so far) are appended to a buffer; when it fills, nth_element keeps the k best and raises tau.
// After the first few hundred latents almost nothing passes tau, and the scan is a compare per
// latent (8 per AVX2 compare) with well-predicted branches, unlike a heap's data-dependent sifts.
// (A latent with value == tau comes later than the kept one with that value, so it is worse.)
struct Cand {
  float v;
  int64_t i;
};
inline bool better(const Cand& a, const Cand& b) { return a.v > b.v || (a.v == b.v && a.i < b.i); }

class RowSelect {
 public:
  explicit RowSelect(int64_t k) : k_(k), cap_(2 * k + 32) { buf_.reserve(cap_); }
  void reset() {
    buf_.clear();
    tau_ = -std::numeric_limits<float>::infinity();
  }
  float tau() const { return tau_; }
  void offer(float v, int64_t j) {  // NaN never passes
    if (v > tau_) {
      buf_.push_back({v, j});
      if (static_cast<int64_t>(buf_.size()) == cap_) compact();
    }
  }
  // The k best, sorted; rows with NaN (fewer than k candidates) are padded with (NaN, 0).
  const std::vector<Cand>& finish() {
    if (static_cast<int64_t>(buf_.size()) > k_) compact();
    std::sort(buf_.begin(), buf_.end(), better);
    buf_.resize(k_, Cand{std::numeric_limits<float>::quiet_NaN(), 0});
    return buf_;
  }

 private:
  void compact() {
    std::nth_element(buf_.begin(), buf_.begin() + (k_ - 1), buf_.end(), better);
    buf_.resize(k_);
    tau_ = buf_[k_ - 1].v;
  }
  int64_t k_, cap_;
  std::vector<Cand> buf_;
  float tau_ = -std::numeric_limits<float>::infinity();
};

void scan_row(const float* row, int64_t d_sae, RowSelect& sel) {
  sel.reset();
  for (int64_t j = 0; j < d_sae; ++j) sel.offer(row[j], j);
}

template <typename scalar_t>
void epilogue_row(const scalar_t* pre, const float* bias, const float* thr, Act act, float* out,
                  int64_t d_sae) {
  for (int64_t j = 0; j < d_sae; ++j)
    out[j] = activate(static_cast<float>(pre[j]) + bias[j], act, thr, j);
}

// AVX2 versions of the two loops above, called when has_avx2() (load8 is in common.h)
#if defined(__x86_64__)
template <typename scalar_t>
EMOFAST_AVX2 void epilogue_row_avx2(const scalar_t* pre, const float* bias, const float* thr,
                                    Act act, float* out, int64_t d_sae) {
  int64_t j = 0;
  const __m256 zero = _mm256_setzero_ps();
  for (; j + 8 <= d_sae; j += 8) {
    __m256 v = _mm256_add_ps(load8(pre + j), _mm256_loadu_ps(bias + j));
    if (act == Act::kRelu) v = _mm256_max_ps(v, zero);
    if (act == Act::kJumpRelu)
      v = _mm256_and_ps(v, _mm256_cmp_ps(v, _mm256_loadu_ps(thr + j), _CMP_GT_OQ));
    _mm256_storeu_ps(out + j, v);
  }
  for (; j < d_sae; ++j) out[j] = activate(static_cast<float>(pre[j]) + bias[j], act, thr, j);
}

// scan_row, testing 8 latents at a time against tau
EMOFAST_AVX2 void scan_row_avx2(const float* row, int64_t d_sae, RowSelect& sel) {
  sel.reset();
  int64_t j = 0;
  for (; j + 8 <= d_sae; j += 8) {
    int m = _mm256_movemask_ps(
        _mm256_cmp_ps(_mm256_loadu_ps(row + j), _mm256_set1_ps(sel.tau()), _CMP_GT_OQ));
    while (m) {
      const int lane = __builtin_ctz(m);
      m &= m - 1;
      sel.offer(row[j + lane], j + lane);
    }
  }
  for (; j < d_sae; ++j) sel.offer(row[j], j);
}
#else
template <typename scalar_t>
void epilogue_row_avx2(const scalar_t*, const float*, const float*, Act, float*, int64_t) {}
void scan_row_avx2(const float*, int64_t, RowSelect&) {}
#endif

at::Tensor sae_encode_cpu(const at::Tensor& x, const at::Tensor& W_enc, const at::Tensor& b_enc,
                          const c10::optional<at::Tensor>& b_dec,
                          const c10::optional<at::Tensor>& threshold, c10::string_view activation) {
  const Act act = check_encode_args("sae_encode", x, W_enc, b_enc, b_dec, threshold, activation,
                                    /*allow_topk=*/false);
  at::Tensor out = pre_gemm(x, W_enc, b_dec);  // epilogue runs in place
  const int64_t N = out.size(0), d_sae = out.size(1);
  const std::vector<float> bias = to_float_vec(b_enc), thr = to_float_vec(threshold);
  EMOFAST_DISPATCH_FLOAT_TYPES(out.scalar_type(), "sae_encode", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, 8, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        scalar_t* row = o + n * d_sae;
        for (int64_t j = 0; j < d_sae; ++j)
          row[j] = static_cast<scalar_t>(
              activate(static_cast<float>(row[j]) + bias[j], act, thr.data(), j));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sae_encode_topk_cpu(
    const at::Tensor& x, const at::Tensor& W_enc, const at::Tensor& b_enc,
    const c10::optional<at::Tensor>& b_dec, const c10::optional<at::Tensor>& threshold,
    c10::string_view activation, int64_t k) {
  const Act act = check_encode_args("sae_encode_topk", x, W_enc, b_enc, b_dec, threshold,
                                    activation, /*allow_topk=*/true);
  const int64_t d_sae = W_enc.size(1);
  TORCH_CHECK(k >= 1 && k <= d_sae, "sae_encode_topk: k must be in [1, d_sae = ", d_sae, "], got ", k);
  const bool relu_after = activation == "topk";
  at::Tensor pre = pre_gemm(x, W_enc, b_dec);
  const int64_t N = pre.size(0);
  at::Tensor values = at::empty({N, k}, x.options());
  at::Tensor indices = at::empty({N, k}, x.options().dtype(at::kLong));
  const std::vector<float> bias = to_float_vec(b_enc), thr = to_float_vec(threshold);
  EMOFAST_DISPATCH_FLOAT_TYPES(pre.scalar_type(), "sae_encode_topk", [&] {
    const scalar_t* p = pre.const_data_ptr<scalar_t>();
    scalar_t* vo = values.mutable_data_ptr<scalar_t>();
    int64_t* io = indices.mutable_data_ptr<int64_t>();
    const bool wide = has_avx2();
    at::parallel_for(0, N, 8, [&](int64_t n0, int64_t n1) {
      std::vector<float> row(d_sae);  // fp32 activations of one token
      RowSelect sel(k);
      for (int64_t n = n0; n < n1; ++n) {
        if (wide) {
          epilogue_row_avx2(p + n * d_sae, bias.data(), thr.data(), act, row.data(), d_sae);
          scan_row_avx2(row.data(), d_sae, sel);
        } else {
          epilogue_row(p + n * d_sae, bias.data(), thr.data(), act, row.data(), d_sae);
          scan_row(row.data(), d_sae, sel);
        }
        const std::vector<Cand>& top = sel.finish();
        for (int64_t i = 0; i < k; ++i) {
          const float v = top[i].v;
          vo[n * k + i] = static_cast<scalar_t>(relu_after && !(v > 0.f) ? 0.f : v);
          io[n * k + i] = top[i].i;
        }
      }
    });
  });
  return {values, indices};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(emofast, m) {
  m.set_python_module("emofast.kernels.cpp");  // registers the fake kernels and autograd
  m.def("sae_encode(Tensor x, Tensor W_enc, Tensor b_enc, Tensor? b_dec, Tensor? threshold, "
        "str activation) -> Tensor");
  m.def("sae_encode_topk(Tensor x, Tensor W_enc, Tensor b_enc, Tensor? b_dec, Tensor? threshold, "
        "str activation, int k) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(emofast, CPU, m) {
  m.impl("sae_encode", &sae_encode_cpu);
  m.impl("sae_encode_topk", &sae_encode_topk_cpu);
}

}  // namespace emofast
