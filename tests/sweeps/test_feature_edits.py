"""SAE feature edits as sweep variants: batched == loop for every scope and family (mixed with
ablations and Steers too); both == an independent plain-HF oracle (unpadded forward, a hook on
the module that produces the SAE's site, the SAE written out in float64 by hand); an unedited
row is exactly the model; patching; results.json; fingerprint; errors."""
import json

import pytest
import torch

from conftest import make_tiny
from emofast.sae import SAE, load_sae
from emofast.sweeps import KL, Edit, FeatureEdit, LogitDiff, Projection, Steer, sweep
from oracles import PROMPTS, SCOPES, by_hand, loud, random_sae, run_both, scale_tol

SOURCES = ["jello where", "b", "the quick brown fix", "abd deg", "xyzzy?"]  # same lengths


def saes_for(model):
    L = model.n_layers
    return [random_sae(model, f"L0.resid_post", "topk", seed=1),
            random_sae(model, f"L{L - 1}.resid_post", "jumprelu", "layer_norm", seed=2),
            random_sae(model, "L1.mlp_act", "standard", "constant_norm_rescale", seed=3),
            random_sae(model, "L0.attn_z", "topk", seed=4)]


def feature_variants(model, per_edit: bool):
    a, b, c, d = saes_for(model)
    p = (lambda k: k) if per_edit else (lambda k: 0)                         # noqa: E731
    return [[],
            [FeatureEdit(a, [0, 3, 7, 11, 20, 33])],
            [FeatureEdit(a, range(48), "scale", factor=2.5, pos_start=p(1))],
            [FeatureEdit(b, [5], "mean")],
            [FeatureEdit(c, [1, 2, 40], "scale", factor=-1.0, pos_start=p(2))],
            [FeatureEdit(d, list(range(0, 48, 3)), "mean", pos_start=p(1))],
            [FeatureEdit(a, [2], "scale", factor=1.0)],       # factor 1: the model itself
            [FeatureEdit(a, [4, 9]), FeatureEdit(b, [1, 2, 3], "scale", factor=3.0)]]


def sae_by_hand(sae, x):
    """x [T, d_in] float64 -> (dense acts [T, d_sae], decode(acts) -> [T, d_in]) as SAELens."""
    W_enc, b_enc, W_dec, b_dec = (getattr(sae, n).detach().double()
                                  for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    undo = None
    if sae.normalize_activations == "constant_norm_rescale":
        c = sae.d_in ** 0.5 / x.norm(dim=-1, keepdim=True)
        x, undo = x * c, lambda y: y / c
    elif sae.normalize_activations == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)
        x, undo = (x - mu) / (std + 1e-5), lambda y: y * std + mu
    pre = (x - b_dec * sae.apply_b_dec_to_input) @ W_enc + b_enc
    if sae.architecture == "standard":
        acts = pre.relu()
    elif sae.architecture == "jumprelu":
        acts = pre.relu() * (pre > sae.threshold.detach().double().clamp(min=0))
    else:
        top = pre.topk(sae.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    return acts, (lambda a: (undo or (lambda y: y))(a @ W_dec + b_dec))


def _site_hook(model, site, fn):
    """A plain HF hook that rewrites the SAE's site [1, T, W] with fn."""
    layer, kind = int(site.split(".")[0][1:]), site.split(".")[1]
    ad = model.adapter
    if kind == "resid_post":
        def post(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            h = fn(h)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        return ad.blocks[layer].register_forward_hook(post)
    part = {"attn_z": "attn_out_proj", "mlp_act": "mlp_down"}[kind]
    return ad.module(layer, part).register_forward_pre_hook(
        lambda module, args: (fn(args[0]),) + tuple(args[1:]))


def feature_oracle(model, prompts, variants, metric, scope, sources=None) -> torch.Tensor:
    hf = model.hf
    ids = [model.tokenizer(p, return_tensors="pt")["input_ids"] for p in prompts]
    src = None if sources is None else [model.tokenizer(p, return_tensors="pt")["input_ids"]
                                        for p in sources]
    saes = {id(e.sae): e.sae for v in variants for e in v}
    sums, count, seen = {k: 0.0 for k in saes}, 0, {}

    def reader(key):
        def fn(h):
            sums[key] = sums[key] + sae_by_hand(saes[key], h[0].double())[0].sum(0)
            return h
        return fn

    def recorder(key):
        def fn(h):
            seen[key] = h[0].double()
            return h
        return fn
    with torch.no_grad():
        handles = [_site_hook(model, s.site, reader(k)) for k, s in saes.items()]
        clean = [hf(input_ids=x).logits[0, -1].double() for x in ids]
        count = sum(x.shape[1] for x in ids)
        for h in handles:
            h.remove()
    means = {k: s / count for k, s in sums.items()}
    out = torch.empty(len(variants), len(prompts), dtype=torch.float64)
    for i, edits in enumerate(variants):
        for j, x in enumerate(ids):
            T = x.shape[1]
            source_acts = {}
            if src is not None:
                hs = [_site_hook(model, s.site, recorder(k)) for k, s in saes.items()]
                with torch.no_grad():
                    hf(input_ids=src[j])
                for h in hs:
                    h.remove()
                source_acts = dict(seen)
            handles = []
            for e in edits:
                start = {"last": T - 1, 2: 2, "all": 0, "per_edit": e.pos_start}[scope]

                def edit(h, e=e, start=start):
                    if start >= h.shape[1]:
                        return h
                    h = h.clone()
                    xs = h[0, start:].double()
                    acts, decode = sae_by_hand(e.sae, xs)
                    new, F = acts.clone(), list(e.features)
                    if e.mode == "zero":
                        new[:, F] = 0.0
                    elif e.mode == "scale":
                        new[:, F] *= e.factor
                    elif e.mode == "mean":
                        new[:, F] = means[id(e.sae)][F]
                    else:
                        sx = source_acts[id(e.sae)]
                        sx = sx[-1:] if scope == "last" else sx[start:]
                        new[:, F] = sae_by_hand(e.sae, sx)[0][:, F]
                    h[0, start:] = (xs + decode(new) - decode(acts)).to(h.dtype)
                    return h
                handles.append(_site_hook(model, e.sae.site, edit))
            try:
                with torch.no_grad():
                    logits = hf(input_ids=x).logits[0, -1].double()
            finally:
                for h in handles:
                    h.remove()
            out[i, j] = by_hand(metric, logits, clean[j])
    return out


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gpt_neo"])
def test_batched_equals_loop(family, scope):
    model = loud(make_tiny(family))
    variants = feature_variants(model, scope == "per_edit")
    g = torch.Generator().manual_seed(3)
    a, _, c, _ = saes_for(model)
    mixed = [[FeatureEdit(a, [1, 5]), Edit(1, "attn_z", [0]),
              Steer(model.n_layers - 1, torch.randn(model.d_model, generator=g), 1.0)],
             # one site, two hooks, in either order: both engines compose Steer, then SAE edit
             [FeatureEdit(a, range(48)), Steer(0, torch.randn(model.d_model, generator=g), 3.0)],
             [Steer(0, torch.randn(model.d_model, generator=g), 3.0), FeatureEdit(a, range(48))],
             [FeatureEdit(c, [1, 2], "scale", factor=3.0), Edit(1, "mlp_act", [0, 1, 2, 3])]]
    v = torch.randn(model.d_model, generator=g)
    for metric in (KL(), Projection(v, layer=0)):
        loop, batched = run_both(model, variants + mixed, metric, scope, batch_size=2,
                                 memory_budget=300_000)
        torch.testing.assert_close(batched.per_prompt, loop.per_prompt,
                                   atol=scale_tol(loop.per_prompt), rtol=0)
        if isinstance(metric, KL):
            # factor 1 is the model: KL 0 up to rounding; the others moved
            assert batched.per_prompt[6].abs().max() < 1e-5
            moved = batched.per_prompt[[1, 2, 3, 4, 5, 7, 8, 9, 10, 11]].abs().amax(1)
            assert (moved > 1e-3).all(), moved


@pytest.mark.parametrize("scope", ["all", "last", 2, "per_edit"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_equals_plain_hf(family, scope):
    model = loud(make_tiny(family))
    variants = feature_variants(model, scope == "per_edit")
    for metric in (KL(), LogitDiff([65, 66], [67])):
        want = feature_oracle(model, PROMPTS, variants, metric, scope)
        for res in run_both(model, variants, metric, scope, batch_size=3):
            torch.testing.assert_close(res.per_prompt.double(), want, atol=scale_tol(want),
                                       rtol=0)


@pytest.mark.parametrize("scope", ["all", "last"])
def test_patch_equals_plain_hf(scope):
    model = loud(make_tiny("llama"))
    a, b, c, d = saes_for(model)
    variants = [[], [FeatureEdit(a, [0, 1, 2, 3, 4, 5, 6], "patch")],
                [FeatureEdit(b, range(48), "patch")], [FeatureEdit(d, [2, 30], "patch")]]
    want = feature_oracle(model, PROMPTS, variants, KL(), scope, sources=SOURCES)
    for engine in ("loop", "batched"):
        res = sweep(model, PROMPTS, variants, KL(), engine=engine, scope=scope,
                    sources=SOURCES, progress=False, batch_size=2)
        torch.testing.assert_close(res.per_prompt.double(), want, atol=scale_tol(want), rtol=0)
    assert (want[1:].abs().amax(1) > 1e-4).all()


def test_unedited_rows_are_exactly_the_model():
    """The clean variant and a factor-1 edit beside real edits in one chunk: bit-identical
    to the clean run (KL exactly 0 for the clean row)."""
    model = loud(make_tiny("llama"))
    a = saes_for(model)[0]
    variants = [[FeatureEdit(a, [3])], [], [FeatureEdit(a, [1, 2], "zero")], []]
    res = sweep(model, PROMPTS, variants, LogitDiff([65], [66]), progress=False)
    clean = sweep(model, PROMPTS, [[]], LogitDiff([65], [66]), progress=False)
    assert torch.equal(res.per_prompt[1], clean.per_prompt[0])
    assert torch.equal(res.per_prompt[3], clean.per_prompt[0])


def test_results_json_and_fingerprint(tmp_path):
    model = loud(make_tiny("llama"))
    a = saes_for(model)[0]
    variants = [[FeatureEdit(a, [3, 4], "scale", factor=2.0, label="amp")]]
    sweep(model, PROMPTS, variants, KL(), out=tmp_path / "s", progress=False)
    rows = json.loads((tmp_path / "s" / "results.json").read_text())["variants"]
    assert rows[0]["edits"] == [{"layer": 0, "site": "sae", "unit": 0, "mode": "feature",
                                 "pos_start": 0, "sae": "L0.resid_post", "features": [3, 4],
                                 "feature_mode": "scale", "factor": 2.0, "label": "amp"}]
    with torch.no_grad():
        a.W_dec[3] += 1.0        # another SAE: the folder refuses it
    with pytest.raises(Exception, match="another sweep|differ|fingerprint"):
        sweep(model, PROMPTS, variants, KL(), out=tmp_path / "s", progress=False)


def test_bf16_sae_in_both_engines():
    """A bf16 SAE on an fp32 model: the engines agree (the batched product runs in the SAE's
    dtype)."""
    model = loud(make_tiny("llama"))
    sae = random_sae(model, "L1.resid_post", "topk", seed=3).to(torch.bfloat16)
    variants = [[FeatureEdit(sae, [1, 2, 3], "scale", factor=2.0)], [FeatureEdit(sae, [4])]]
    loop, batched = run_both(model, variants, KL(), "all", batch_size=2)
    torch.testing.assert_close(batched.per_prompt, loop.per_prompt, atol=2e-2 * max(
        1.0, loop.per_prompt.abs().max().item()), rtol=0)
    assert loop.per_prompt.abs().max() > 1e-3


def test_errors():
    model = make_tiny("llama")
    a = saes_for(model)[0]
    with pytest.raises(ValueError, match="mode 'scale' takes a factor"):
        FeatureEdit(a, [1], "scale")
    with pytest.raises(ValueError, match="takes a factor, the other modes none"):
        FeatureEdit(a, [1], "zero", factor=2.0)
    with pytest.raises(ValueError, match=r"features \[48\] must be a non-empty list in 0..47"):
        FeatureEdit(a, [48])
    with pytest.raises(TypeError, match="features must be a list of integers"):
        FeatureEdit(a, "12")
    with pytest.raises(TypeError, match="features must be integers"):
        FeatureEdit(a, [1.9])
    with pytest.raises(ValueError, match="mode 'ablate'"):
        FeatureEdit(a, [1], "ablate")
    with pytest.raises(ValueError, match="two FeatureEdits at layer 0"):
        sweep(model, PROMPTS, [[FeatureEdit(a, [1]), FeatureEdit(a, [2])]], KL(), progress=False)
    other = SAE(model.d_model + 1, 8, architecture="standard", site="L0.resid_post")
    with pytest.raises(ValueError, match="belongs to another model or site"):
        sweep(model, PROMPTS, [[FeatureEdit(other, [1])]], KL(), progress=False)
    with pytest.raises(ValueError, match="patch edits need sources"):
        sweep(model, PROMPTS, [[FeatureEdit(a, [1], "patch")]], KL(), progress=False)
    with pytest.raises(TypeError, match="single FeatureEdit"):
        sweep(model, PROMPTS, [FeatureEdit(a, [1])], KL(), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["all", "last"])
def test_real_model_equals_plain_hf(smollm, scope):
    """SmolLM2 with a trained default-set SAE when one is cached (else a random one) at
    L24.resid_post and a random standard SAE on L10's MLP activations: both engines == the
    plain-HF oracle with the SAEs written out by hand."""
    from emofast.sae.formats import cached_sae_folder
    folder = cached_sae_folder(smollm.name, "L24.resid_post")
    late = (load_sae(folder, smollm) if (folder / "cfg.json").is_file() else
            random_sae(smollm, "L24.resid_post", "topk", seed=1))
    mlp = random_sae(smollm, "L10.mlp_act", "standard", "constant_norm_rescale", seed=2)
    prompts = ["I can't believe they cancelled my flight again.", "Thank you for the flowers!",
               "The report is due on Friday."]
    def active(sae):
        """The SAE's features by activation summed over the prompts' edited positions."""
        seen = []
        with smollm.hooks({sae.site: lambda act, site: seen.append(act.detach())}):
            for p in prompts:
                ids = smollm.tokenizer(p, return_tensors="pt")["input_ids"]
                smollm.forward(ids, torch.ones_like(ids))
        x = torch.cat([a[0, -1:] if scope == "last" else a[0, 1:] for a in seen])
        return sae.dense(sae.encode(sae._flat(x))).sum(0).argsort(descending=True).tolist()
    hot, warm = active(late), active(mlp)
    variants = [[], [FeatureEdit(late, hot[:3])], [FeatureEdit(late, hot[3:4], "scale", factor=4.0)],
                [FeatureEdit(mlp, warm[:3], "mean")],
                [FeatureEdit(mlp, warm[3:4], "scale", factor=-2.0),
                 FeatureEdit(late, hot[-1:], "mean")]]
    for metric in (KL(), LogitDiff([9906], [3187])):
        want = feature_oracle(smollm, prompts, variants, metric, scope)
        if isinstance(metric, KL):
            assert (want[1:].abs().amax(1) > 1e-5).all(), "an edit changed nothing"
        for engine in ("batched", "loop"):
            got = sweep(smollm, prompts, variants, metric, engine=engine, scope=scope,
                        progress=False).per_prompt.double()
            torch.testing.assert_close(got, want, atol=scale_tol(want), rtol=0)
