"""A few checks on the real embedded SmolLM2-135M-Instruct (slow: converts once, then ~5 s)."""
import pytest
import torch

from emofast.directions import EmotionDirections
from emofast.steer import Steering, apply

pytestmark = pytest.mark.slow


def test_load_real_model(smollm):
    assert (smollm.n_layers, smollm.d_model, smollm.n_heads, smollm.d_mlp) == (30, 576, 9, 1536)
    assert smollm.adapter.n_kv_heads == 3 and smollm.adapter.W_O(0).shape == (9, 64, 576)


def test_real_cache_matches_hidden_states(smollm):
    texts = ["Thank you so much for fixing my bike!", "The museum closes at five."]
    acts = smollm.cache(texts, ["L7.resid_post", "L29.resid_pre"], positions="last", progress=False)
    smollm.tokenizer.padding_side = "right"
    enc = smollm.encode(texts)
    with torch.no_grad():
        hs = smollm.forward(enc["input_ids"], enc["attention_mask"], output_hidden_states=True).hidden_states
    last = enc["attention_mask"].sum(-1) - 1
    torch.testing.assert_close(acts["L7.resid_post"], hs[8][torch.arange(2), last], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(acts["L29.resid_pre"], hs[29][torch.arange(2), last], atol=1e-4, rtol=1e-4)


def test_real_steering_step(smollm):
    v = torch.randn(smollm.n_layers, 1, smollm.d_model)
    dirs = EmotionDirections(v / v.norm(dim=-1, keepdim=True), ["x"], list(range(smollm.n_layers)))
    enc = smollm.encode(["I opened the letter and read it."])
    with torch.no_grad():
        clean = smollm.forward(enc["input_ids"], enc["attention_mask"]).logits
        for alpha, changed in ((0.0, False), (2.0, True)):
            st = Steering.single(dirs, "x", [10, 11], alpha, smollm.n_layers, scale="rms")
            with apply(smollm, st.take(slice(0, 1), 1)):
                out = smollm.forward(enc["input_ids"], enc["attention_mask"]).logits
            assert (not torch.equal(out, clean)) == changed


def test_real_sweep_cli_equals_independent_ablation(smollm, tmp_path, monkeypatch):
    """`emofast sweep` with a variants file of random heads, neurons and mixes, all and last
    positions, against the plain-HF oracle of test_sweep (unpadded forwards, pre-hooks)."""
    import json
    import random

    import emofast.cli as cli
    from emofast.planner import Edit
    from emofast.sweep import KL
    from test_sweep import oracle

    monkeypatch.setattr(cli, "_load", lambda args: smollm)
    prompts = ["I can't believe they cancelled my flight again.", "Thank you for the flowers!",
               "The report is due on Friday."]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    rng = random.Random(4)
    spec, variants = [], []
    for i in range(12):
        units = ([(rng.randrange(30), "attn_z", rng.randrange(9))] if i % 3 != 1 else []) + \
                ([(rng.randrange(30), "mlp_act", rng.randrange(1536)) for _ in range(i % 3)])
        spec.append({"edits": [{"layer": a, "site": s, "unit": u} for a, s, u in units]})
        variants.append([Edit(a, s, [u]) for a, s, u in units])
    (tmp_path / "v.json").write_text(json.dumps(spec))
    for positions in ("all", "last"):
        out = tmp_path / positions
        assert cli.main(["sweep", "--quiet", "--prompts", str(tmp_path / "p.jsonl"), "--variants",
                         str(tmp_path / "v.json"), "--positions", positions, "--out", str(out)]) == 0
        got = torch.tensor([v["value"] for v in json.loads((out / "results.json").read_text())
                            ["variants"]])
        want = oracle(smollm, prompts, variants, KL(), positions).mean(1).float()
        assert want.abs().max() > 1e-3
        torch.testing.assert_close(got, want, atol=1e-4 * max(1.0, want.abs().max().item()),
                                   rtol=0)


def test_real_steer_sweep_equals_independent_steering(smollm):
    """Steer variants (abs and rms, mixed with a head ablation) on the real model, both engines,
    against test_sweep_steer's plain-HF oracle (unpadded forwards, block forward hooks)."""
    from emofast.planner import Edit
    from emofast.sweep import KL, Steer, sweep
    from test_sweep_steer import steer_oracle

    prompts = ["I can't believe they cancelled my flight again.", "Thank you for the flowers!"]
    g = torch.Generator().manual_seed(2)
    unit = lambda: (lambda v: v / v.norm())(torch.randn(smollm.d_model, generator=g))  # noqa
    variants = [[Steer(3, unit(), 8.0)], [Steer(15, unit(), 2.0, rms=True)],
                [Steer(24, unit(), -6.0), Edit(26, "attn_z", [4])]]
    for positions in ("all", "last"):
        want = torch.tensor([[steer_oracle(smollm, p, v, positions, KL()) for p in prompts]
                             for v in variants], dtype=torch.float64)
        assert want.min() > 1e-3
        for engine in ("batched", "loop"):
            got = sweep(smollm, prompts, variants, KL(), positions=positions, engine=engine,
                        progress=False).per_prompt
            torch.testing.assert_close(got.double(), want,
                                       atol=1e-4 * max(1.0, want.abs().max().item()), rtol=0)
