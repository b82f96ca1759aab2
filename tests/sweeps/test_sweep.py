"""Ablation sweeps: batched == loop for every variant kind, position scope, metric and family;
loop == an independent plain-HF oracle (one unpadded forward per prompt, forward pre-hooks on the
HF modules that edit the input by hand, metrics written out by hand); clean KL is 0; 300 variants
in many chunks; errors.

Tolerance: fp32, max abs difference <= 1e-4 x the metric's scale (max |value|, at least 1). The
tiny models get larger random weights (`loud`) so that ablations move the metrics by far more
than that (checked), else equal results would prove little.
"""
import pytest
import torch

import emofast.sweeps.batched as batched_mod
from conftest import FAMILIES, make_tiny
from emofast.sweeps import KL, Edit, LogitDiff, LogProb, SweepResult, Variant, sweep
from oracles import (METRICS, PROMPTS, SCOPES, as_scope, loud, oracle, random_variants,
                     run_both, scale_tol)

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
                    scope=as_scope(scope)).per_prompt
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
    plan_sweep = batched_mod.plan_sweep
    monkeypatch.setattr(batched_mod, "plan_sweep", spy)
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
    ([[Edit(0, "mlp_act", [1], pos_start=2)]], {"scope": "last"}, "not both"),
    ([[Edit(0, "mlp_act", [1], pos_start=50)]], {}, "edits nothing"),
    ([[Edit(0, "mlp_act", [1]), Edit(0, "mlp_act", [2], "mean")]], {}, "edited twice"),
    ([[Edit(0, "mlp_act", [1])]], {"engine": "fast"}, "unknown engine 'fast'"),
    ([[Edit(0, "mlp_act", [1])]], {"scope": "first"}, "unknown scope 'first'"),
    ([[Edit(0, "mlp_act", [1])]], {"scope": "from:-1"}, "bad scope"),
    ([[Edit(0, "mlp_act", [1])]], {"scope": "last:3"}, "sweep does not support scope last:3"),
    ([[Edit(0, "mlp_act", [1])]], {"scope": "prompt"}, "does not support scope prompt"),
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


def test_old_positions_spelling_warns_and_gives_the_same(tiny_llama):
    """positions= (an int p: real tokens >= p) keeps working for one release."""
    variants = [[Edit(0, "mlp_act", [1, 2])], [Edit(1, "attn_z", [0])]]
    new = sweep(tiny_llama, PROMPTS, variants, KL(), scope="from:2", progress=False)
    with pytest.warns(DeprecationWarning, match=r"sweep\(positions=2\) is deprecated: use "
                                                r"scope='from:2'"):
        old = sweep(tiny_llama, PROMPTS, variants, KL(), positions=2, progress=False)
    assert torch.equal(new.per_prompt, old.per_prompt)
    with pytest.raises(ValueError, match="give scope= only"):
        sweep(tiny_llama, PROMPTS, variants, KL(), positions=2, scope="all", progress=False)
