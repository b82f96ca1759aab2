// Sweep planner core: packs sweep variants (ablations and residual additions) into chunks that
// run as one batched forward.
// Plain C++17, no torch headers, so CMake builds and unit-tests it alone (test_planner.cpp);
// csrc/planner_bindings.cpp exposes it as torch.ops.emofast.plan_sweep.
//
// A variant is a list of edits; an edit names a (layer, site kind), the units it touches, a mode
// and the first position it edits. Two families of edits:
//   ablations (modes zero, mean, patch) at mlp_act (unit = neuron) or attn_z (unit = head), any
//     number of units;
//   additions (mode add) at resid_post or sae: exactly one unit, the index of an entry in one of
//     the sweep's tables: at resid_post a residual addition (a steering vector with its strength),
//     at sae an SAE feature edit (which adds its reconstruction change to the SAE's site);
//     n_units[kind] is the table's size. At most one addition per (layer, kind) and variant.
// The planner
//   1. validates every variant (std::invalid_argument with a message naming variant and edit),
//   2. gives each variant a group key (first_layer, pos_start, mode_set):
//        first_layer = min edit layer   (layers < first_layer are clean: run once, shared),
//        pos_start   = min edit pos_start (positions < pos_start are clean: from the KV cache),
//        mode_set    = bit m set when the variant uses mode m,
//      an empty variant (no edits) is the clean run: key (n_layers, 0, 0), a group of its own,
//   3. orders variants by (group key, variant id),
//   4. cuts the order greedily into chunks: a chunk holds one group key, stays within
//      memory_budget_bytes, and never holds two modes at the same (layer, kind) (variants with
//      one mode each never clash, since mode_set is in the key; a multi-mode variant that would
//      clash starts a new chunk),
//   5. per chunk and per (layer, kind) the chunk touches, builds a Block: the pos_start of each row
//      there, and for ablations a bitmask [V_c, ceil(n_units/32)] (the masked_ablate contract:
//      unit u of row i is bit u % 32 of word [i, u / 32], LSB first), for additions the entry each
//      row adds [V_c] (-1: none).
// Duplicate units in an edit are deduplicated (the mask is a set). Two edits of one variant at
// the same (layer, kind) merge when they agree on mode and pos_start, else it is an error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace emofast::planner {

// Site kinds; the value indexes ModelFacts::n_units. The names (kind_name) are checked against
// emofast.sweeps.plan.SITES when the extension loads: change both together.
enum class SiteKind : int64_t {
  mlp_act = 0,     // unit = neuron of the MLP activation (n_units = d_mlp)
  attn_z = 1,      // unit = attention head (n_units = H; the kernel groups d_head columns per unit)
  resid_post = 2,  // unit = an entry of the sweep's table of residual additions (mode add)
  sae = 3,         // unit = an entry of the sweep's table of SAE feature edits (mode add)
};
constexpr int64_t kNumKinds = 4;

// Kinds whose edits name one table entry (mode add) instead of a set of units.
constexpr bool is_table_kind(int64_t kind) {
  return kind == static_cast<int64_t>(SiteKind::resid_post) ||
         kind == static_cast<int64_t>(SiteKind::sae);
}

// Modes; the names (mode_name) are checked against emofast.sweeps.plan.MODES likewise.
enum class Mode : int64_t { zero = 0, mean = 1, patch = 2, add = 3 };
constexpr int64_t kNumModes = 4;

std::string kind_name(int64_t kind);  // "mlp_act", ..., or "kind<k>" beyond the named ones
std::string mode_name(int64_t mode);  // "zero", ..., or "mode<m>"

struct Edit {
  int64_t layer = 0;             // [0, n_layers)
  int64_t kind = 0;              // SiteKind value: index into ModelFacts::n_units
  int64_t mode = 0;              // Mode value
  int64_t pos_start = 0;         // edits positions >= pos_start (0 = all positions)
  std::vector<int64_t> units;    // in [0, n_units[kind]); duplicates allowed (deduplicated)
};

using Variant = std::vector<Edit>;  // empty = the clean run

struct ModelFacts {
  int64_t n_layers = 0;
  std::vector<int64_t> n_units;        // per kind; 0 = kind not available in this model
  int64_t seq_len = 0;                 // T; 0 = not given (pos_start is then not bounded above)
  int64_t bytes_per_row_per_layer = 0; // memory one batch row needs per layer it runs
  int64_t n_prompts = 0;               // rows per variant
  int64_t memory_budget_bytes = 0;     // per chunk
};

// What the rows of one chunk do at one (layer, kind); row i = order[chunk.begin + i].
struct Block {
  int64_t layer = 0;
  int64_t kind = 0;
  int64_t mode = 0;                 // the one mode all editing rows use here
  std::vector<int64_t> pos_start;   // [V_c]; rows that do not edit here get the chunk's pos_start
  // ablations: a packed unit mask per row
  int64_t words = 0;                // ceil(n_units[kind] / 32); 0 for additions
  std::vector<uint32_t> bits;       // [V_c, words] row-major
  // additions (mode add): the table entry each row adds here, -1 = none
  std::vector<int64_t> entries;     // [V_c]; empty for ablations
};

struct Chunk {
  int64_t begin = 0, end = 0;  // the chunk's variants are order[begin:end]
  int64_t first_layer = 0;     // group key ...
  int64_t pos_start = 0;
  int64_t mode_set = 0;
  int64_t bytes = 0;           // (end - begin) * n_prompts * bytes_per_row_per_layer * (n_layers - first_layer)
  std::vector<Block> blocks;  // sorted by (layer, kind)
};

struct Plan {
  std::vector<int64_t> order;  // [V] variant ids in execution order (a permutation)
  std::vector<Chunk> chunks;   // consecutive ranges covering order
};

// Throws std::invalid_argument with a message a user understands on invalid input.
Plan plan_sweep(const std::vector<Variant>& variants, const ModelFacts& facts);

}  // namespace emofast::planner
