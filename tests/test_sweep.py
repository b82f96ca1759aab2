"""Ablation sweeps: batched == loop for every variant kind, position scope, metric and family;
loop == an independent plain-HF oracle (one unpadded forward per prompt, forward pre-hooks on the
HF modules that edit the input by hand, metrics written out by hand); clean KL is 0; 300 variants
in many chunks; errors.

Tolerance: fp32, max abs difference <= 1e-4 x the metric's scale (max |value|, at least 1). The
tiny models get larger random weights (`loud`) so that ablations move the metrics by far more
than that (checked), else equal results would prove little.
"""
import importlib
import random

import pytest
import torch

from conftest import FAMILIES, make_tiny
from emofast.planner import Edit, Variant
from emofast.sweep import KL, LogitDiff, LogProb, SweepResult, sweep

sweep_mod = importlib.import_module("emofast.sweep")  # `emofast.sweep` is the function

PROMPTS = ["hello there", "a", "the quick brown fox", "abc def", "xyzzy!"]  # 1..19 tokens
METRICS = [KL(), LogitDiff([65, 66], [67, 68, 69]), LogProb([70, 71])]
SCOPES = ["all", "last", 2, "per_edit"]  # per_edit: positions="all", each Edit its own pos_start


def loud(model, seed: int = 1):
    """Re-draw the matrices with larger weights: ablations then change the output a lot."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.hf.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 if any(k in name for k in ("emb", "wte", "wpe")) else 0.25)
    return model


def random_variants(model, n: int, seed: int, per_edit_pos: bool = False) -> list[list[Edit]]:
    """Clean run first, then a mix of single heads, head sets, single neurons, neuron sets, zero
    and mean, one or two edits per variant (one edit per (layer, site))."""
    rng = random.Random(seed)
    out = [[]]
    while len(out) < n:
        edits, used = [], set()
        for _ in range(rng.randint(1, 2)):
            layer, site = rng.randrange(model.n_layers), rng.choice(["attn_z", "mlp_act"])
            if (layer, site) in used:
                continue
            used.add((layer, site))
            n_units = model.n_heads if site == "attn_z" else model.d_mlp
            k = 1 if rng.random() < 0.5 else rng.randint(2, min(n_units, 12))
            edits.append(Edit(layer, site, rng.sample(range(n_units), k),
                              rng.choice(["zero", "mean"]),
                              rng.choice([0, 1, 3]) if per_edit_pos else 0))
        out.append(edits)
    return out


def scale_tol(values: torch.Tensor) -> float:
    return 1e-4 * max(1.0, values.abs().max().item())


def run_both(model, variants, metric, scope, **kw):
    positions = "all" if scope == "per_edit" else scope
    loop = sweep(model, PROMPTS, variants, metric, engine="loop", positions=positions,
                 progress=False, **kw)
    batched = sweep(model, PROMPTS, variants, metric, engine="batched", positions=positions,
                    progress=False, **kw)
    return loop, batched


# -- the independent oracle ------------------------------------------------------------------
def oracle(model, prompts, variants, metric, scope) -> torch.Tensor:
    """[n_variants, n_prompts]: per prompt an unpadded HF forward; edits by forward pre-hooks on
    the attention output projection (heads = slices of d_head columns) and the MLP down
    projection; means over every token of every prompt read the same way."""
    hf, ad = model.hf, model.adapter
    part = {"attn_z": "attn_out_proj", "mlp_act": "mlp_down"}
    ids = [model.tokenizer(p, return_tensors="pt")["input_ids"] for p in prompts]

    def cols(e):
        if e.site == "mlp_act":
            return list(e.units)
        return [u * model.d_head + j for u in e.units for j in range(model.d_head)]

    keys = {(e.layer, e.site) for v in variants for e in v}
    sums, count = {k: 0.0 for k in keys}, 0
    handles = []
    for layer, site in keys:
        def read(module, args, key=(layer, site)):
            sums[key] = sums[key] + args[0][0].double().sum(0)      # [W]
        handles.append(ad.module(layer, part[site]).register_forward_pre_hook(read))
    clean = []
    with torch.no_grad():
        for x in ids:
            clean.append(hf(input_ids=x).logits[0, -1].double())
            count += x.shape[1]
    for h in handles:
        h.remove()
    means = {k: (s / count).float() for k, s in sums.items()}

    out = torch.empty(len(variants), len(prompts), dtype=torch.float64)
    for i, edits in enumerate(variants):
        for j, x in enumerate(ids):
            T = x.shape[1]
            handles = []
            for e in edits:
                start = {"last": T - 1, 2: 2, "all": 0, "per_edit": e.pos_start}[scope]

                def edit(module, args, e=e, start=start):
                    z = args[0].clone()                                 # [1, T, W]
                    c = cols(e)
                    z[0, start:, c] = 0.0 if e.mode == "zero" else means[(e.layer, e.site)][c]
                    return (z,) + tuple(args[1:])
                handles.append(ad.module(e.layer, part[e.site]).register_forward_pre_hook(edit))
            try:
                with torch.no_grad():
                    logits = hf(input_ids=x).logits[0, -1].double()     # [vocab]
            finally:
                for h in handles:
                    h.remove()
            out[i, j] = by_hand(metric, logits, clean[j])
    return out


def by_hand(metric, logits, clean_logits) -> float:
    if isinstance(metric, KL):
        p, q = clean_logits.softmax(-1), logits.softmax(-1)
        return float((p * (p.log() - q.log())).sum())
    if isinstance(metric, LogitDiff):
        return float(logits[metric.tokens_a].mean() - logits[metric.tokens_b].mean())
    return float(logits.softmax(-1)[metric.tokens].sum().log())


# -- exactness -------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_batched_equals_loop(family, scope):
    model = loud(make_tiny(family))
    variants = random_variants(model, 14, seed=10 * SCOPES.index(scope) + len(family),
                               per_edit_pos=scope == "per_edit")
    for metric in METRICS:  # batch_size 2: three prompt batches; budget: several chunks
        loop, batched = run_both(model, variants, metric, scope, batch_size=2,
                                 memory_budget=250_000)
        assert batched.per_prompt.shape == (len(variants), len(PROMPTS))
        tol = scale_tol(loop.per_prompt)
        torch.testing.assert_close(batched.per_prompt, loop.per_prompt, atol=tol, rtol=0)
        torch.testing.assert_close(batched.values, loop.per_prompt.mean(1), atol=tol, rtol=0)
        moved = (loop.per_prompt[1:] - loop.per_prompt[0]).abs().amax(1)
        assert (moved > 100 * tol).float().mean() > 0.5, "ablations barely change the metric"


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("llama", "gpt2", "gpt_neox")])
def test_batched_equals_loop_other_families(family):
    model = loud(make_tiny(family))
    variants = random_variants(model, 10, seed=7)
    loop, batched = run_both(model, variants, KL(), "last", batch_size=2, memory_budget=250_000)
    torch.testing.assert_close(batched.per_prompt, loop.per_prompt,
                               atol=scale_tol(loop.per_prompt), rtol=0)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_loop_equals_plain_hf(family, scope):
    model = loud(make_tiny(family))
    variants = random_variants(model, 6, seed=3, per_edit_pos=scope == "per_edit")
    for metric in METRICS:
        got = sweep(model, PROMPTS, variants, metric, engine="loop", progress=False,
                    positions="all" if scope == "per_edit" else scope).per_prompt
        want = oracle(model, PROMPTS, variants, metric, scope).float()
        torch.testing.assert_close(got, want, atol=scale_tol(want), rtol=0)


def test_clean_variant_has_zero_kl():
    model = loud(make_tiny("llama"))
    variants = [[], [Edit(1, "attn_z", [0])], Variant([])]
    for engine in ("loop", "batched"):
        res = sweep(model, PROMPTS, variants, KL(), engine=engine, progress=False)
        assert isinstance(res, SweepResult) and res.engine == engine and res.elapsed_s > 0
        assert res.per_prompt[[0, 2]].abs().max() < 1e-5
        assert res.values[1] > 1e-3


def test_300_variants_in_many_chunks(monkeypatch):
    model = loud(make_tiny("llama"))
    variants = random_variants(model, 300, seed=11)
    plans = []

    def spy(*args, **kw):
        plans.append(plan_sweep(*args, **kw))
        return plans[-1]
    plan_sweep = sweep_mod.plan_sweep
    monkeypatch.setattr(sweep_mod, "plan_sweep", spy)
    loop, batched = run_both(model, variants, LogitDiff([65], [66]), "all",
                             memory_budget=800_000)
    assert len(plans[0].chunks) >= 5
    torch.testing.assert_close(batched.per_prompt, loop.per_prompt,
                               atol=scale_tol(loop.per_prompt), rtol=0)


def test_progress_false_is_silent(capsys):
    model = make_tiny("gpt2")
    for engine in ("loop", "batched"):
        sweep(model, PROMPTS[:2], [[Edit(0, "mlp_act", [1])]], KL(), engine=engine,
              progress=False)
    assert capsys.readouterr().err == ""


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("variants, kw, match", [
    ([], {}, "non-empty list of variants"),
    ([[Edit(3, "mlp_act", [0])]], {}, "layer 3 out of range"),
    ([[Edit(0, "attn_z", [4])]], {}, r"units \[4\] must be .* 0..3"),
    ([[Edit(0, "mlp_act", [48])]], {}, r"0..47"),
    ([[Edit(0, "mlp_act", [1], "scale")]], {}, "zero/mean/patch ablations"),
    ([[Edit(0, "resid", [1])]], {}, r"Steer\(layer, vector, alpha\)"),
    ([[Edit(0, "mlp_act", [1], pos_start=2)]], {"positions": "last"}, "not both"),
    ([[Edit(0, "mlp_act", [1], pos_start=50)]], {}, "edits nothing"),
    ([[Edit(0, "mlp_act", [1]), Edit(0, "mlp_act", [2], "mean")]], {}, "edited twice"),
    ([[Edit(0, "mlp_act", [1])]], {"engine": "fast"}, "unknown engine 'fast'"),
    ([[Edit(0, "mlp_act", [1])]], {"positions": "first"}, "positions must be"),
    ([[Edit(0, "mlp_act", [1])]], {"positions": -1}, "positions must be"),
    ([[Edit(0, "mlp_act", [1])]], {"batch_size": 0}, "batch_size"),
    ([[Edit(0, "mlp_act", [1])]], {"memory_budget": 10}, "memory_budget"),
])
def test_errors(tiny_llama, variants, kw, match):
    with pytest.raises(ValueError, match=match):
        sweep(tiny_llama, PROMPTS, variants, KL(), progress=False, **kw)


def test_metric_errors(tiny_llama):
    for metric, match in [(LogProb([300]), r"\[300\] out of range: .* 258 tokens"),
                          (LogitDiff([1], [-1]), r"\[-1\] out of range")]:
        with pytest.raises(ValueError, match=match):
            sweep(tiny_llama, PROMPTS, [[]], metric, progress=False)
    with pytest.raises(ValueError, match="duplicate"):
        LogProb([3, 3])
    with pytest.raises(ValueError, match="integer token ids"):
        LogitDiff([], [1])
    with pytest.raises(TypeError, match="variant 0 is a single Edit"):
        sweep(tiny_llama, PROMPTS, [Edit(0, "mlp_act", [1])], KL(), progress=False)
    with pytest.raises(TypeError, match="metric must be a Metric"):
        sweep(tiny_llama, PROMPTS, [[]], "kl", progress=False)
    with pytest.raises(ValueError, match="prompt"):
        sweep(tiny_llama, [], [[]], KL(), progress=False)
