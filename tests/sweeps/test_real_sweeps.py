"""Sweeps on the real embedded SmolLM2-135M-Instruct against the independent oracles (slow)."""
import json
import random

import pytest
import torch

import emofast.cli as cli
import emofast.cli.common
from emofast.sweeps import KL, Edit, Steer, sweep
from oracles import oracle, steer_oracle

pytestmark = pytest.mark.slow


def test_real_sweep_cli_equals_independent_ablation(smollm, tmp_path, monkeypatch):
    """`emofast sweep` with a variants file of random heads, neurons and mixes, all and last
    positions, against the plain-HF oracle (tests/oracles.py) (unpadded forwards, pre-hooks)."""
    monkeypatch.setattr(emofast.cli.common, "load", lambda args: smollm)
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
    for scope in ("all", "last"):
        out = tmp_path / scope
        assert cli.main(["sweep", "--quiet", "--prompts", str(tmp_path / "p.jsonl"), "--variants",
                         str(tmp_path / "v.json"), "--scope", scope, "--out", str(out)]) == 0
        got = torch.tensor([v["value"] for v in json.loads((out / "results.json").read_text())
                            ["variants"]])
        want = oracle(smollm, prompts, variants, KL(), scope).mean(1).float()
        assert want.abs().max() > 1e-3
        torch.testing.assert_close(got, want, atol=1e-4 * max(1.0, want.abs().max().item()),
                                   rtol=0)


def test_real_steer_sweep_equals_independent_steering(smollm):
    """Steer variants (abs and rms, mixed with a head ablation) on the real model, both engines,
    against the plain-HF steering oracle (tests/oracles.py) (unpadded forwards, block forward hooks)."""
    prompts = ["I can't believe they cancelled my flight again.", "Thank you for the flowers!"]
    g = torch.Generator().manual_seed(2)
    unit = lambda: (lambda v: v / v.norm())(torch.randn(smollm.d_model, generator=g))  # noqa
    variants = [[Steer(3, unit(), 8.0)], [Steer(15, unit(), 2.0, "rms")],
                [Steer(24, unit(), -6.0), Edit(26, "attn_z", [4])]]
    for scope in ("all", "last"):
        want = torch.tensor([[steer_oracle(smollm, p, v, scope, KL()) for p in prompts]
                             for v in variants], dtype=torch.float64)
        assert want.min() > 1e-3
        for engine in ("batched", "loop"):
            got = sweep(smollm, prompts, variants, KL(), scope=scope, engine=engine,
                        progress=False).per_prompt
            torch.testing.assert_close(got.double(), want,
                                       atol=1e-4 * max(1.0, want.abs().max().item()), rtol=0)
