"""Sweep planner: the C++ op against the Python planner, plan invariants, errors, 10k timing.

The C++ core has its own unit tests (csrc/planner/test_planner.cpp, run by `make ctest`)."""
import random
import time

import pytest
import torch

from emofast.kernels import cpp
from emofast.sweeps.plan import (ABLATION_MODES, MODES, SITES, TABLE_SITES, Add, Edit, Plan,
                                 Variant, plan_sweep)

HAS_CPP = cpp.has("plan_sweep")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="emofast._C with plan_sweep not built")
IMPLS = [pytest.param("cpp", marks=needs_cpp), "python"]
FACTS = dict(n_layers=4, n_units={"mlp_act": 40, "attn_z": 3, "resid_post": 5}, seq_len=16,
             n_prompts=2, bytes_per_row_per_layer=100, memory_budget=1600)  # 2 from layer 0


def random_sweep(seed: int):
    """Random variants (empty ones, several edits, duplicates, every ablation mode, additions)
    and model facts."""
    rng = random.Random(seed)
    n_layers = rng.randint(1, 6)
    n_units = {"mlp_act": rng.randint(1, 70), "attn_z": rng.randint(1, 9),
               "resid_post": rng.randint(1, 20), "sae": rng.randint(1, 12)}
    n_prompts, bpr = rng.randint(1, 3), 100
    facts = dict(n_layers=n_layers, n_units=n_units, seq_len=9, n_prompts=n_prompts,
                 bytes_per_row_per_layer=bpr,
                 memory_budget=n_prompts * bpr * n_layers * rng.randint(1, 5))
    variants = []
    for _ in range(rng.randint(1, 60)):
        edits = []
        for _ in range(rng.randint(0, 3)):
            site = rng.choice(SITES)
            if site in TABLE_SITES:
                e = Add(rng.randrange(n_layers), rng.randrange(n_units[site]), 3 * rng.randrange(3),
                        site)
            else:
                e = Edit(rng.randrange(n_layers), site,
                         [rng.randrange(n_units[site]) for _ in range(rng.randint(1, 4))],
                         "zero" if rng.random() < 0.5 else rng.choice(ABLATION_MODES),
                         3 * rng.randrange(3))
            # one mode and pos_start per (layer, site) within a variant, one addition per
            # (layer, table site)
            if all((o.layer, o.site) != (e.layer, e.site) or (o.mode, o.pos_start) ==
                   (e.mode, e.pos_start) and e.site not in TABLE_SITES for o in edits):
                edits.append(e)
        variants.append(Variant(edits))
    return variants, facts


def decode(row: torch.Tensor) -> set[int]:
    """Units set in one mask row [words] int32: bit u % 32 of word u // 32, LSB first."""
    return {32 * w + b for w, word in enumerate(row.tolist()) for b in range(32) if word >> b & 1}


def check_invariants(variants, facts, plan: Plan):
    V, n_layers = len(variants), facts["n_layers"]
    assert sorted(plan.order.tolist()) == list(range(V))  # every variant exactly once
    assert torch.equal(torch.cat([c.variant_ids for c in plan.chunks]), plan.order)
    decoded = [dict() for _ in range(V)]
    for c in plan.chunks:
        ids = c.variant_ids.tolist()
        assert c.bytes == len(ids) * facts["n_prompts"] * facts["bytes_per_row_per_layer"] * (
            n_layers - c.first_layer)
        assert c.bytes <= facts["memory_budget"]
        for i in ids:  # one group key per chunk: the shared clean prefix
            edits = variants[i].edits
            assert c.first_layer == min((e.layer for e in edits), default=n_layers)
            assert c.pos_start == min((e.pos_start for e in edits), default=0)
        for (layer, site), block in c.blocks.items():
            assert block.pos_start.shape == (len(ids),)
            if site in TABLE_SITES:  # additions: one entry per row, no mask
                assert block.mode == "add" and block.mask is None
                assert block.entries.dtype == torch.int64 and block.entries.shape == (len(ids),)
                rows = {r: {int(block.entries[r])} for r in range(len(ids))
                        if block.entries[r] >= 0}
            else:
                words = -(-facts["n_units"][site] // 32)
                assert block.entries is None
                assert block.mask.dtype == torch.int32 and block.mask.shape == (len(ids), words)
                rows = {r: u for r in range(len(ids)) if (u := decode(block.mask[r]))}
            for r, units in rows.items():
                decoded[ids[r]][(layer, site)] = (block.mode, int(block.pos_start[r]), units)
    for i, v in enumerate(variants):
        want = {}
        for e in v.edits:
            want.setdefault((e.layer, e.site), (e.mode, e.pos_start, set()))[2].update(e.units)
        assert decoded[i] == want, f"variant {i}"


def assert_same_plan(a: Plan, b: Plan):
    assert torch.equal(a.order, b.order)
    assert len(a.chunks) == len(b.chunks)
    for x, y in zip(a.chunks, b.chunks):
        assert torch.equal(x.variant_ids, y.variant_ids)
        assert (x.first_layer, x.pos_start, x.bytes) == (y.first_layer, y.pos_start, y.bytes)
        assert list(x.blocks) == list(y.blocks)
        for k, bx in x.blocks.items():
            by = y.blocks[k]
            assert bx.mode == by.mode and torch.equal(bx.pos_start, by.pos_start), k
            for a, b in ((bx.mask, by.mask), (bx.entries, by.entries)):
                assert (a is None and b is None) or torch.equal(a, b), k


@needs_cpp
@pytest.mark.parametrize("seed", range(40))
def test_cpp_matches_python(seed):
    variants, facts = random_sweep(seed)
    cpp = plan_sweep(variants, **facts, impl="cpp")
    check_invariants(variants, facts, cpp)
    assert_same_plan(cpp, plan_sweep(variants, **facts, impl="python"))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(10))
def test_invariants(impl, seed):
    variants, facts = random_sweep(1000 + seed)
    check_invariants(variants, facts, plan_sweep(variants, **facts, impl=impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_hand_plan(impl):
    """A plan worked out by hand: groups, order, budget split, bit layout, the clean run."""
    variants = [
        Variant([Edit(2, "mlp_act", [5, 5, 33])]),                   # key (2, 0, zero)
        Variant([]),                                                 # clean run: (4, 0, -)
        Variant([Edit(0, "mlp_act", [1])]),                          # (0, 0, zero)
        [Edit(0, "attn_z", [2]), Edit(3, "mlp_act", [39], pos_start=5)],  # (0, 0, zero)
        Variant([Edit(0, "mlp_act", [0, 31])]),                      # (0, 0, zero), over budget
        Variant([Edit(0, "mlp_act", [7], mode="mean")]),             # (0, 0, mean)
    ]
    plan = plan_sweep(variants, **FACTS, impl=impl)
    assert plan.order.tolist() == [2, 3, 4, 5, 0, 1]
    assert [c.variant_ids.tolist() for c in plan.chunks] == [[2, 3], [4], [5], [0], [1]]
    assert [(c.first_layer, c.pos_start, c.bytes) for c in plan.chunks] == [
        (0, 0, 1600), (0, 0, 800), (0, 0, 800), (2, 0, 400), (4, 0, 0)]
    c = plan.chunks[0]
    assert list(c.blocks) == [(0, "mlp_act"), (0, "attn_z"), (3, "mlp_act")]
    assert c.blocks[(0, "mlp_act")].mask.tolist() == [[2, 0], [0, 0]]
    assert c.blocks[(0, "attn_z")].mask.tolist() == [[0], [4]]
    assert c.blocks[(3, "mlp_act")].mask.tolist() == [[0, 0], [0, 1 << 7]]
    assert c.blocks[(3, "mlp_act")].pos_start.tolist() == [0, 5]
    assert plan.chunks[1].blocks[(0, "mlp_act")].mask.tolist() == [[1 | -(1 << 31), 0]]  # sign
    assert {k: b.mode for k, b in plan.chunks[2].blocks.items()} == {(0, "mlp_act"): "mean"}
    assert plan.chunks[3].blocks[(2, "mlp_act")].mask.tolist() == [[1 << 5, 2]]  # 5 once
    assert plan.chunks[4].blocks == {}
    check_invariants([v if isinstance(v, Variant) else Variant(v) for v in variants], FACTS, plan)


@pytest.mark.parametrize("impl", IMPLS)
def test_multi_mode_variants_split_on_clash(impl):
    a = Variant([Edit(1, "mlp_act", [1]), Edit(2, "mlp_act", [1], mode="mean")])
    b = Variant([Edit(1, "mlp_act", [2], mode="mean"), Edit(2, "mlp_act", [2])])  # clashes with a
    c = Variant([Edit(1, "attn_z", [0]), Edit(2, "attn_z", [1], mode="mean")])    # fits with b
    plan = plan_sweep([a, b, c], **{**FACTS, "memory_budget": 10**6}, impl=impl)
    assert [ch.variant_ids.tolist() for ch in plan.chunks] == [[0], [1, 2]]


ERRORS = [
    ([], {}, "empty variant list"),
    ([[Edit(4, "mlp_act", [1])]], {}, r"variant 0, edit 0: layer 4 out of range: model has 4 "
                                       r"layers \(0\.\.3\)"),
    ([[], [Edit(0, "mlp_act", [40])]], {},
     r"variant 1, edit 0: unit 40 out of range for L0\.mlp_act: 40 units \(0\.\.39\)"),
    ([[Edit(0, "attn_z", [-1])]], {}, r"unit -1 out of range for L0\.attn_z: 3 units \(0\.\.2\)"),
    ([[Add(0, 0)]], {"n_units": {"mlp_act": 40}},
     "site kind resid_post has no unit count: give n_units for it"),
    ([[Add(0, 5)]], {}, r"unit 5 out of range for L0\.resid_post: 5 units \(0\.\.4\)"),
    ([[Add(1, 0), Add(1, 1)]], {}, r"variant 0, edit 1: two additions at L1\.resid_post "
                                   r"\(edit 0 and here\): add their vectors into one entry"),
    ([[Edit(0, "mlp_act", [0], pos_start=-1)]], {}, "pos_start -1 must be >= 0"),
    ([[Edit(0, "mlp_act", [0], pos_start=16)]], {}, r"pos_start 16 out of range: seq_len is 16"),
    ([[Edit(0, "mlp_act", [])]], {}, r"edit at L0\.mlp_act has no units"),
    ([[Edit(1, "mlp_act", [1]), Edit(1, "mlp_act", [2], mode="mean")]], {},
     r"variant 0, edit 1: L1\.mlp_act is edited twice with different mode/pos_start "
     r"\(zero from 0 in edit 0, mean from 0 here\)"),
    ([[Edit(0, "mlp_act", [1])]], {"memory_budget": 799},
     r"variant 0 alone needs 800 bytes .* but memory_budget is 799 bytes: over by 1 bytes"),
    ([[]], {"n_layers": 0}, "n_layers must be > 0"),
    ([[]], {"memory_budget": 0}, "memory_budget must be > 0"),
    ([[]], {"n_prompts": 0}, "n_prompts must be > 0"),
    ([[Edit(0, "mlp_act", [1])]], {"bytes_per_row_per_layer": 1 << 62}, "overflows int64"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("variants, facts, message", ERRORS)
def test_errors(impl, variants, facts, message):
    with pytest.raises(ValueError, match=message):
        plan_sweep(variants, **{**FACTS, **facts}, impl=impl)


def test_input_errors():
    with pytest.raises(ValueError, match="unknown site 'mlp'"):
        Edit(0, "mlp", [1])
    with pytest.raises(ValueError, match="unknown mode 'ablate'"):
        Edit(0, "mlp_act", [1], mode="ablate")
    with pytest.raises(ValueError, match=r"steer the residual stream with Steer"):
        Edit(0, "resid_post", [1])
    for mode in ("scale", "steer", "add"):  # not ablations a sweep runs
        with pytest.raises(ValueError, match=f"unknown mode '{mode}'"):
            Edit(0, "mlp_act", [1], mode=mode)
    with pytest.raises(TypeError, match="must be Edit or Add"):
        Variant(["L0.mlp_act"])
    with pytest.raises(ValueError, match=r"n_units has unknown site\(s\) \['d_mlp'\]"):
        plan_sweep([[]], **{**FACTS, "n_units": {"d_mlp": 4}})
    with pytest.raises(ValueError, match="impl must be"):
        plan_sweep([[]], **FACTS, impl="torch")


@needs_cpp
def test_10k_single_neuron_variants():
    """10,000 single-neuron variants over 30 layers x 1,536 neurons (SmolLM2-135M's MLP)
    planned through the C++ path; the plan holds every invariant."""
    rng = random.Random(0)
    variants = [Variant([Edit(rng.randrange(30), "mlp_act", [rng.randrange(1536)])])
                for _ in range(10_000)]
    facts = dict(n_layers=30, n_units={"mlp_act": 1536, "attn_z": 9}, seq_len=64, n_prompts=8,
                 bytes_per_row_per_layer=64 * 576 * 4, memory_budget=8 << 30)
    plan_sweep(variants[:10], **facts, impl="cpp")  # warm-up: op lookup
    t0 = time.perf_counter()
    plan = plan_sweep(variants, **facts, impl="cpp")
    seconds = time.perf_counter() - t0
    print(f"\nplan_sweep (C++ path, from Python): 10,000 variants -> {len(plan.chunks)} chunks "
          f"in {seconds * 1e3:.1f} ms")  # a figure, not a check: bench/ measures speed
    check_invariants(variants, facts, plan)


@needs_cpp
def test_python_names_match_the_cpp_enums(monkeypatch):
    assert cpp.planner_names() == (SITES, MODES)
    import emofast.sweeps.plan as plan  # the check that runs when the extension loads
    monkeypatch.setattr(cpp, "planner_names", lambda: (("mlp_act", "attn_z", "resid"), MODES))
    with pytest.raises(RuntimeError, match="the extension is stale, rebuild it"):
        plan._check_names(cpp.ops())


@pytest.mark.parametrize("impl", IMPLS)
def test_additions_hand_plan(impl):
    """Additions: one entry per row, -1 where a row adds nothing; mixed with an ablation."""
    variants = [[Add(1, 3)], [Add(1, 0), Edit(2, "attn_z", [1])], [Add(1, 4, pos_start=2)],
                [Add(1, 4)], [Edit(2, "mlp_act", [7]), Add(2, 1)]]
    plan = plan_sweep(variants, **{**FACTS, "memory_budget": 10**6}, impl=impl)
    assert plan.order.tolist() == [0, 3, 1, 2, 4]
    assert [c.variant_ids.tolist() for c in plan.chunks] == [[0, 3], [1], [2], [4]]
    assert plan.chunks[0].blocks[(1, "resid_post")].entries.tolist() == [3, 4]
    assert plan.chunks[2].blocks[(1, "resid_post")].pos_start.tolist() == [2]
    assert plan.chunks[3].blocks[(2, "resid_post")].entries.tolist() == [1]
    check_invariants([Variant(v) for v in variants], FACTS, plan)
