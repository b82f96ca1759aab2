// torch.ops.emofast.plan_sweep: the sweep planner (csrc/planner/planner.h) on flat CPU tensors.
// emofast/sweeps/plan.py wraps it into dataclasses; this file only converts and checks.
//
// Inputs (CSR: variant i owns edits[variant_offsets[i]:variant_offsets[i+1]], edit j owns
// units[unit_offsets[j]:unit_offsets[j+1]]; all int64, CPU):
//   variant_offsets [V + 1]  0 = variant_offsets[0] <= ... <= variant_offsets[V] = E
//   edits           [E, 4]   columns (layer, kind, mode, pos_start); kind: 0 mlp_act, 1 attn_z,
//                            2 resid_post, 3 sae; mode: 0 zero, 1 mean, 2 patch, 3 add (an addition's
//                            one unit is its table entry)
//   unit_offsets    [E + 1]  0 = unit_offsets[0] <= ... <= unit_offsets[E] = U
//   units           [U]      unit indices
//   n_units         int[]    units per kind (0 = kind not available); seq_len 0 = not given
// Outputs (int64 unless said):
//   order           [V]      variant ids in execution order
//   chunks          [C, 7]   (begin, end, first_layer, pos_start, bytes, block_begin, block_end):
//                            chunk c runs order[begin:end] and owns blocks[block_begin:block_end]
//   blocks          [B, 6]   (layer, kind, mode, words, mask_offset, row_offset); with
//                            rows = end - begin of its chunk, its mask is
//                            masks[mask_offset : mask_offset + rows * words].view(rows, words)
//                            (words = 0 for additions), its per-row pos_start
//                            block_pos_start[row_offset : + rows] and, for additions, the entry of
//                            each row block_entries[row_offset : + rows] (-1 = none)
//   block_pos_start [R]      R = sum of rows over blocks
//   block_entries   [R]      -1 throughout for ablation blocks
//   masks           [M]      int32, packed bits (masked_ablate contract: unit u of row i is bit
//                            u % 32 of word [i, u / 32], least significant bit first)
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "planner/planner.h"

namespace {

namespace pl = emofast::planner;

void check_int64(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), "plan_sweep: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, "plan_sweep: ", name, " must be int64, got ",
                   t.scalar_type());
  TORCH_CHECK(t.dim() == dim, "plan_sweep: ", name, " must have ", dim, " dimension(s), got shape ",
              t.sizes());
}

void check_offsets(const int64_t* off, int64_t n, int64_t total, const char* name, const char* of) {
  TORCH_CHECK(off[0] == 0, "plan_sweep: ", name, "[0] must be 0, got ", off[0]);
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(off[i] <= off[i + 1], "plan_sweep: ", name, " must be non-decreasing, but ", name,
                "[", i, "] = ", off[i], " > ", name, "[", i + 1, "] = ", off[i + 1]);
  TORCH_CHECK(off[n] == total, "plan_sweep: ", name, "[-1] must equal the number of ", of, " (",
              total, "), got ", off[n]);
}

std::vector<pl::Variant> unflatten(const at::Tensor& variant_offsets, const at::Tensor& edits,
                                   const at::Tensor& unit_offsets, const at::Tensor& units) {
  check_int64(variant_offsets, "variant_offsets", 1);
  check_int64(edits, "edits", 2);
  check_int64(unit_offsets, "unit_offsets", 1);
  check_int64(units, "units", 1);
  TORCH_CHECK(variant_offsets.size(0) >= 1, "plan_sweep: variant_offsets must hold V + 1 entries");
  TORCH_CHECK(edits.size(1) == 4, "plan_sweep: edits must be [E, 4] (layer, kind, mode, pos_start), "
              "got shape ", edits.sizes());
  const int64_t V = variant_offsets.size(0) - 1, E = edits.size(0);
  TORCH_CHECK(unit_offsets.size(0) == E + 1, "plan_sweep: unit_offsets must hold E + 1 = ", E + 1,
              " entries (one more than edits has rows), got ", unit_offsets.size(0));
  const at::Tensor vo = variant_offsets.contiguous(), ed = edits.contiguous();
  const at::Tensor uo = unit_offsets.contiguous(), un = units.contiguous();
  const int64_t* vo_p = vo.data_ptr<int64_t>();
  const int64_t* ed_p = ed.data_ptr<int64_t>();
  const int64_t* uo_p = uo.data_ptr<int64_t>();
  const int64_t* un_p = un.data_ptr<int64_t>();
  check_offsets(vo_p, V, E, "variant_offsets", "edits");
  check_offsets(uo_p, E, un.size(0), "unit_offsets", "units");

  std::vector<pl::Variant> variants(V);
  for (int64_t i = 0; i < V; ++i) {
    variants[i].resize(vo_p[i + 1] - vo_p[i]);
    for (int64_t j = vo_p[i]; j < vo_p[i + 1]; ++j) {
      pl::Edit& e = variants[i][j - vo_p[i]];
      e.layer = ed_p[4 * j];
      e.kind = ed_p[4 * j + 1];
      e.mode = ed_p[4 * j + 2];
      e.pos_start = ed_p[4 * j + 3];
      e.units.assign(un_p + uo_p[j], un_p + uo_p[j + 1]);
    }
  }
  return variants;
}

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Outputs flatten(const pl::Plan& plan) {
  const auto C = static_cast<int64_t>(plan.chunks.size());
  int64_t B = 0, R = 0, M = 0;
  for (const pl::Chunk& c : plan.chunks)
    for (const pl::Block& b : c.blocks) {
      ++B;
      R += c.end - c.begin;
      M += static_cast<int64_t>(b.bits.size());
    }
  const auto i64 = at::TensorOptions().dtype(at::kLong);
  at::Tensor order = at::empty({static_cast<int64_t>(plan.order.size())}, i64);
  at::Tensor chunks = at::empty({C, 7}, i64), blocks = at::empty({B, 6}, i64);
  at::Tensor pos = at::empty({R}, i64), entries = at::full({R}, -1, i64);
  at::Tensor masks = at::empty({M}, i64.dtype(at::kInt));
  std::memcpy(order.data_ptr<int64_t>(), plan.order.data(), plan.order.size() * sizeof(int64_t));
  int64_t* ch = chunks.data_ptr<int64_t>();
  int64_t* bl = blocks.data_ptr<int64_t>();
  int64_t* ps = pos.data_ptr<int64_t>();
  int64_t* en = entries.data_ptr<int64_t>();
  int32_t* mk = masks.data_ptr<int32_t>();
  int64_t b = 0, r = 0, m = 0;
  for (int64_t c = 0; c < C; ++c) {
    const pl::Chunk& k = plan.chunks[c];
    const int64_t row[7] = {k.begin, k.end, k.first_layer, k.pos_start, k.bytes, b,
                            b + static_cast<int64_t>(k.blocks.size())};
    std::memcpy(ch + 7 * c, row, sizeof(row));
    for (const pl::Block& blk : k.blocks) {
      const int64_t brow[6] = {blk.layer, blk.kind, blk.mode, blk.words, m, r};
      std::memcpy(bl + 6 * b++, brow, sizeof(brow));
      std::memcpy(ps + r, blk.pos_start.data(), blk.pos_start.size() * sizeof(int64_t));
      std::memcpy(en + r, blk.entries.data(), blk.entries.size() * sizeof(int64_t));
      r += static_cast<int64_t>(blk.pos_start.size());
      std::memcpy(mk + m, blk.bits.data(), blk.bits.size() * sizeof(uint32_t));  // same bits as int32
      m += static_cast<int64_t>(blk.bits.size());
    }
  }
  return {order, chunks, blocks, pos, entries, masks};
}

Outputs plan_sweep_cpu(
    const at::Tensor& variant_offsets, const at::Tensor& edits, const at::Tensor& unit_offsets,
    const at::Tensor& units, at::IntArrayRef n_units, int64_t n_layers, int64_t seq_len,
    int64_t n_prompts, int64_t bytes_per_row_per_layer, int64_t memory_budget) {
  const std::vector<pl::Variant> variants = unflatten(variant_offsets, edits, unit_offsets, units);
  pl::ModelFacts facts;
  facts.n_layers = n_layers;
  facts.n_units.assign(n_units.begin(), n_units.end());
  facts.seq_len = seq_len;
  facts.bytes_per_row_per_layer = bytes_per_row_per_layer;
  facts.n_prompts = n_prompts;
  facts.memory_budget_bytes = memory_budget;
  try {
    return flatten(pl::plan_sweep(variants, facts));
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());  // Python ValueError, the planner's message as is
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(emofast, m) {
  m.def("plan_sweep(Tensor variant_offsets, Tensor edits, Tensor unit_offsets, Tensor units, "
        "int[] n_units, int n_layers, int seq_len, int n_prompts, int bytes_per_row_per_layer, "
        "int memory_budget) -> (Tensor order, Tensor chunks, Tensor blocks, "
        "Tensor block_pos_start, Tensor block_entries, Tensor masks)");
}

TORCH_LIBRARY_IMPL(emofast, CPU, m) { m.impl("plan_sweep", &plan_sweep_cpu); }
