"""Discovery: rank_neurons against hand loops over the HF weights (Linear [d_model, d_mlp] and
GPT-2's Conv1D [d_mlp, d_model]); attribution_screen against a finite-difference oracle on an
unpadded plain-HF forward (central differences in fp64, eps = 1e-3: truncation ~eps^2; Llama's
RMSNorm rounds through fp32, so only units with effects > 1e-4 are compared, at rtol 1e-2) and
against exact sweeps of every head (rank agreement, the exact values checked to vary); left
padding changes nothing; KL is refused; verify_top == a direct sweep; spearman == scipy with ties.
"""
import pytest
import scipy.stats
import torch

from conftest import make_tiny
from emofast.analysis.directions import EmotionDirections
from emofast.sites import Scope
from emofast.discovery import attribution_screen, rank_neurons, spearman, verify_top
from emofast.sweeps import KL, Edit, LogitDiff, LogProb, Readout, sweep

PROMPTS = ["hello there", "a", "the quick brown fox", "abc def", "xyzzy!"]  # 1..19 tokens
LOGIT_DIFF = LogitDiff([65, 66], [67, 68, 69])


def unit_vectors(n: int, d: int, seed: int = 0) -> torch.Tensor:
    v = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm(dim=-1, keepdim=True)


# -- rank_neurons ----------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_projection_and_contribution_by_hand(family):
    model = make_tiny(family)
    layers, v = [0, 2], unit_vectors(2, model.d_model)
    acts = {layer: torch.randn(7, model.d_mlp) for layer in layers}
    ranking = rank_neurons(model, dict(zip(layers, v)), acts=acts)
    for i, layer in enumerate(layers):
        module = model.adapter.module(layer, "mlp_down")
        w = module.weight.detach()
        conv1d = type(module).__name__ == "Conv1D"
        assert conv1d == (family == "gpt2")
        for j in range(model.d_mlp):
            column = w[j, :] if conv1d else w[:, j]                   # neuron j's output [d_model]
            expected = float(column @ v[i])
            assert ranking.projection[i, j].item() == pytest.approx(expected, abs=1e-5)
            mean_act = sum(acts[layer][n, j].item() for n in range(7)) / 7
            assert ranking.contribution[i, j].item() == pytest.approx(
                mean_act * expected, abs=1e-5)


def test_rank_neurons_directions_and_top():
    model = make_tiny("llama")
    dirs = EmotionDirections(unit_vectors(6, model.d_model).view(2, 3, -1),
                             ["joy", "fear", "anger"], [1, 2])
    acts = {"L1.mlp_act": torch.rand(4, model.d_mlp), "L2.mlp_act": torch.rand(4, model.d_mlp)}
    ranking = rank_neurons(model, dirs, "fear", acts=acts)
    direct = rank_neurons(model, {1: dirs.get("fear", 1), 2: dirs.get("fear", 2)})
    assert ranking.layers == [1, 2]
    torch.testing.assert_close(ranking.projection, direct.projection)
    assert direct.contribution is None and direct.top(3) == direct.top(3, by="projection")
    top = ranking.top(5)
    scores = [s for _, _, s in top]
    assert scores == sorted(scores, reverse=True)
    everything = sorted(((layer, j, ranking.contribution[i, j].item())
                         for i, layer in enumerate([1, 2]) for j in range(model.d_mlp)),
                        key=lambda t: -t[2])
    assert top == everything[:5]
    assert ranking.top(2, largest=False)[0][2] == everything[-1][2]
    with pytest.raises(ValueError, match="pass acts"):
        direct.top(3, by="contribution")
    with pytest.raises(ValueError, match="needs the emotion"):
        rank_neurons(model, dirs)
    with pytest.raises(ValueError, match="no entry for layer 2"):
        rank_neurons(model, dirs, "joy", acts={1: acts["L1.mlp_act"]})


# -- attribution_screen -----------------------------------------------------------------------
def finite_difference(model, prompts, metric, layer, site, unit, scope, eps=1e-3):
    """Central difference of the metric in the unit's scale s at s = 1, times -1: the
    first-order effect of s -> 0. Mean over prompts; one unpadded HF forward per prompt, a
    forward pre-hook scaling the unit's input columns by hand."""
    part = {"attn_z": "attn_out_proj", "mlp_act": "mlp_down"}[site]
    cols = [unit] if site == "mlp_act" else list(range(unit * model.d_head,
                                                       (unit + 1) * model.d_head))
    total = 0.0
    for text in prompts:
        x = model.tokenizer(text, return_tensors="pt")["input_ids"]
        start = {"last": x.shape[1] - 1, "from:2": 2}.get(scope, 0)

        def run(scale):
            def pre(module, args):
                z = args[0].clone()                                   # [1, T, W]
                z[0, start:, cols] *= scale
                return (z,) + tuple(args[1:])
            handle = model.adapter.module(layer, part).register_forward_pre_hook(pre)
            try:
                with torch.no_grad():
                    logits = model.hf(input_ids=x).logits[:, -1]      # [1, vocab]
            finally:
                handle.remove()
            return metric(Readout(logits, logits.log_softmax(-1), None)).item()
        total += (run(1 - eps) - run(1 + eps)) / (2 * eps)
    return total / len(prompts)


def top_units(scores: torch.Tensor, n: int) -> list[tuple[int, int]]:
    idx = scores.abs().flatten().topk(n).indices.tolist()
    return [(i // scores.shape[1], i % scores.shape[1]) for i in idx]


@pytest.mark.parametrize("family, metric, scope", [
    ("gpt2", LogProb([70, 71]), "all"), ("llama", LOGIT_DIFF, "last"),
    ("llama", LogProb([70, 71]), "all"), ("gpt_neox", LOGIT_DIFF, "from:2")])
def test_attribution_equals_finite_difference(family, metric, scope):
    model = make_tiny(family)
    model.hf.double()  # Llama's RMSNorm still rounds through fp32: eps 1e-3, the larger units
    attr = attribution_screen(model, PROMPTS, metric, scope=scope, batch_size=3)
    for site, scores in [("attn_z", attr.heads), ("mlp_act", attr.neurons)]:
        for layer, unit in top_units(scores, 2):
            fd = finite_difference(model, PROMPTS, metric, layer, site, unit, scope)
            assert abs(fd) > 1e-4  # a unit that matters
            assert scores[layer, unit].item() == pytest.approx(fd, rel=1e-2), (site, layer, unit)


def test_attribution_ranks_every_head_like_the_exact_sweep():
    model = make_tiny("llama")  # default init: small, nearly linear effects
    attr = attribution_screen(model, PROMPTS, LOGIT_DIFF)
    heads = [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    res = sweep(model, PROMPTS, [[]] + [[Edit(layer, "attn_z", [h])] for layer, h in heads],
                LOGIT_DIFF, progress=False)
    exact = res.values[1:] - res.values[0]
    estimate = torch.stack([attr.heads[layer, h] for layer, h in heads])
    assert exact.std() > 1e-3 and exact.abs().max() > 5e-3   # heads differ: not trivially equal
    assert attr.clean == pytest.approx(res.values[0].item(), abs=1e-5)
    assert spearman(estimate, exact) > 0.8


def test_left_padding_and_batching_change_nothing():
    model = make_tiny("llama")
    one = attribution_screen(model, PROMPTS, LOGIT_DIFF, scope="all", batch_size=1)
    all_ = attribution_screen(model, PROMPTS, LOGIT_DIFF, scope="all", batch_size=8)
    torch.testing.assert_close(one.heads, all_.heads, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(one.neurons, all_.neurons, atol=1e-6, rtol=1e-4)


def test_kl_and_bad_arguments_raise():
    model = make_tiny("llama")
    with pytest.raises(ValueError, match="LogitDiff"):
        attribution_screen(model, PROMPTS, KL())
    with pytest.raises(ValueError, match="sites"):
        attribution_screen(model, PROMPTS, LOGIT_DIFF, sites=("resid_post",))
    with pytest.raises(ValueError, match="attribution_screen does not support scope prompt"):
        attribution_screen(model, PROMPTS, LOGIT_DIFF, scope="prompt")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        attribution_screen(model, PROMPTS, LOGIT_DIFF, batch_size=0)
    with pytest.warns(DeprecationWarning, match="use scope='from:1'"):
        old = attribution_screen(model, PROMPTS, LOGIT_DIFF, positions=1)
    assert old.scope == Scope.from_token(1)
    with pytest.warns(DeprecationWarning, match="use Attribution.scope"):
        assert old.positions == 1
    attr = attribution_screen(model, PROMPTS, LOGIT_DIFF, sites=("attn_z",))
    assert attr.neurons is None
    with pytest.raises(ValueError, match="no neurons"):
        verify_top(model, PROMPTS, attr, LOGIT_DIFF, kind="neurons")


# -- verify_top and spearman ------------------------------------------------------------------
def test_verify_top_equals_a_direct_sweep():
    model = make_tiny("llama")
    attr = attribution_screen(model, PROMPTS, LOGIT_DIFF, scope="last")
    for kind, site, scores in [("heads", "attn_z", attr.heads),
                               ("neurons", "mlp_act", attr.neurons)]:
        check = verify_top(model, PROMPTS, attr, LOGIT_DIFF, k=6, kind=kind)
        assert len(check.units) == 6 and check.estimate.shape == check.exact.shape == (6,)
        magnitudes = check.estimate.abs().tolist()
        assert magnitudes == sorted(magnitudes, reverse=True)
        assert magnitudes[-1] >= scores.abs().flatten().sort(descending=True).values[5].item()
        assert all(scores[layer, u].item() == e for (layer, u), e in
                   zip(check.units, check.estimate.tolist()))
        variants = [[]] + [[Edit(layer, site, [u])] for layer, u in check.units]
        direct = sweep(model, PROMPTS, variants, LOGIT_DIFF, engine="loop",
                       scope="last", progress=False)
        torch.testing.assert_close(check.exact, direct.values[1:] - direct.values[0],
                                   atol=1e-5, rtol=1e-4)
        assert check.spearman == pytest.approx(spearman(check.estimate, check.exact))


def test_spearman_matches_scipy_with_ties():
    x = torch.tensor([1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0, -1.0])
    y = torch.tensor([0.5, 3.0, 2.0, 4.0, 4.0, 9.0, 1.0, 0.0])
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(x, x) == pytest.approx(1.0)
    assert spearman(x, torch.ones(8)) != spearman(x, torch.ones(8))  # nan: constant


def test_discover_emotion_matches_direct_sweeps_and_reports(tmp_path):
    """discovery.discover_emotion: head effects and top-k curves equal direct sweeps of the
    same variants; the discover pipeline's plots and index.html are written from it."""
    import emofast.pipelines.discover as pipeline
    from emofast.discovery import discover_emotion
    from oracles import PROMPTS, loud

    model = loud(make_tiny("llama"))
    metric = LogitDiff([65, 66], [67])
    cfg = pipeline.DiscoverConfig(k_max=5, k_verify=4, batch_size=2, emotions=("fear",))
    L, H = model.n_layers, model.n_heads
    v = torch.randn(L, 1, model.d_model, generator=torch.Generator().manual_seed(3))
    dirs = EmotionDirections(v / v.norm(dim=-1, keepdim=True), ["joy"], list(range(L)))
    d = discover_emotion(model, PROMPTS, metric, dirs, "joy", k_max=5, k_verify=4, batch_size=2,
                         progress=False)
    r = d.to_json()
    heads = [[Edit(layer, "attn_z", [h])] for layer in range(L) for h in range(H)]
    direct = sweep(model, PROMPTS, [[]] + heads, metric, engine="loop", progress=False).values
    torch.testing.assert_close(r["head_effect"].flatten(), direct[1:] - direct[0], atol=1e-4,
                               rtol=0)
    order = r["head_effect"].flatten().argsort()[:5].tolist()
    top3 = [[Edit(i // H, "attn_z", [i % H]) for i in sorted(order[:3])]]
    k3 = sweep(model, PROMPTS, [[]] + top3, metric, engine="loop", progress=False).values
    assert r["curve_heads"][2] == pytest.approx((k3[1] - k3[0]).item(), abs=1e-4)
    assert r["ks"] == [1, 2, 3, 4, 5] and len(r["curve_random"]) == 5

    # direction ranking by hand: mean over prompts of each prompt's mean mlp_act (unpadded
    # forwards, pre-hooks on down_proj) x down_proj column . v; its top 3 ablated together
    acts = {layer: [] for layer in range(L)}
    handles = [model.hf.model.layers[layer].mlp.down_proj.register_forward_pre_hook(
        lambda m, a, layer=layer: acts[layer].append(a[0][0].mean(0))) for layer in range(L)]
    with torch.no_grad():
        for p in PROMPTS:
            model.hf(input_ids=model.tokenizer(p, return_tensors="pt")["input_ids"])
    for h in handles:
        h.remove()
    contrib = torch.stack([torch.stack(acts[layer]).mean(0)
                           * (model.hf.model.layers[layer].mlp.down_proj.weight.T @ dirs.get("joy", layer))
                           for layer in range(L)])                             # [L, d_mlp]
    top = contrib.flatten().argsort(descending=True)[:3].tolist()
    N = model.d_mlp
    assert (r["direction_top"][0]["layer"], r["direction_top"][0]["neuron"]) == divmod(top[0], N)
    assert r["direction_top"][0]["contribution"] == pytest.approx(contrib.max().item(), rel=1e-4)
    by_layer = {}
    for i in top:
        by_layer.setdefault(i // N, []).append(i % N)
    k3 = sweep(model, PROMPTS, [[], [Edit(layer, "mlp_act", u) for layer, u in by_layer.items()]],
               metric, engine="loop", progress=False).values
    assert r["curve_direction"][2] == pytest.approx((k3[1] - k3[0]).item(), abs=1e-4)
    assert 0 <= r["top10_found"] <= 10 and r["k_verify"] == 4
    assert d.top_head() == (f"L{order[0] // H}.H{order[0] % H}",
                            pytest.approx(d.head_effect.min().item()))
    per = {"joy": d, "fear": d}
    pipeline._plots(tmp_path, model, per)
    pipeline._write_index(tmp_path, pipeline.DiscoverResult("tiny", "custom", cfg, 5, per, 1.0))
    for name in ("heads_joy.png", "topk_neurons.png", "topk_heads.png", "screen_vs_exact.png",
                 "index.html"):
        assert (tmp_path / name).stat().st_size > 0
