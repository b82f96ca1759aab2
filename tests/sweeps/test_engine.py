"""The batched engine's machinery: residual metrics against a hand computation, the shared prefix
and key/value reuse really skip work, out-of-memory halving, resume after an interruption,
results.json, and 10,000 variants end to end."""
import json
import random

import pytest
import torch

import emofast.sweeps.batched as batched_mod
from conftest import make_tiny
from emofast.analysis import LinearProbe
from emofast.sweeps import KL, Edit, LogitDiff, ProbeProb, Projection, sweep
from oracles import PROMPTS, Interrupting, loud, random_variants, run_both, scale_tol


def resid_by_hand(model, prompt: str, layer: int, edits) -> torch.Tensor:
    """resid_post of `layer` at the last token: an unpadded HF forward, zero ablations at all
    positions by forward pre-hooks, the block output read by a forward hook."""
    ad, part = model.adapter, {"attn_z": "attn_out_proj", "mlp_act": "mlp_down"}
    x = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
    seen, handles = {}, []
    for e in edits:
        cols = (list(e.units) if e.site == "mlp_act" else
                [u * model.d_head + j for u in e.units for j in range(model.d_head)])

        def edit(module, args, cols=cols):
            z = args[0].clone()
            z[..., cols] = 0.0
            return (z,) + tuple(args[1:])
        handles.append(ad.module(e.layer, part[e.site]).register_forward_pre_hook(edit))

    def read(module, args, output):
        seen["h"] = (output[0] if isinstance(output, tuple) else output)[0, -1].double()
    handles.append(ad.blocks[layer].register_forward_hook(read))
    try:
        with torch.no_grad():
            model.hf(input_ids=x)
    finally:
        for h in handles:
            h.remove()
    return seen["h"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_residual_metrics_equal_hand_computation(family):
    model = loud(make_tiny(family))
    torch.manual_seed(0)
    v = torch.randn(model.d_model)
    probe = LinearProbe(torch.randn(3, model.d_model), torch.randn(3), torch.randn(model.d_model),
                        torch.rand(model.d_model) + 0.5, ["a", "b", "c"])
    variants = [[]] + [[Edit(layer, "attn_z", [1]), Edit(layer, "mlp_act", [2, 5])]
                       for layer in range(model.n_layers)]
    for metric, layer in [(Projection(v), model.n_layers - 1), (Projection(v, layer=1), 1),
                          (ProbeProb(probe, "b"), model.n_layers - 1)]:
        loop, batched = run_both(model, variants, metric, "all", batch_size=2)
        torch.testing.assert_close(batched.per_prompt, loop.per_prompt,
                                   atol=scale_tol(loop.per_prompt), rtol=0)
        for i, edits in enumerate(variants):
            for j, prompt in enumerate(PROMPTS):
                h = resid_by_hand(model, prompt, layer, edits)
                if isinstance(metric, Projection):
                    want = h @ (v.double() / v.double().norm())
                else:
                    z = (h - probe.mean.double()) / probe.std.double()
                    want = (z @ probe.weight.double().T + probe.bias.double()).softmax(-1)[1]
                assert abs(loop.per_prompt[i, j].item() - want.item()) <= scale_tol(want)


def test_residual_metric_errors(tiny_llama):
    with pytest.raises(ValueError, match="width 5 does not match the model's d_model 32"):
        sweep(tiny_llama, PROMPTS, [[]], Projection(torch.ones(5)), progress=False)
    with pytest.raises(ValueError, match="layer 7 out of range"):
        sweep(tiny_llama, PROMPTS, [[]], Projection(torch.ones(32), layer=7), progress=False)
    with pytest.raises(ValueError, match="non-zero"):
        Projection(torch.zeros(4))
    probe = LinearProbe(torch.ones(2, 32), torch.zeros(2), torch.zeros(32), torch.ones(32),
                        ["x", "y"])
    with pytest.raises(ValueError, match="class 'z' not in"):
        ProbeProb(probe, "z")


def test_prefix_layers_skipped_and_kv_reused():
    """A chunk editing only layer 2 at the last token: its rows never enter layers 0-1, and
    layer 2 (the last) sees one position per row."""
    model = loud(make_tiny("llama"))
    variants = [[Edit(2, "attn_z", [h])] for h in range(model.n_heads)]
    seen = {i: [] for i in range(model.n_layers)}
    handles = [model.adapter.blocks[i].register_forward_pre_hook(
        lambda m, args, i=i: seen[i].append(tuple(args[0].shape[:2])))
        for i in range(model.n_layers)]
    try:
        res = sweep(model, PROMPTS, variants, KL(), scope="last", progress=False)
    finally:
        for h in handles:
            h.remove()
    rows = len(variants) * len(PROMPTS)
    assert seen[0] == seen[1] == [(len(PROMPTS), 19)]          # the clean pass only
    assert seen[2] == [(len(PROMPTS), 19), (rows, 1)]                # the last layer
    loop = sweep(model, PROMPTS, variants, KL(), scope="last", engine="loop", progress=False)
    torch.testing.assert_close(res.per_prompt, loop.per_prompt, atol=scale_tol(loop.per_prompt),
                               rtol=0)


def test_out_of_memory_halves_the_chunk(monkeypatch):
    model = loud(make_tiny("llama"))
    variants = random_variants(model, 40, seed=5)
    want = sweep(model, PROMPTS, variants, KL(), progress=False, batch_size=2)
    real, calls = batched_mod.run_chunk, []

    def tight(model, state, chunk, metric, **kw):  # a device that fits 3 variants per forward
        if len(chunk.variant_ids) > 3:
            raise torch.OutOfMemoryError("simulated")
        calls.append((state.batch.start, chunk.variant_ids.tolist()))
        return real(model, state, chunk, metric, **kw)
    monkeypatch.setattr(batched_mod, "run_chunk", tight)
    got = sweep(model, PROMPTS, variants, KL(), progress=False, batch_size=2)
    assert got.splits > 0
    torch.testing.assert_close(got.per_prompt, want.per_prompt, atol=1e-6, rtol=0)
    done = sorted((start, i) for start, ids in calls for i in ids)
    assert len(done) == len(set(done)) == len(variants) * 3     # 3 prompt batches, none twice
    one = lambda *a, **kw: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated"))
    monkeypatch.setattr(batched_mod, "run_chunk", one)
    with pytest.raises(torch.OutOfMemoryError):               # one variant that cannot fit
        sweep(model, PROMPTS, variants[:2], KL(), progress=False)


@pytest.mark.parametrize("engine", ["batched", "loop"])
def test_resume_after_interruption(tmp_path, engine):
    model = loud(make_tiny("gpt2"))
    variants = random_variants(model, 60, seed=9)
    kw = dict(engine=engine, progress=False, batch_size=5, memory_budget=600_000)
    whole = sweep(model, PROMPTS, variants, LogitDiff([65], [66]), **kw)
    first = Interrupting([65], [66], interrupt_at=12 if engine == "batched" else 40)
    with pytest.raises(KeyboardInterrupt):
        sweep(model, PROMPTS, variants, first, out=tmp_path, **kw)
    parts = list((tmp_path / "parts").glob("*.safetensors"))
    assert parts and not (tmp_path / "results.json").exists()
    second = Interrupting([65], [66])
    res = sweep(model, PROMPTS, variants, second, out=tmp_path, **kw)
    assert 0 < res.resumed < len(variants)
    assert second.rows == (len(variants) - res.resumed) * len(PROMPTS)  # nothing twice
    torch.testing.assert_close(res.per_prompt, whole.per_prompt, atol=1e-6, rtol=0)
    again = sweep(model, PROMPTS, variants, Interrupting([65], [66]), out=tmp_path, **kw)
    assert again.resumed == len(variants)
    with pytest.raises(ValueError, match="different sweep .*variants_sha256"):
        sweep(model, PROMPTS, variants[:5], LogitDiff([65], [66]), out=tmp_path, **kw)


def test_results_json(tmp_path):
    model = make_tiny("llama")
    variants = [[], [Edit(1, "attn_z", [2])], [Edit(0, "mlp_act", [3, 7], "mean")]]
    res = sweep(model, PROMPTS, variants, KL(), scope="last", out=tmp_path, progress=False)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["engine"] == "batched" and doc["n_prompts"] == 5 and doc["n_variants"] == 3
    assert doc["positions"] == "last" and doc["metric"] == "KL()"
    assert doc["variants_per_s"] == pytest.approx(3 / doc["elapsed_s"])
    assert [v["id"] for v in doc["variants"]] == [0, 1, 2]
    assert doc["variants"][0]["edits"] == []
    assert doc["variants"][1]["edits"] == [{"layer": 1, "site": "attn_z", "unit": 2,
                                            "mode": "zero", "pos_start": 0}]
    assert [e["unit"] for e in doc["variants"][2]["edits"]] == [3, 7]
    assert [v["value"] for v in doc["variants"]] == pytest.approx(res.values.tolist())


def test_ten_thousand_variants():
    """10,000 single-neuron and neuron-pair variants on a tiny model: batched end to end, a
    random sample checked against the loop."""
    model = loud(make_tiny("llama"))
    rng = random.Random(0)
    variants = [[Edit(i % model.n_layers, "mlp_act", [i // model.n_layers % model.d_mlp])]
                for i in range(model.n_layers * model.d_mlp)]
    while len(variants) < 10_000:
        variants.append([Edit(rng.randrange(model.n_layers), "mlp_act",
                              rng.sample(range(model.d_mlp), 2))])
    res = sweep(model, PROMPTS[:2], variants, KL(), scope="last", progress=False)
    assert res.per_prompt.shape == (10_000, 2) and torch.isfinite(res.per_prompt).all()
    sample = rng.sample(range(10_000), 40)
    loop = sweep(model, PROMPTS[:2], [variants[i] for i in sample], KL(), scope="last",
                 engine="loop", progress=False)
    torch.testing.assert_close(res.per_prompt[sample], loop.per_prompt,
                               atol=scale_tol(loop.per_prompt), rtol=0)


def patch_by_hand(model, prompt, source, edits, last: bool) -> torch.Tensor:
    """Next-token logits of `prompt` with each edit's units set to their activation in an
    unpadded run of `source` (same positions; last: the source's last token into the last)."""
    ad, part = model.adapter, {"attn_z": "attn_out_proj", "mlp_act": "mlp_down"}

    def cols(e):
        return (list(e.units) if e.site == "mlp_act" else
                [u * model.d_head + j for u in e.units for j in range(model.d_head)])

    def run(text, pre):
        x = model.tokenizer(text, return_tensors="pt")["input_ids"]
        handles = [ad.module(e.layer, part[e.site]).register_forward_pre_hook(pre(e))
                   for e in edits]
        try:
            with torch.no_grad():
                return model.hf(input_ids=x).logits[0, -1].double()
        finally:
            for h in handles:
                h.remove()
    src = {}
    run(source, lambda e: lambda m, args: src.__setitem__(e, args[0][0].clone()))

    def write(e):
        def pre(m, args):
            z = args[0].clone()
            if last:
                z[0, -1, cols(e)] = src[e][-1, cols(e)]
            else:
                z[0, :, cols(e)] = src[e][:, cols(e)]
            return (z,) + tuple(args[1:])
        return pre
    return run(prompt, write)


@pytest.mark.parametrize("scope", ["all", "last"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_patch_from_source_run(family, scope):
    model = loud(make_tiny(family))
    prompts = ["hello there", "the quick brown fox", "abc"]
    sources = (["HELLO THERE", "a slow purple fox!!", "xyz"] if scope == "all"
               else ["hi", "emotional source text", "xyzzy"])   # last: any lengths
    variants = [[], [Edit(1, "attn_z", [0, 2], "patch")], [Edit(0, "mlp_act", [1, 5, 9], "patch")],
                [Edit(2, "mlp_act", [3], "patch"), Edit(1, "attn_z", [1], "patch")]]
    metric = LogitDiff([65, 66], [67])
    res = {engine: sweep(model, prompts, variants, metric, engine=engine, scope=scope,
                         sources=sources, batch_size=2, progress=False)
           for engine in ("loop", "batched")}
    tol = scale_tol(res["loop"].per_prompt)
    torch.testing.assert_close(res["batched"].per_prompt, res["loop"].per_prompt, atol=tol, rtol=0)
    for i, edits in enumerate(variants):
        for j, (p, s) in enumerate(zip(prompts, sources)):
            logits = patch_by_hand(model, p, s, edits, scope == "last")
            want = logits[[65, 66]].mean() - logits[67]
            assert abs(res["loop"].per_prompt[i, j].item() - want.item()) <= tol
    assert (res["loop"].per_prompt[1:] - res["loop"].per_prompt[0]).abs().max() > 100 * tol


def test_patch_errors(tiny_llama):
    v = [[Edit(0, "mlp_act", [1], "patch")]]
    with pytest.raises(ValueError, match="patch edits need sources"):
        sweep(tiny_llama, PROMPTS, v, KL(), progress=False)
    with pytest.raises(ValueError, match="one text per prompt"):
        sweep(tiny_llama, PROMPTS, v, KL(), sources=PROMPTS[:2], progress=False)
    with pytest.raises(ValueError, match="prompt 0 has 11 tokens but its source has 2"):
        sweep(tiny_llama, PROMPTS, v, KL(), sources=["ab"] + PROMPTS[1:], progress=False)
    with pytest.raises(ValueError, match="no variant has a patch edit"):
        sweep(tiny_llama, PROMPTS, [[]], KL(), sources=PROMPTS, progress=False)
