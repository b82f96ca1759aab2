"""Steering additions as sweep variants: batched == loop for every scope, metric and family (mixed
with ablations too); both == an independent plain-HF oracle (unpadded forward, a forward hook on
the decoder block adding alpha * v by hand in float64); == `emofast.interventions.Steering`,
the generation path; shared table entries; results.json; resume fingerprint; errors."""
import json

import pytest
import torch

from conftest import make_tiny
from emofast.analysis import EmotionDirections
from emofast.interventions import Steering
from emofast.sweeps import KL, Edit, LogitDiff, Projection, Steer, steer_grid, sweep
from emofast.sweeps.plan import Add
from emofast.sweeps.steer import lower_steers
from oracles import PROMPTS, SCOPES, loud, run_both, scale_tol, steer_oracle


def random_steers(model, seed: int, per_edit_pos: bool) -> list[list]:
    """The clean run, single Steers (abs and rms, several alphas, one negative), a two-layer
    Steer, and Steers mixed with head and neuron ablations."""
    g = torch.Generator().manual_seed(seed)
    vec = lambda: torch.randn(model.d_model, generator=g)                     # noqa: E731
    p = (lambda k: k) if per_edit_pos else (lambda k: 0)                     # noqa: E731
    L = model.n_layers
    return [[],
            [Steer(0, vec(), 1.5)],
            [Steer(L - 1, vec(), -2.0, pos_start=p(1))],
            [Steer(1, vec(), 0.7, scale="rms", pos_start=p(3))],
            [Steer(0, vec(), 0.5), Steer(L - 1, vec(), 1.0, scale="rms", pos_start=p(2))],
            [Steer(1, vec(), 1.0), Edit(0, "attn_z", [1], pos_start=p(1))],
            [Edit(1, "mlp_act", [0, 5, 9], "mean"), Steer(L - 1, vec(), 3.0, scale="rms")],
            [Steer(0, vec(), 0.0)]]


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gpt_neo"])
def test_batched_equals_loop(family, scope):
    model = loud(make_tiny(family))
    variants = random_steers(model, seed=SCOPES.index(scope), per_edit_pos=scope == "per_edit")
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(7))
    metrics = [KL(), LogitDiff([65, 66], [67]), Projection(v / v.norm(), layer=model.n_layers - 1),
               Projection(v / v.norm(), layer=0)]
    for metric in metrics:
        loop, batched = run_both(model, variants, metric, scope, batch_size=2,
                                 memory_budget=250_000)
        assert batched.splits == 0
        torch.testing.assert_close(batched.per_prompt, loop.per_prompt,
                                   atol=scale_tol(loop.per_prompt), rtol=0)
        # a read at layer 0 sees only edits at layer 0; alpha 0 changes nothing
        sees = [i for i, v in enumerate(variants[1:-1], 1)
                if getattr(metric, "layer", None) != 0 or min(e.layer for e in v) == 0]
        moved = (loop.per_prompt[sees] - loop.per_prompt[0]).abs().amax(1)
        assert (moved > 100 * scale_tol(loop.per_prompt)).all(), "a steer moved nothing"
        for i in set(range(1, len(variants))) - set(sees):
            torch.testing.assert_close(batched.per_prompt[i], batched.per_prompt[0],
                                       atol=scale_tol(loop.per_prompt), rtol=0)


@pytest.mark.parametrize("scope", ["all", "last", "per_edit"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_equals_plain_hf(family, scope):
    """Every variant of random_steers (Steers alone and mixed with zero ablations), KL and a
    Projection read at a steered layer; the mean-ablation variant is left to test_sweep."""
    model = loud(make_tiny(family))
    variants = [v for v in random_steers(model, 3, scope == "per_edit")
                if all(isinstance(s, Steer) or s.mode == "zero" for s in v)]
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(5))
    for metric in (KL(), Projection(v, layer=1)):
        want = torch.tensor([[steer_oracle(model, p, items, scope, metric) for p in PROMPTS]
                             for items in variants], dtype=torch.float64)
        for res in run_both(model, variants, metric, scope, batch_size=3):
            torch.testing.assert_close(res.per_prompt.double(), want, atol=scale_tol(want),
                                       rtol=0)


def test_many_entries_and_mixed_scales_in_one_chunk():
    """70 table entries at one layer (mask words 0..2, bit 31 and negative int32 words), abs
    and rms rows side by side in one chunk: batched == the plain-HF oracle."""
    model = loud(make_tiny("llama"))
    g = torch.Generator().manual_seed(11)
    variants = [[Steer(1, torch.randn(model.d_model, generator=g), 0.05 * (i + 1), scale="rms" if i % 2 else "abs")]
                for i in range(70)]
    res = sweep(model, PROMPTS[:2], variants, KL(), scope="last", progress=False)
    want = torch.tensor([[steer_oracle(model, p, v, "last", KL()) for p in PROMPTS[:2]]
                         for v in variants], dtype=torch.float64)
    torch.testing.assert_close(res.per_prompt.double(), want, atol=scale_tol(want), rtol=0)


@pytest.mark.parametrize("scale", ["abs", "rms"])
def test_equals_generation_steering(scale):
    """A Steer sweep gives what `Steering` (the generation path) gives on the same forward:
    the grid, labels, layers and row bookkeeping (both add with steer_add; the arithmetic's
    oracle is test_equals_plain_hf)."""
    model = loud(make_tiny("llama"))
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(model.n_layers, 2, model.d_model, generator=g)
    dirs = EmotionDirections(vecs / vecs.norm(dim=-1, keepdim=True), ["anger", "joy"],
                             list(range(model.n_layers)))
    variants = steer_grid(dirs, ["anger", "joy"], range(model.n_layers), iter([0.5, 2.0]),
                          scale=scale)                            # iterables are read once
    assert len(variants) == 2 * model.n_layers * 2
    assert variants[3][0].label == "anger" and variants[3][0].layer == 1
    metric = LogitDiff([65], [66, 67])
    res = sweep(model, PROMPTS, variants, metric, batch_size=len(PROMPTS), progress=False)
    enc = model.encode(PROMPTS, padding_side="left")
    for i, (s,) in enumerate(variants):
        steering = Steering.single(dirs, s.label, [s.layer], s.alpha, model.n_layers,
                                   scale=scale)
        with torch.no_grad(), steering.take(slice(None), len(PROMPTS)).hooks(model):
            logits = model.forward(enc["input_ids"], enc["attention_mask"]).logits[:, -1]
        want = logits[:, [65]].mean(-1) - logits[:, [66, 67]].mean(-1)
        torch.testing.assert_close(res.per_prompt[i], want.float(), atol=scale_tol(want), rtol=0)


def test_identical_steers_share_an_entry():
    v, w = torch.ones(8), torch.arange(8.0)
    edits, table = lower_steers([[Steer(0, v, 2.0)], [Steer(1, v.clone(), 2.0)],
                                 [Steer(0, v, 3.0)], [Steer(0, w, 2.0), Edit(1, "attn_z", [0])],
                                 [Steer(0, v, 2.0, scale="rms")], []], d_model=8)
    assert len(table) == 4 and table.scales == ["abs", "abs", "abs", "rms"]
    assert [e[0] for e in edits[:5]] == [Add(0, 0), Add(1, 0), Add(0, 1), Add(0, 2), Add(0, 3)]
    assert edits[3][1] == Edit(1, "attn_z", [0]) and edits[5] == ()
    assert lower_steers([[Edit(0, "mlp_act", [1])]], d_model=8)[1] is None


def test_results_json_and_resume(tmp_path):
    model = make_tiny("llama")
    v = torch.randn(model.d_model)
    variants = [[Steer(1, v, 2.5, label="anger")], [Steer(0, v, 1.0, scale="rms"), Edit(2, "mlp_act", [4])]]
    res = sweep(model, PROMPTS, variants, KL(), out=tmp_path, progress=False)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["variants"][0]["edits"] == [{"layer": 1, "site": "resid_post", "unit": 0,
                                            "mode": "steer", "pos_start": 0, "alpha": 2.5,
                                            "rms": False, "scale": "abs", "label": "anger"}]
    assert [e["site"] for e in doc["variants"][1]["edits"]] == ["resid_post", "mlp_act"]
    from safetensors.torch import load_file
    stored = load_file(tmp_path / "results.safetensors")
    torch.testing.assert_close(stored["steer_vectors"][0], v)
    again = sweep(model, PROMPTS, variants, KL(), out=tmp_path, progress=False)
    assert again.resumed == 2 and torch.equal(again.values, res.values)
    other = [[Steer(1, v + 1, 2.5, label="anger")], variants[1]]
    with pytest.raises(ValueError, match="different sweep .*steer_sha256"):
        sweep(model, PROMPTS, other, KL(), out=tmp_path, progress=False)


@pytest.mark.parametrize("variants, kw, match", [
    (lambda d: [[Steer(0, torch.ones(d + 1))]], {}, "vector of 33 features; the model's d_model is 32"),
    (lambda d: [[Steer(0, torch.ones(d)), Steer(0, torch.ones(d))]], {}, "two Steers at layer 0"),
    (lambda d: [[Steer(9, torch.ones(d))]], {}, "layer 9 out of range: model has 3 layers"),
    (lambda d: [[Steer(0, torch.ones(d), pos_start=1)]], {"scope": "last"},
     "pos_start 1 together with scope 'last'"),
    (lambda d: [[Steer(0, torch.full((d,), float("nan")))]], {}, "non-finite vector"),
    (lambda d: [Steer(0, torch.ones(d))], {}, "single Steer"),
])
def test_errors(tiny_llama, variants, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sweep(tiny_llama, PROMPTS, variants(tiny_llama.d_model), KL(), progress=False, **kw)


@pytest.mark.parametrize("bad, match", [
    (dict(vector=torch.ones(2, 3)), r"vector must be a \[d_model\] tensor"),
    (dict(alpha=float("inf")), "alpha must be a finite number"),
    (dict(rms=1), "rms must be a bool"),
    (dict(scale="log"), "scale must be 'abs' or 'rms'"),
])
def test_steer_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        Steer(**{"layer": 0, "vector": torch.ones(4), **bad})


def test_steer_grid_needs_resid_post_directions():
    v = torch.ones(1, 1, 4) / 2
    with pytest.raises(ValueError, match="read at 'mlp_out': extract them at resid_post"):
        steer_grid(EmotionDirections(v, ["joy"], [0], site="mlp_out"), "joy", [0], [1.0])


def test_old_rms_spelling_warns_and_gives_the_same():
    v = torch.ones(4)
    with pytest.warns(DeprecationWarning, match=r"Steer\(rms=True\) is deprecated: use scale='rms'"):
        old = Steer(0, v, 2.0, rms=True)
    with pytest.warns(DeprecationWarning, match="use scale='rms'"):
        positional = Steer(0, v, 2.0, True)          # the old fourth positional argument
    assert old.scale == positional.scale == "rms" and old.rms
    dirs = EmotionDirections(torch.ones(1, 1, 4) / 2, ["joy"], [0])
    with pytest.warns(DeprecationWarning, match=r"steer_grid\(rms=True\)"):
        [[grid]] = steer_grid(dirs, "joy", [0], [1.0], rms=True)
    assert grid.scale == "rms"
