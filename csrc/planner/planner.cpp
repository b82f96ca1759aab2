// Sweep planner core; see planner.h for the algorithm and the output layout.
#include "planner/planner.h"

#include <algorithm>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <tuple>
#include <utility>

namespace emofast::planner {
namespace {

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw std::invalid_argument(os.str());
}

int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t out;
  if (__builtin_mul_overflow(a, b, &out)) fail(what, " overflows int64 (", a, " x ", b, ")");
  return out;
}

struct Key {
  int64_t first_layer, pos_start, mode_set;
  bool operator==(const Key& o) const {
    return first_layer == o.first_layer && pos_start == o.pos_start && mode_set == o.mode_set;
  }
  bool operator<(const Key& o) const {
    return std::tie(first_layer, pos_start, mode_set) < std::tie(o.first_layer, o.pos_start, o.mode_set);
  }
};

void check_facts(const ModelFacts& f) {
  if (f.n_layers <= 0) fail("n_layers must be > 0, got ", f.n_layers);
  if (f.n_prompts <= 0) fail("n_prompts must be > 0, got ", f.n_prompts);
  if (f.bytes_per_row_per_layer < 0)
    fail("bytes_per_row_per_layer must be >= 0, got ", f.bytes_per_row_per_layer);
  if (f.memory_budget_bytes <= 0) fail("memory_budget must be > 0 bytes, got ", f.memory_budget_bytes);
  if (f.seq_len < 0) fail("seq_len must be >= 0 (0 = not given), got ", f.seq_len);
  for (size_t k = 0; k < f.n_units.size(); ++k)
    if (f.n_units[k] < 0) fail("n_units for ", kind_name(k), " must be >= 0, got ", f.n_units[k]);
}

// Validates one edit; `where` is "variant i, edit j".
void check_edit(const Edit& e, const ModelFacts& f, const std::string& where) {
  if (e.layer < 0 || e.layer >= f.n_layers)
    fail(where, ": layer ", e.layer, " out of range: model has ", f.n_layers, " layers (0..",
         f.n_layers - 1, ")");
  const auto n_kinds = static_cast<int64_t>(f.n_units.size());
  if (e.kind < 0 || e.kind >= n_kinds || f.n_units[e.kind] == 0)
    fail(where, ": site kind ", kind_name(e.kind), " has no unit count: give n_units for it");
  if (e.mode < 0 || e.mode >= kNumModes)
    fail(where, ": mode ", e.mode, " unknown: one of 0..", kNumModes - 1, " (zero, mean, patch, add)");
  const bool add = e.mode == static_cast<int64_t>(Mode::add);
  if (add != is_table_kind(e.kind))
    fail(where, ": mode ", mode_name(e.mode), " at site ", kind_name(e.kind),
         ": additions (mode add) go to resid_post or sae, ablations (zero, mean, patch) to "
         "mlp_act or attn_z");
  if (e.pos_start < 0) fail(where, ": pos_start ", e.pos_start, " must be >= 0 (0 = all positions)");
  if (f.seq_len > 0 && e.pos_start >= f.seq_len)
    fail(where, ": pos_start ", e.pos_start, " out of range: seq_len is ", f.seq_len, " (0..",
         f.seq_len - 1, ")");
  const std::string site = "L" + std::to_string(e.layer) + "." + kind_name(e.kind);
  if (e.units.empty())
    fail(where, ": edit at ", site, " has no units (a variant with no edits is the clean run)");
  if (add && e.units.size() != 1)
    fail(where, ": an addition at ", site, " names exactly one table entry, got ", e.units.size());
  const int64_t n = f.n_units[e.kind];
  for (int64_t u : e.units)
    if (u < 0 || u >= n)
      fail(where, ": unit ", u, " out of range for ", site, ": ", n, " units (0..", n - 1, ")");
}

// Blocks of one chunk: one per (layer, kind) in `touched` (lk = layer * n_kinds + kind).
void build_blocks(Chunk& c, std::vector<int64_t>& touched, const std::vector<Variant>& variants,
                  const std::vector<int64_t>& order, const ModelFacts& f,
                  std::vector<int64_t>& block_of) {
  const auto n_kinds = static_cast<int64_t>(f.n_units.size());
  const int64_t rows = c.end - c.begin;
  std::sort(touched.begin(), touched.end());
  c.blocks.resize(touched.size());
  for (size_t b = 0; b < touched.size(); ++b) {
    Block& blk = c.blocks[b];
    blk.layer = touched[b] / n_kinds;
    blk.kind = touched[b] % n_kinds;
    blk.pos_start.assign(rows, c.pos_start);
    if (is_table_kind(blk.kind)) {
      blk.entries.assign(rows, -1);
    } else {
      blk.words = (f.n_units[blk.kind] + 31) / 32;
      blk.bits.assign(rows * blk.words, 0u);
    }
    block_of[touched[b]] = static_cast<int64_t>(b);
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (const Edit& e : variants[order[c.begin + r]]) {
      Block& blk = c.blocks[block_of[e.layer * n_kinds + e.kind]];
      blk.mode = e.mode;
      blk.pos_start[r] = e.pos_start;
      if (!blk.entries.empty()) {
        blk.entries[r] = e.units[0];
        continue;
      }
      uint32_t* row = blk.bits.data() + r * blk.words;
      for (int64_t u : e.units) row[u >> 5] |= 1u << (u & 31);
    }
  }
}

}  // namespace

std::string kind_name(int64_t kind) {
  static const char* names[kNumKinds] = {"mlp_act", "attn_z", "resid_post", "sae"};
  return kind >= 0 && kind < kNumKinds ? names[kind] : "kind" + std::to_string(kind);
}

std::string mode_name(int64_t mode) {
  static const char* names[kNumModes] = {"zero", "mean", "patch", "add"};
  return mode >= 0 && mode < kNumModes ? names[mode] : "mode" + std::to_string(mode);
}

Plan plan_sweep(const std::vector<Variant>& variants, const ModelFacts& f) {
  if (variants.empty()) fail("empty variant list: nothing to plan (give at least one variant)");
  check_facts(f);
  const auto V = static_cast<int64_t>(variants.size());
  const auto n_kinds = static_cast<int64_t>(f.n_units.size());
  const int64_t n_lk = checked_mul(f.n_layers, std::max<int64_t>(n_kinds, 1), "n_layers x n_kinds");
  const int64_t row_layer_bytes =
      checked_mul(f.n_prompts, f.bytes_per_row_per_layer, "n_prompts x bytes_per_row_per_layer");

  // 1-2. Validate, merge-check duplicate (layer, kind) within a variant, compute keys and budget.
  std::vector<Key> keys(V);
  std::vector<int64_t> variant_bytes(V);
  std::vector<int64_t> seen(n_lk, -1), seen_edit(n_lk);
  for (int64_t i = 0; i < V; ++i) {
    Key k{f.n_layers, 0, 0};
    const Variant& var = variants[i];
    for (size_t j = 0; j < var.size(); ++j) {
      const Edit& e = var[j];
      const std::string where = "variant " + std::to_string(i) + ", edit " + std::to_string(j);
      check_edit(e, f, where);
      const int64_t lk = e.layer * n_kinds + e.kind;
      if (seen[lk] == i) {
        const Edit& p = var[seen_edit[lk]];
        if (e.mode == static_cast<int64_t>(Mode::add))
          fail(where, ": two additions at L", e.layer, ".", kind_name(e.kind), " (edit ",
               seen_edit[lk], " and here): add their vectors into one entry");
        if (p.mode != e.mode || p.pos_start != e.pos_start)
          fail(where, ": L", e.layer, ".", kind_name(e.kind), " is edited twice with different "
               "mode/pos_start (", mode_name(p.mode), " from ", p.pos_start, " in edit ",
               seen_edit[lk], ", ", mode_name(e.mode), " from ", e.pos_start,
               " here): one (layer, site) takes one mode and pos_start per variant");
      } else {
        seen[lk] = i;
        seen_edit[lk] = static_cast<int64_t>(j);  // the first edit of this variant here
      }
      k.first_layer = std::min(k.first_layer, e.layer);
      k.pos_start = j == 0 ? e.pos_start : std::min(k.pos_start, e.pos_start);
      k.mode_set |= int64_t{1} << e.mode;
    }
    keys[i] = k;
    const int64_t n_run = f.n_layers - k.first_layer;
    variant_bytes[i] = checked_mul(row_layer_bytes, n_run, "memory estimate");
    if (variant_bytes[i] > f.memory_budget_bytes)
      fail("variant ", i, " alone needs ", variant_bytes[i], " bytes (n_prompts ", f.n_prompts,
           " x ", f.bytes_per_row_per_layer, " bytes per row per layer x ", n_run,
           " layers from layer ", k.first_layer, ") but memory_budget is ", f.memory_budget_bytes,
           " bytes: over by ", variant_bytes[i] - f.memory_budget_bytes,
           " bytes; raise memory_budget or lower n_prompts");
  }

  // 3. Order by (group key, variant id).
  Plan plan;
  plan.order.resize(V);
  for (int64_t i = 0; i < V; ++i) plan.order[i] = i;
  std::sort(plan.order.begin(), plan.order.end(), [&](int64_t a, int64_t b) {
    return keys[a] < keys[b] || (keys[a] == keys[b] && a < b);
  });

  // 4-5. Greedy chunks; `stamp[lk] == chunk index` marks the (layer, kind)s the open chunk touches.
  std::vector<int64_t> stamp(n_lk, -1), mode_at(n_lk), block_of(n_lk);
  std::vector<int64_t> touched;
  auto close_chunk = [&]() {
    if (!plan.chunks.empty()) build_blocks(plan.chunks.back(), touched, variants, plan.order, f, block_of);
    touched.clear();
  };
  for (int64_t pos = 0; pos < V; ++pos) {
    const int64_t i = plan.order[pos];
    bool fits = !plan.chunks.empty() && keys[plan.order[plan.chunks.back().begin]] == keys[i];
    if (fits) {
      const Chunk& c = plan.chunks.back();
      fits = c.bytes <= f.memory_budget_bytes - variant_bytes[i];
      const auto cid = static_cast<int64_t>(plan.chunks.size()) - 1;
      for (const Edit& e : variants[i]) {
        const int64_t lk = e.layer * n_kinds + e.kind;
        if (stamp[lk] == cid && mode_at[lk] != e.mode) fits = false;
      }
    }
    if (!fits) {
      close_chunk();
      Chunk c;
      c.begin = c.end = pos;
      c.first_layer = keys[i].first_layer;
      c.pos_start = keys[i].pos_start;
      c.mode_set = keys[i].mode_set;
      plan.chunks.push_back(std::move(c));
    }
    Chunk& c = plan.chunks.back();
    const auto cid = static_cast<int64_t>(plan.chunks.size()) - 1;
    c.end = pos + 1;
    c.bytes += variant_bytes[i];
    for (const Edit& e : variants[i]) {
      const int64_t lk = e.layer * n_kinds + e.kind;
      if (stamp[lk] != cid) {
        stamp[lk] = cid;
        mode_at[lk] = e.mode;
        touched.push_back(lk);
      }
    }
  }
  close_chunk();
  return plan;
}

}  // namespace emofast::planner
