// Unit tests of the planner core (no torch, no framework): run by ctest (`make ctest`).
// setup.py leaves test_*.cpp out of emofast._C, so this main() never reaches the extension.
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "planner/planner.h"

using namespace emofast::planner;

static int failures = 0;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                          \
    }                                                                      \
  } while (0)

namespace {

constexpr int64_t MLP = static_cast<int64_t>(SiteKind::mlp_act);
constexpr int64_t ATTN = static_cast<int64_t>(SiteKind::attn_z);
constexpr int64_t RESID = static_cast<int64_t>(SiteKind::resid_post);
constexpr int64_t SAE = static_cast<int64_t>(SiteKind::sae);
constexpr int64_t ZERO = static_cast<int64_t>(Mode::zero);
constexpr int64_t MEAN = static_cast<int64_t>(Mode::mean);
constexpr int64_t ADD = static_cast<int64_t>(Mode::add);

ModelFacts facts(int64_t n_layers, int64_t d_mlp, int64_t heads, int64_t budget,
                 int64_t n_additions = 0, int64_t n_feature_edits = 0) {
  ModelFacts f;
  f.n_layers = n_layers;
  f.n_units = {d_mlp, heads, n_additions, n_feature_edits};
  f.seq_len = 16;
  f.bytes_per_row_per_layer = 100;
  f.n_prompts = 2;
  f.memory_budget_bytes = budget;
  return f;
}

// (layer, kind) -> (mode, pos_start, units): what a variant edits, duplicates merged.
using Decoded = std::map<std::pair<int64_t, int64_t>, std::tuple<int64_t, int64_t, std::set<int64_t>>>;

Decoded expected(const Variant& v) {
  Decoded d;
  for (const Edit& e : v) {
    auto& [mode, pos, units] = d[{e.layer, e.kind}];
    mode = e.mode;
    pos = e.pos_start;
    units.insert(e.units.begin(), e.units.end());
  }
  return d;
}

// Checks every invariant of `plan` against `variants`.
void check_plan(const std::vector<Variant>& variants, const ModelFacts& f, const Plan& plan) {
  const auto V = static_cast<int64_t>(variants.size());
  // every variant exactly once
  CHECK(static_cast<int64_t>(plan.order.size()) == V);
  std::vector<int> count(V, 0);
  for (int64_t i : plan.order) {
    CHECK(i >= 0 && i < V);
    if (i >= 0 && i < V) ++count[i];
  }
  for (int c : count) CHECK(c == 1);
  // chunks cover the order contiguously, share a key, fit the budget; masks decode to the edits
  std::vector<Decoded> decoded(V);
  int64_t next = 0;
  for (const Chunk& c : plan.chunks) {
    CHECK(c.begin == next && c.end > c.begin);
    next = c.end;
    const int64_t rows = c.end - c.begin;
    CHECK(c.bytes == rows * f.n_prompts * f.bytes_per_row_per_layer * (f.n_layers - c.first_layer));
    CHECK(c.bytes <= f.memory_budget_bytes);
    for (int64_t r = 0; r < rows; ++r) {
      const Variant& v = variants[plan.order[c.begin + r]];
      int64_t first_layer = f.n_layers, pos = v.empty() ? 0 : v[0].pos_start, modes = 0;
      for (const Edit& e : v) {
        first_layer = std::min(first_layer, e.layer);
        pos = std::min(pos, e.pos_start);
        modes |= int64_t{1} << e.mode;
      }
      CHECK(first_layer == c.first_layer && pos == c.pos_start && modes == c.mode_set);
    }
    for (size_t b = 0; b < c.blocks.size(); ++b) {
      const Block& blk = c.blocks[b];
      if (b > 0) CHECK(std::make_pair(c.blocks[b - 1].layer, c.blocks[b - 1].kind) <
                       std::make_pair(blk.layer, blk.kind));
      if (is_table_kind(blk.kind)) {  // additions: one entry per row, no mask
        CHECK(blk.mode == ADD && blk.words == 0 && blk.bits.empty());
        CHECK(static_cast<int64_t>(blk.entries.size()) == rows);
        for (int64_t r = 0; r < rows; ++r)
          if (blk.entries[r] >= 0)
            decoded[plan.order[c.begin + r]][{blk.layer, blk.kind}] = {blk.mode, blk.pos_start[r],
                                                                       {blk.entries[r]}};
        continue;
      }
      CHECK(blk.entries.empty());
      CHECK(blk.words == (f.n_units[blk.kind] + 31) / 32);
      CHECK(static_cast<int64_t>(blk.bits.size()) == rows * blk.words);
      for (int64_t r = 0; r < rows; ++r) {
        std::set<int64_t> units;
        for (int64_t u = 0; u < blk.words * 32; ++u)
          if (blk.bits[r * blk.words + u / 32] >> (u % 32) & 1u) units.insert(u);
        if (!units.empty())
          decoded[plan.order[c.begin + r]][{blk.layer, blk.kind}] = {blk.mode, blk.pos_start[r], units};
      }
    }
  }
  CHECK(next == V);
  for (int64_t i = 0; i < V; ++i) CHECK(decoded[i] == expected(variants[i]));
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

void check_error(const std::vector<Variant>& variants, const ModelFacts& f, const std::string& part) {
  const std::string msg = error_of([&] { plan_sweep(variants, f); });
  if (msg.find(part) == std::string::npos) {
    std::fprintf(stderr, "expected an error containing \"%s\", got \"%s\"\n", part.c_str(), msg.c_str());
    ++failures;
  }
}

void test_small_hand_plan() {
  // budget fits 2 variants running all 4 layers: 2 * 2 prompts * 100 B * 4 layers = 1600
  const ModelFacts f = facts(4, 40, 3, 1600);
  const std::vector<Variant> v = {
      {{2, MLP, ZERO, 0, {5, 5, 33}}},  // duplicate unit 5 is deduplicated
      {},                               // clean run
      {{0, MLP, ZERO, 0, {1}}},
      {{0, ATTN, ZERO, 0, {2}}, {3, MLP, ZERO, 0, {39}}},
      {{0, MLP, ZERO, 0, {0}}},
      {{0, MLP, MEAN, 0, {7}}},        // same key except mode set: its own group
  };
  const Plan p = plan_sweep(v, f);
  check_plan(v, f, p);
  CHECK((p.order == std::vector<int64_t>{2, 3, 4, 5, 0, 1}));
  CHECK(p.chunks.size() == 5);  // {2,3} {4} {5} {0} {1}
  CHECK(p.chunks[0].blocks.size() == 3);  // L0.mlp_act, L0.attn_z, L3.mlp_act
  CHECK(p.chunks[0].blocks[0].bits == (std::vector<uint32_t>{2u, 0u, 0u, 0u}));
  CHECK(p.chunks[3].blocks[0].bits == (std::vector<uint32_t>{1u << 5, 2u}));
  CHECK(p.chunks[4].first_layer == 4 && p.chunks[4].bytes == 0 && p.chunks[4].blocks.empty());
}

void test_pos_start_and_multi_mode() {
  const ModelFacts f = facts(3, 64, 4, 1 << 20);
  const std::vector<Variant> v = {
      {{1, MLP, ZERO, 4, {3}}, {2, MLP, ZERO, 6, {4}}},   // key (1, 4, zero)
      {{1, MLP, ZERO, 4, {9}}},                           // key (1, 4, zero)
      {{1, MLP, ZERO, 0, {9}}},                           // key (1, 0, zero)
      {{1, MLP, ZERO, 2, {1}}, {2, MLP, MEAN, 2, {1}}},   // key (1, 2, zero|mean)
      {{1, MLP, MEAN, 2, {1}}, {2, MLP, ZERO, 2, {1}}},   // same key, clashes: new chunk
      {{1, ATTN, ZERO, 2, {2}}, {2, ATTN, MEAN, 2, {1}}}, // same key, no clash with the open chunk
      {{1, MLP, ZERO, 5, {1}}, {1, MLP, ZERO, 5, {2}}},   // two edits at one site merge
  };
  const Plan p = plan_sweep(v, f);
  check_plan(v, f, p);
  CHECK((p.order == std::vector<int64_t>{2, 3, 4, 5, 0, 1, 6}));
  CHECK(p.chunks.size() == 5);  // {2} {3} {4,5} {0,1} {6}
  CHECK(p.chunks[3].pos_start == 4 && p.chunks[3].blocks[1].pos_start[1] == 4);  // row not editing
}

void test_additions() {
  const ModelFacts f = facts(3, 40, 4, 1 << 20, 5);
  const std::vector<Variant> v = {
      {{1, RESID, ADD, 0, {3}}},                          // key (1, 0, add)
      {{1, RESID, ADD, 0, {0}}, {2, ATTN, ZERO, 0, {1}}},  // key (1, 0, zero|add)
      {{1, RESID, ADD, 2, {4}}},                          // key (1, 2, add)
      {{1, RESID, ADD, 0, {4}}},                          // key (1, 0, add), joins the first
      {{2, MLP, ZERO, 0, {7}}, {2, RESID, ADD, 0, {1}}},  // ablation and addition at one layer
  };
  const Plan p = plan_sweep(v, f);
  check_plan(v, f, p);
  CHECK((p.order == std::vector<int64_t>{0, 3, 1, 2, 4}));
  CHECK(p.chunks.size() == 4);  // {0,3} {1} {2} {4}
  CHECK((p.chunks[0].blocks[0].entries == std::vector<int64_t>{3, 4}));
  CHECK(p.chunks[3].blocks.size() == 2 && p.chunks[3].blocks[1].entries[0] == 1);
}

void test_random(uint32_t seed) {
  std::mt19937 rng(seed);
  auto pick = [&](int64_t n) { return static_cast<int64_t>(rng() % static_cast<uint32_t>(n)); };
  const int64_t n_layers = 1 + pick(6);
  ModelFacts f = facts(n_layers, 1 + pick(70), 1 + pick(9), 0, 1 + pick(40), 1 + pick(20));
  f.n_prompts = 1 + pick(3);
  f.memory_budget_bytes = f.n_prompts * f.bytes_per_row_per_layer * n_layers * (1 + pick(5));
  std::vector<Variant> v(1 + pick(60));
  for (Variant& var : v) {
    const int64_t n_edits = pick(4);
    for (int64_t j = 0; j < n_edits; ++j) {
      Edit e;
      e.layer = pick(n_layers);
      e.kind = pick(4);
      const bool table = is_table_kind(e.kind);
      e.mode = table ? ADD : pick(2) ? ZERO : pick(3);  // add only at resid_post and sae
      e.pos_start = pick(3) * 3;
      for (int64_t k = 0, n = table ? 1 : 1 + pick(4); k < n; ++k)
        e.units.push_back(pick(f.n_units[e.kind]));
      bool clash = false;  // one mode/pos_start per (layer, kind), one addition per (layer, kind)
      for (const Edit& o : var)
        clash |= o.layer == e.layer && o.kind == e.kind &&
                 (o.mode != e.mode || o.pos_start != e.pos_start || table);
      if (!clash) var.push_back(e);
    }
  }
  check_plan(v, f, plan_sweep(v, f));
}

void test_errors() {
  const ModelFacts f = facts(4, 40, 3, 1600);
  check_error({}, f, "empty variant list");
  check_error({{{4, MLP, ZERO, 0, {1}}}}, f, "variant 0, edit 0: layer 4 out of range: model has 4 layers (0..3)");
  check_error({{}, {{0, MLP, ZERO, 0, {40}}}}, f, "variant 1, edit 0: unit 40 out of range for L0.mlp_act: 40 units (0..39)");
  check_error({{{0, ATTN, ZERO, 0, {-1}}}}, f, "unit -1 out of range for L0.attn_z: 3 units (0..2)");
  check_error({{{0, RESID, ADD, 0, {0}}}}, f, "site kind resid_post has no unit count");
  const ModelFacts fa = facts(4, 40, 3, 1600, 2);
  check_error({{{0, RESID, ZERO, 0, {0}}}}, fa, "mode zero at site resid_post: additions");
  check_error({{{0, MLP, ADD, 0, {0}}}}, fa, "mode add at site mlp_act");
  check_error({{{0, RESID, ADD, 0, {0, 1}}}}, fa, "names exactly one table entry, got 2");
  check_error({{{0, RESID, ADD, 0, {2}}}}, fa, "unit 2 out of range for L0.resid_post: 2 units");
  check_error({{{1, RESID, ADD, 0, {0}}, {1, RESID, ADD, 0, {1}}}}, fa,
              "variant 0, edit 1: two additions at L1.resid_post");
  const ModelFacts fs = facts(4, 40, 3, 1600, 0, 3);
  check_error({{{0, SAE, MEAN, 0, {0}}}}, fs, "mode mean at site sae: additions");
  check_error({{{0, SAE, ADD, 0, {3}}}}, fs, "unit 3 out of range for L0.sae: 3 units");
  check_error({{{2, SAE, ADD, 0, {0}}, {2, SAE, ADD, 0, {1}}}}, fs,
              "variant 0, edit 1: two additions at L2.sae");
  check_error({{{0, 7, ZERO, 0, {0}}}}, f, "site kind kind7 has no unit count");
  check_error({{{0, MLP, 9, 0, {0}}}}, f, "mode 9 unknown");
  check_error({{{0, MLP, ZERO, -1, {0}}}}, f, "pos_start -1 must be >= 0");
  check_error({{{0, MLP, ZERO, 16, {0}}}}, f, "pos_start 16 out of range: seq_len is 16 (0..15)");
  check_error({{{0, MLP, ZERO, 0, {}}}}, f, "edit at L0.mlp_act has no units");
  check_error({{{1, MLP, ZERO, 0, {1}}, {1, MLP, MEAN, 0, {2}}}}, f,
              "variant 0, edit 1: L1.mlp_act is edited twice with different mode/pos_start");
  // one variant from layer 0 needs 2 * 100 * 4 = 800 bytes
  check_error({{{0, MLP, ZERO, 0, {1}}}}, facts(4, 40, 3, 799), "variant 0 alone needs 800 bytes");
  check_error({{{0, MLP, ZERO, 0, {1}}}}, facts(4, 40, 3, 799), "over by 1 bytes");
  check_error({{}}, facts(0, 40, 3, 1), "n_layers must be > 0");
  check_error({{}}, facts(4, 40, 3, 0), "memory_budget must be > 0");
  ModelFacts big = facts(4, 40, 3, 1);
  big.bytes_per_row_per_layer = int64_t{1} << 62;
  check_error({{{0, MLP, ZERO, 0, {1}}}}, big, "overflows int64");
}

void test_10k_timing() {
  // 10,000 single-neuron variants over 30 layers x 1,536 neurons (SmolLM2-135M's MLP)
  ModelFacts f = facts(30, 1536, 9, 0);
  f.seq_len = 64;
  f.n_prompts = 8;
  f.bytes_per_row_per_layer = 64 * 576 * 4;
  f.memory_budget_bytes = int64_t{8} << 30;
  std::mt19937 rng(0);
  std::vector<Variant> v(10000);
  for (Variant& var : v)
    var = {{static_cast<int64_t>(rng() % 30), MLP, ZERO, 0, {static_cast<int64_t>(rng() % 1536)}}};
  double best_ms = 1e9;
  Plan p;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    p = plan_sweep(v, f);
    const auto t1 = std::chrono::steady_clock::now();
    best_ms = std::min(best_ms, std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::printf("planned 10000 single-neuron variants (30 layers x 1536 neurons) into %zu chunks "
              "in %.2f ms (best of 5)\n", p.chunks.size(), best_ms);
  check_plan(v, f, p);  // the time is printed, not checked: bench/ measures speed
}

}  // namespace

int main() {
  test_small_hand_plan();
  test_pos_start_and_multi_mode();
  test_additions();
  for (uint32_t seed = 0; seed < 300; ++seed) test_random(seed);
  test_errors();
  test_10k_timing();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all planner checks passed\n");
  return 0;
}

