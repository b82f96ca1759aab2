"""evaluate_sae against a hand computation: per text, an unpadded HF forward (its own `loss=`
for the cross-entropies), the SAE's formulas written out, FVU around the data mean."""
import pytest
import torch

from conftest import make_tiny
from emofast.sae.evaluate import evaluate_sae
from oracles import PROMPTS
from test_model import by_hand, random_sae

TEXTS = PROMPTS[:1] + PROMPTS[2:]  # each at least 2 tokens


def hand(model, sae, texts):
    xs, recon, dense = [], [], []
    ce = {"clean": [], "sae": [], "zero": []}
    kl = []
    for text in texts:
        ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
        got = {}

        def read(act, s):
            got["x"] = act[0, 1:].clone()
        with model.hooks({sae.site: read}):
            clean = model.hf(input_ids=ids, labels=ids)
        x = got["x"]
        acts, out = by_hand(sae, x)
        xs.append(x), recon.append(out), dense.append(acts)
        ce["clean"].append((clean.loss * (ids.shape[1] - 1)).item())
        for name, new in (("sae", out), ("zero", torch.zeros_like(x))):
            def put(act, s, new=new):
                act = act.clone()
                act[0, 1:] = new
                return act
            with model.hooks({sae.site: put}):
                r = model.hf(input_ids=ids, labels=ids)
            ce[name].append((r.loss * (ids.shape[1] - 1)).item())
            if name == "sae":
                p = clean.logits[0, :-1].log_softmax(-1)
                q = r.logits[0, :-1].log_softmax(-1)
                kl.append((p.exp() * (p - q)).sum().item())
    x, out, acts = torch.cat(xs), torch.cat(recon), torch.cat(dense)
    pairs = sum(len(model.tokenizer(t)["input_ids"]) - 1 for t in texts)
    fvu = ((x - out) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    c = {k: sum(v) / pairs for k, v in ce.items()}
    return dict(fvu=fvu.item(), l0=(acts > 0).sum(-1).float().mean().item(),
                dead=((acts > 0).sum(0) == 0).float().mean().item(), n=x.shape[0],
                ce_clean=c["clean"], ce_sae=c["sae"], ce_zero=c["zero"],
                score=(c["zero"] - c["sae"]) / (c["zero"] - c["clean"]), kl=sum(kl) / pairs)


@pytest.mark.parametrize("arch", ["topk", "standard"])
def test_evaluation_equals_hand_computation(arch):
    model = make_tiny("gpt2")
    sae = random_sae(model.d_model, 96, arch, k=8 if arch == "topk" else None,
                     site="L1.resid_post")
    with torch.no_grad():
        want = hand(model, sae, TEXTS)
        ev = evaluate_sae(model, sae, TEXTS, batch_size=2, progress=False)
    assert ev.n_tokens == want["n"]
    for got, key in [(ev.fvu, "fvu"), (ev.l0, "l0"), (ev.dead_fraction, "dead"),
                     (ev.ce_clean, "ce_clean"), (ev.ce_sae, "ce_sae"), (ev.ce_zero, "ce_zero"),
                     (ev.ce_loss_score, "score"), (ev.kl_sae, "kl")]:
        assert got == pytest.approx(want[key], rel=1e-4, abs=1e-5), key
    assert ev.density.shape == (96,) and ev.to_json()["site"] == "L1.resid_post"


def test_no_tokens_to_evaluate():
    model = make_tiny("gpt2")
    sae = random_sae(model.d_model, 16, "standard", site="L0.resid_post")
    with pytest.raises(ValueError, match="no evaluated tokens"):
        evaluate_sae(model, sae, ["a"], progress=False)


def test_density_histogram_counts_every_latent():
    from emofast.sae.evaluate import SAEEvaluation
    density = torch.tensor([0.0, 0.0, 1e-7, 1e-3, 1e-3, 0.5, 1.0])
    ev = SAEEvaluation("L0.resid_post", 10, 0.1, 2.0, 2 / 7, density, 1.0, 1.1, 2.0, 0.9, 0.01)
    h = ev.density_histogram(lo=-6, hi=0, bins=6)
    assert h["never_fired"] == 2 and sum(h["counts"]) == 5
    assert h["counts"] == [1, 0, 0, 2, 0, 2]   # 1e-7 clamps into the first bin; 1.0 the last
    assert len(h["log10_edges"]) == 7
    assert ev.to_json()["density_histogram"] == ev.density_histogram()
