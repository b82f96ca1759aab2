"""The three-phase flow's pieces against hand computations: tie-averaged ranks and AUROC by
pairwise counting, the FDR threshold on planted data, the closed-class rule, the phase rule;
then feature_flow end to end on a tiny model."""
import torch

from conftest import make_tiny
from emofast.analysis.feature_flow import (FlowLayer, _phases, auroc, average_ranks,
                                           fdr_threshold, feature_flow, token_class)
from emofast.data import load_dataset
from oracles import random_sae


def test_ranks_and_auroc_by_pairwise_counting():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (40, 7), generator=g).float()       # many ties, zeros included
    x[:, 0] = 0.0                                               # one constant column
    ranks = average_ranks(x)
    for f in range(7):
        col = x[:, f]
        want = torch.tensor([(col < v).sum() + ((col == v).sum() + 1) / 2 for v in col])
        torch.testing.assert_close(ranks[:, f], want.double())
    pos = torch.rand(40, generator=g) < 0.3
    got = auroc(ranks, pos)
    for f in range(7):
        p, n = x[pos, f], x[~pos, f]
        want = ((p[:, None] > n[None]).double() + 0.5 * (p[:, None] == n[None]).double()).mean()
        torch.testing.assert_close(got[f], want)
    assert auroc(ranks, torch.zeros(40, dtype=torch.bool)).isnan().all()


def test_fdr_threshold():
    g = torch.Generator().manual_seed(1)
    null = 0.5 + 0.05 * torch.randn(5, 3, 200, generator=g)
    obs = 0.5 + 0.05 * torch.randn(3, 200, generator=g)
    obs[0, :10] = 0.95                                          # 10 planted discoveries
    t = fdr_threshold(obs, null, 0.05)
    assert 0.6 < t <= 0.95 and int((obs >= t).sum()) >= 10
    assert fdr_threshold(obs[:, 10:], null, 0.05) >= 0.6        # nothing planted: no mass found
    # nothing reaches the FDR: no threshold, so even a perfect AUROC is not selected
    assert fdr_threshold(torch.tensor([[1.0, 0.6]]), torch.ones(1, 1, 2), 0.05) == float("inf")


def test_token_classes():
    assert [token_class(w) for w in ("The", "they", "of", "Was", "but", "!", "...", "cat")] == \
        ["determiner", "pronoun", "preposition", "auxiliary", "conjunction", "punctuation",
         "punctuation", None]


def test_phase_rule():
    def layer(site, syn, sem, emo):
        return FlowLayer(site, 0, 10, {}, {"syntactic": syn, "semantic": sem, "emotional": emo},
                         {}, {}, {}, 0, {})
    layers = [layer("L0.x", 0.5, 0.1, 0.0), layer("L1.x", 0.3, 0.4, 0.1),
              layer("L2.x", 0.1, 0.2, 0.2)]
    # normalised: L0 (1, .25, 0) -> syntactic; L1 (.6, 1, .5) -> semantic; L2 (.2, .5, 1)
    assert _phases(layers) == {"syntactic": ["L0.x"], "semantic": ["L1.x"],
                               "emotional": ["L2.x"]}


def tiny_flow(architectures=("topk", "jumprelu")):
    """A tiny model, SAEs at L2 and L0, and their flow on every 20th emo6 train text."""
    model = make_tiny("llama")
    saes = [random_sae(model, site, arch, seed=seed) for site, arch, seed in
            zip(("L2.resid_post", "L0.resid_post"), architectures, (2, 1))]
    examples = [e for e in load_dataset("emo6") if e.meta.get("split") == "train"][::20]
    return model, saes, examples, feature_flow(model, saes, examples, n_permutations=2,
                                               progress=False)


def test_feature_flow_end_to_end():
    model, saes, examples, flow = tiny_flow()
    assert [l.site for l in flow.layers] == ["L0.resid_post", "L2.resid_post"]
    assert flow.n_texts == len(examples) and flow.n_tokens > 10 * len(examples)
    for l in flow.layers:
        assert 0 < l.n_live <= 48
        assert set(l.counts) == set(l.shares) == set(l.probe) == {"syntactic", "semantic",
                                                                  "emotional"}
        assert all(t is None or 0.5 <= t <= 1.0 for t in l.thresholds.values())
        assert 0.0 <= l.probe["syntactic"] <= 1.0
        for e, top in l.top_features.items():     # AUROC order, real feature ids
            assert [a for _, a in top] == sorted((a for _, a in top), reverse=True)
            assert all(0 <= f < 48 for f, _ in top)
    assert sorted(s for v in flow.phases.values() for s in v) == ["L0.resid_post",
                                                                   "L2.resid_post"]
    assert set(flow.to_json()) >= {"phases", "layers", "fdr"}


def test_feature_directions_follow_the_rule():
    from emofast.analysis.feature_flow import feature_directions
    model, saes, examples, flow = tiny_flow(("topk", "topk"))
    emotions = sorted({e.label for e in examples})
    dirs, where = feature_directions(flow, saes, emotions, k=3)
    for e in emotions:
        best = max(flow.layers, key=lambda l: sum(a for _, a in l.top_features[e][:3]))
        assert where[e] == best.layer
        sae = saes[[s.site for s in saes].index(best.site)]
        v = sae.W_dec.detach()[[f for f, _ in best.top_features[e][:3]]].sum(0)
        torch.testing.assert_close(dirs.get(e, best.layer), v / v.norm())
