"""Shared prompt prefixes (emofast.sweeps.shared) and the chain engine (emofast.sweeps.chain)
against the loop engine (one plain hooked forward per variant and prompt): every family,
zero/mean ablations, Steers, per-edit starts before and after the shared prefix, logit and
residual metrics, nested top-k curves, patches, resume; and the grouping itself."""
import pytest
import torch

import emofast.sweeps.batched as batched_mod
from conftest import FAMILIES, make_tiny
from emofast.sweeps import KL, Edit, LogitDiff, Projection, Steer, sweep
from emofast.sweeps.batches import encode_batches
from emofast.sweeps.clean import reuses_kv
from emofast.sweeps.shared import prefix_groups
from oracles import loud, random_variants, scale_tol

# byte tokens: three share "the quick brown " (16), two "a lazy dog " (11), one shares nothing
SHARED = ["the quick brown fox jumps", "a lazy dog lies here", "the quick brown cat",
          "the quick brown fox sleeps soundly", "xyz", "a lazy dog barks"]


def _spy_shared(monkeypatch) -> list:
    calls, real = [], batched_mod._run_shared
    monkeypatch.setattr(batched_mod, "_run_shared",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_groups_rebuild_every_prompt(tiny_llama):
    b = encode_batches(tiny_llama, SHARED, 8)[0]
    g = prefix_groups(b)
    assert g is not None and len(g.lens) == 3
    assert sorted(g.lens.tolist()) == [1, 11, 16]
    for i in range(len(SHARED)):
        real = b.ids[i, int(b.pad[i]):].tolist()
        n = int(g.lens[g.group[i]])
        prefix = g.prefix_ids[g.group[i], -n:].tolist()
        suffix = g.suffix_ids[i, g.suffix_ids.shape[1] - int(g.suffix_mask[i].sum()):].tolist()
        assert prefix + suffix == real
        pos = g.suffix_pos[i, g.suffix_mask[i].bool()].tolist()
        assert pos == list(range(n, len(real)))
        assert (g.prefix_of(b.ids[:, :, None])[g.group[i], -n:, 0] == b.ids[i, -len(real):][:n]).all()
    assert (g.suffix_of(b.ids[:, :, None])[..., 0] * g.suffix_mask == g.suffix_ids).all()


def test_little_shared_is_not_split(tiny_llama):
    assert prefix_groups(encode_batches(tiny_llama, ["hello there", "abc def", "xyzzy!"], 8)[0]) \
        is None
    assert prefix_groups(encode_batches(tiny_llama, ["the quick brown fox", "a"], 8)[0]) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefixes_equal_the_loop(family, monkeypatch):
    model = loud(make_tiny(family))
    L, d = model.n_layers, model.d_model
    g = torch.Generator().manual_seed(3)
    variants = random_variants(model, 14, seed=7, per_edit_pos=True)
    variants += [[Edit(0, "attn_z", [0], pos_start=18)],             # after the shared prefix
                 [Steer(1, torch.randn(d, generator=g), 1.5)],
                 [Steer(L - 1, torch.randn(d, generator=g), -1.0, pos_start=12),
                  Edit(0, "mlp_act", [2, 7], "mean")]]
    calls = _spy_shared(monkeypatch)
    for metric in (KL(), Projection(torch.randn(d, generator=g), layer=L - 1)):
        res = {e: sweep(model, SHARED, variants, metric, engine=e, progress=False)
               for e in ("loop", "batched", "chain")}
        tol = scale_tol(res["loop"].per_prompt)
        for e in ("batched", "chain"):
            torch.testing.assert_close(res[e].per_prompt, res["loop"].per_prompt, atol=tol,
                                       rtol=0)
        assert (res["loop"].per_prompt[1:] - res["loop"].per_prompt[0]).abs().max() > 100 * tol
    T = encode_batches(model, SHARED, 32)[0].ids.shape[1]
    assert bool(calls) == reuses_kv(model, T)   # a local attention window shorter: no sharing


def _curve(model, order: list[tuple[int, int]], site: str) -> list[list[Edit]]:
    """k = 1..len(order): the first k units ablated together, one Edit per layer."""
    out = []
    for k in range(1, len(order) + 1):
        by_layer = {}
        for layer, u in order[:k]:
            by_layer.setdefault(layer, []).append(u)
        out.append([Edit(layer, site, us) for layer, us in sorted(by_layer.items())])
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neo"])
def test_chain_of_nested_curves_equals_the_loop(family, tmp_path):
    model = loud(make_tiny(family))
    L = model.n_layers
    neurons = [(2, 5), (0, 1), (L - 1, 3), (1, 9), (0, 4), (2, 5 + 1)]
    heads = [(L - 1, 1), (0, 0), (1, 2), (0, 1)]
    variants = ([[]] + _curve(model, neurons, "mlp_act") + [[]] + _curve(model, heads, "attn_z")
                + _curve(model, heads, "attn_z")[-1:]                  # a repeat
                + [[Edit(1, "mlp_act", [3], "mean")]])
    metric = LogitDiff([65, 66], [67])
    want = sweep(model, SHARED, variants, metric, engine="loop", batch_size=4, progress=False)
    got = sweep(model, SHARED, variants, metric, engine="chain", batch_size=4, progress=False,
                out=tmp_path / "run")
    tol = scale_tol(want.per_prompt)
    torch.testing.assert_close(got.per_prompt, want.per_prompt, atol=tol, rtol=0)
    again = sweep(model, SHARED, variants, metric, engine="chain", batch_size=4, progress=False,
                  out=tmp_path / "run")
    assert again.resumed == len(variants)


def test_chain_starts_each_variant_at_its_new_layer(monkeypatch):
    model = loud(make_tiny("llama"))
    L = model.n_layers
    firsts, real = [], batched_mod.run_chunk
    monkeypatch.setattr(batched_mod, "run_chunk", lambda m, s, chunk, *a, **k:
                        firsts.append(chunk.first_layer) or real(m, s, chunk, *a, **k))
    import emofast.sweeps.chain as chain_mod
    monkeypatch.setattr(chain_mod, "run_chunk", batched_mod.run_chunk)
    order = [(0, 1), (L - 1, 2), (1, 3), (L - 1, 4)]
    sweep(model, SHARED, _curve(model, order, "mlp_act"), KL(), engine="chain", progress=False)
    assert firsts == [0, L - 1, 1, L - 1]


def test_chain_patches_equal_the_loop():
    model = loud(make_tiny("llama"))
    prompts, sources = SHARED[:3], ["THE QUICK BROWN FOX JUMPS", "A LAZY DOG LIES HERE",
                                    "THE QUICK BROWN CAT"]
    variants = [[], [Edit(1, "attn_z", [0], "patch")],
                [Edit(1, "attn_z", [0], "patch"), Edit(2, "mlp_act", [4, 5], "patch")]]
    res = {e: sweep(model, prompts, variants, KL(), engine=e, sources=sources, progress=False)
           for e in ("loop", "chain", "batched")}
    tol = scale_tol(res["loop"].per_prompt)
    for e in ("chain", "batched"):
        torch.testing.assert_close(res[e].per_prompt, res["loop"].per_prompt, atol=tol, rtol=0)


def test_chain_refuses_scope_last(tiny_llama):
    with pytest.raises(ValueError, match="scope 'last' the batched engine"):
        sweep(tiny_llama, SHARED, [[Edit(0, "attn_z", [0])]], KL(), engine="chain",
              scope="last", progress=False)
